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
