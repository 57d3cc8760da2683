"""Storage restart: Azurite is stopped (its data on disk) in the middle of the loop and started again on
the same ports; the loop completes with nothing lost.

Each outage costs a few seconds: the storage SDKs retry a refused connection before they give up.
"""

import threading
import time

import pytest
from azure.core.exceptions import AzureError

from emulator import sample_data
from localdev.services import Azurite, EmulatorProcess
from shared import commands, poll, workflow
from shared import runs as R
from shared.store import DONE
from tests.conftest import API_KEY, jobs, upload
from tests.loop import drain_commands, services, target_settings, wait_job

GOOD = sample_data.generate(800, seed=21, label_noise=0.15).encode()


@pytest.fixture
def azurite(tmp_path):
    """Overrides the session's Azurite for this module: one of its own, with its data in a folder that
    outlives a stop. ``env`` and ``fresh_emulator`` pick the overrides up."""
    instance = Azurite(location=str(tmp_path / "azurite")).start()
    yield instance
    instance.stop()


@pytest.fixture
def emulator(azurite):
    """Overrides the session's emulator: its ARM web service's storage account is the one that restarts."""
    instance = EmulatorProcess(api_key=API_KEY, job_seconds=0.3, storage_connection_string=azurite.connection_string)
    yield instance.start()
    instance.stop()


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_storage_stopped_twice_mid_loop_loses_nothing(azurite, env, fresh_emulator, monkeypatch):
    storage, emulator = azurite, fresh_emulator
    svc = services(target_settings(env, emulator), monkeypatch)
    run_id = workflow.start_run_for_blob(svc, upload(svc, "good.csv", GOOD), source="blob", actor="blob/1").run_id
    wait_job(svc, run_id)

    # Outage 1, while the timer fires: the poll fails (the host runs it again at the next tick).
    storage.halt()
    with pytest.raises(AzureError):
        poll.poll(svc, actor="poll/outage")
    storage.start()
    assert svc.store.get("default", run_id).status == R.RUNNING
    poll.poll(svc, actor="poll/1")
    assert svc.store.get("default", run_id).status == R.DEPLOYING

    # Outage 2, mid-deploy: the classic endpoint has taken the model, the app has not recorded it yet.
    emulator.admin("POST", "faults", {"route": "classic.endpoint", "delay": 1.0, "times": 1})
    [message] = svc.storage.queue(svc.settings.commands_queue).receive_messages(visibility_timeout=1)
    failure: list[Exception] = []

    def deliver() -> None:
        try:
            commands.handle(svc, message.content.encode(), message_id=message.id, dequeue_count=1, actor="queue/first")
        except Exception as exc:  # the host would log it and hand the message out again
            failure.append(exc)

    delivery = threading.Thread(target=deliver)
    delivery.start()
    wait_until(lambda: emulator.admin("GET", "faults") == [])  # the verify read has begun
    storage.halt()
    delivery.join()
    storage.start()
    assert failure and isinstance(failure[0], AzureError), failure

    # The queue hands the message out again (it was never deleted): the deploy completes.
    time.sleep(1.1)
    assert drain_commands(svc) == [f"deploy {run_id}: Deployed (arm: Deployed, classic: Deployed)"]
    run = svc.store.get("default", run_id)
    assert run.status == R.DEPLOYED, run.history
    assert {name: t["status"] for name, t in run.targets.items()} == {"arm": "Deployed", "classic": "Deployed"}
    for target in svc.settings.targets:
        assert svc.deployer(target).live() == svc.targets.get(target.name).live_model == run.outputs["model"]
        assert [h["run"] for h in svc.targets.history(target.name)] == [run_id]
    [entry] = svc.commands.list()
    assert (entry["status"], entry["deliveries"]) == (DONE, 2)
    assert len(jobs(emulator)) == 1
