"""Helpers for tests of the whole loop: settings with deploy targets, and driving a run to its end."""

from __future__ import annotations

import json
import time

from localdev import scoring
from shared import commands, poll, workflow
from shared.settings import Settings
from tests.conftest import API_KEY


def target_settings(env: dict, emulator, **extra) -> dict:
    """``env`` plus a classic and an ARM target on the emulator (the ARM one reached with a managed
    identity token from the emulator's identity endpoint)."""
    targets = emulator.deploy_targets(API_KEY)
    return {**env, "DEPLOY_TARGETS": json.dumps(targets), "ARM_POLL_SECONDS": "0.05", **extra}


def services(env: dict, monkeypatch) -> workflow.Services:
    """Services for ``env``; the managed-identity variables go to the process, where azure-identity reads them."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", env["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", env["IDENTITY_HEADER"])
    svc = workflow.build_services(Settings.from_env(env))
    svc.storage.ensure_container(svc.settings.training_container)
    return svc


def wait_job(svc, run_id: str, timeout: float = 20) -> str:
    run = svc.store.get(svc.settings.pipeline, run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = svc.bes.status(run.job_id).status
        if status in ("Finished", "Failed", "Cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job of {run_id} did not end")


def drain_commands(svc, *, attempt: int = 1) -> list[str]:
    """Deliver every queued command once, as the queue trigger would, deleting those that succeed."""
    queue = svc.storage.queue(svc.settings.commands_queue)
    results = []
    for message in queue.receive_messages(max_messages=32, visibility_timeout=60):
        results.append(
            commands.handle(
                svc,
                message.content.encode(),
                message_id=message.id,
                dequeue_count=message.dequeue_count,
                actor=f"queue/{message.id}",
            )
        )
        queue.delete_message(message)
    return results


def finish(svc, run_id: str) -> None:
    """Wait for the run's job, poll once, and deliver the resulting commands."""
    wait_job(svc, run_id)
    poll.poll(svc, actor="timer-poll/test")
    drain_commands(svc)


def classic_score(emulator, rows: list[dict]) -> list[float]:
    return scoring.classic_score(emulator.info, API_KEY, rows)


def arm_score(emulator, rows: list[dict]) -> list[float]:
    return scoring.arm_score(emulator.info, API_KEY, rows)


CHURN_KEY = "churn-api-key-" + "y" * 40  # another obviously fake key: the second training service's
CHURN_SERVICE = "c4a1f0e2d3b4455687a9b0c1d2e3f405"


def two_pipelines(env: dict, emulator, **extra) -> dict:
    """``env`` with two pipelines side by side: ``census`` (uploads under ``census/``, the seeded training
    service, gated on AUC, deploying to the classic endpoint) and ``churn`` (``churn/``, a second
    training service with its own key, gated on Accuracy, deploying to the ARM web service). Neither
    flat BES setting is set: each pipeline names its own service and key (by another app setting)."""
    churn_jobs = emulator.add_training_service(CHURN_SERVICE, CHURN_KEY)
    pipelines = [
        {
            "name": "census",
            "blob_prefix": "census/",
            "trainer": {"kind": "bes", "jobs_url": env["BES_JOBS_URL"], "api_key_setting": "CENSUS_BES_KEY"},
            "targets": ["classic"],
            "gate": {"metric": "AUC", "min": 0.6},
        },
        {
            "name": "churn",
            "blob_prefix": "churn/",
            "trainer": {"kind": "bes", "jobs_url": churn_jobs, "api_key_setting": "CHURN_BES_KEY"},
            "targets": ["arm"],
            "gate": {"metric": "Accuracy", "min": 0.5},
        },
    ]
    flat = {k: v for k, v in env.items() if k not in ("BES_JOBS_URL", "BES_API_KEY")}
    return {
        **flat,
        "PIPELINES": json.dumps(pipelines),
        "DEPLOY_TARGETS": json.dumps(emulator.deploy_targets(API_KEY)),
        "CENSUS_BES_KEY": API_KEY,
        "CHURN_BES_KEY": CHURN_KEY,
        "ARM_POLL_SECONDS": "0.05",
        **extra,
    }
