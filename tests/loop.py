"""Helpers for tests of the whole loop: settings with deploy targets, and driving a run to its end."""

from __future__ import annotations

import json
import time

import requests

from shared import commands, poll, workflow
from shared.settings import Settings
from tests.conftest import API_KEY


def target_settings(env: dict, emulator, **extra) -> dict:
    """``env`` plus a classic and an ARM target on the emulator (the ARM one reached with a managed
    identity token from the emulator's identity endpoint)."""
    info = emulator.info
    targets = [
        {
            "name": "classic",
            "kind": "classic",
            "endpoint_url": info["classic_endpoint_url"],
            "api_key": API_KEY,
            "resource_name": info["classic_resource_name"],
        },
        {"name": "arm", "kind": "arm", "resource_id": info["arm_resource_id"], "management_url": info["url"]},
    ]
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
    """Score through the classic endpoint's RRS, at the ApiLocation the management API reports."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    endpoint = requests.get(emulator.info["classic_endpoint_url"], headers=headers, timeout=10).json()
    names = list(rows[0])
    response = requests.post(
        f"{endpoint['ApiLocation']}/execute",
        params={"api-version": "2.0", "details": "true"},
        headers=headers,
        json={
            "Inputs": {"input1": {"ColumnNames": names, "Values": [[r[n] for n in names] for r in rows]}},
            "GlobalParameters": {},
        },
        timeout=10,
    )
    response.raise_for_status()
    value = response.json()["Results"]["output1"]["value"]
    return [float(v[value["ColumnNames"].index("Scored Probabilities")]) for v in value["Values"]]


def arm_score(emulator, rows: list[dict]) -> list[float]:
    """Score through the ARM web service's RRS (swagger format), found from its swaggerLocation."""
    token = requests.get(
        emulator.info["identity_endpoint"],
        params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
        headers={"X-IDENTITY-HEADER": emulator.info["identity_header"]},
        timeout=10,
    ).json()["access_token"]
    definition = requests.get(
        emulator.url + emulator.info["arm_resource_id"],
        params={"api-version": "2017-01-01"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    execute = definition["properties"]["swaggerLocation"].replace("/swagger.json", "/execute")
    response = requests.post(
        execute,
        params={"api-version": "2.0", "format": "swagger"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"Inputs": {"input1": rows}},
        timeout=10,
    )
    response.raise_for_status()
    return [float(r["Scored Probabilities"]) for r in response.json()["Results"]["output1"]]
