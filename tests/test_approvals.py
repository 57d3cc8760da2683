"""Manual approval per target, through the registered functions: a run the gate approves waits on a
target with "approval": "manual" while the others deploy; approve deploys it there, reject and expiry do
not; the decision (who, why) is recorded on the run and in the target's history; a replay of the same
request id does nothing twice; a newer approved run supersedes an older one still waiting."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import runs as R
from tests.conftest import API_KEY
from tests.test_function_app import put_blob, wait_for_job_end

GOOD = sample_data.generate(800, seed=3, label_noise=0.15).encode()
BETTER = sample_data.generate(1600, seed=4, label_noise=0.02).encode()


@pytest.fixture
def world(loop_env, fresh_emulator, monkeypatch):
    targets = fresh_emulator.deploy_targets(API_KEY)
    targets[1].update(approval="manual", approval_hours=2)  # the ARM web service needs a person's approval
    env = {**loop_env, "DEPLOY_TARGETS": json.dumps(targets)}
    monkeypatch.setenv("DEPLOY_TARGETS", env["DEPLOY_TARGETS"])
    host = LocalHost(function_app.app, env, visibility_timeout=0)
    from shared.workflow import get_services

    yield env, host, get_services()
    host.stop()


def settle(host, rounds: int = 15) -> None:
    for _ in range(rounds):
        host.fire_timer("poll_runs")
        host.pump_queues()
        time.sleep(0.1)


def send(svc, env, **command) -> None:
    body = {"version": 1, "pipeline": "default", **command}
    svc.storage.queue(env["COMMANDS_QUEUE"]).send_message(json.dumps(body))


def trained(env, host, svc, fresh_emulator, name: str, data: bytes) -> R.Run:
    put_blob(env, name, data)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    settle(host)
    return next(r for r in svc.store.list_runs("default") if r.blob_name == name)


def deploys_to(svc, target: str) -> list[dict]:
    return [h for h in svc.targets.history(target) if h.get("kind") == "deploy"]


def test_a_manual_target_waits_while_the_other_deploys_and_approve_releases_it_once(world, fresh_emulator):
    env, host, svc = world
    run = trained(env, host, svc, fresh_emulator, "good.csv", GOOD)
    assert run.status == R.AWAITING_APPROVAL
    assert run.targets["classic"]["status"] == "Deployed" and run.targets["arm"]["status"] == "AwaitingApproval"
    assert svc.targets.get("arm").awaiting_run == run.run_id and deploys_to(svc, "arm") == []
    assert svc.deployer(svc.settings.target("arm")).live() != run.outputs["model"]  # not live there yet
    command = {
        "type": "approve",
        "run_id": run.run_id,
        "target": "arm",
        "approver": "ana@example.com",
        "reason": "checked the lift",
    }
    send(svc, env, request_id="approve-1", **command)
    settle(host, 5)
    run = svc.store.get("default", run.run_id)
    assert run.status == R.DEPLOYED and run.targets["arm"]["status"] == "Deployed"
    assert run.targets["arm"]["approval"] == {
        **run.targets["arm"]["approval"],
        "approved": True,
        "by": "ana@example.com",
        "reason": "checked the lift",
    }
    assert svc.deployer(svc.settings.target("arm")).live() == run.outputs["model"]
    approval = next(h for h in svc.targets.history("arm") if h.get("kind") == "approval")
    assert (approval["by"], approval["reason"], approval["run"]) == ("ana@example.com", "checked the lift", run.run_id)
    # the same request again does nothing twice
    send(svc, env, request_id="approve-1", **command)
    settle(host, 3)
    assert len(deploys_to(svc, "arm")) == 1
    assert svc.targets.get("arm").awaiting_run is None


def test_reject_and_expiry_deploy_nothing_and_say_who_or_why(world, fresh_emulator):
    env, host, svc = world
    first = trained(env, host, svc, fresh_emulator, "good.csv", GOOD)
    send(svc, env, type="reject", run_id=first.run_id, target="arm", approver="bo", reason="drift in segment B")
    settle(host, 5)
    first = svc.store.get("default", first.run_id)
    assert first.status == R.PARTIALLY_DEPLOYED and first.targets["arm"]["status"] == "RefusedByApprover"
    assert first.targets["arm"]["reason"] == "refused by bo: drift in segment B" and deploys_to(svc, "arm") == []
    # a second run waits, and its wait runs out
    second = trained(env, host, svc, fresh_emulator, "better.csv", BETTER)
    assert second.targets["arm"]["status"] == "AwaitingApproval"
    state = svc.targets.get("arm")
    state.awaiting_until = R.utcnow() - dt.timedelta(minutes=1)  # as if two hours had passed
    svc.targets.save(state)
    settle(host, 2)
    second = svc.store.get("default", second.run_id)
    assert second.targets["arm"]["status"] == "ApprovalExpired" and "expired" in second.targets["arm"]["reason"]
    assert second.status == R.PARTIALLY_DEPLOYED and deploys_to(svc, "arm") == []
    # approving it now is refused, recorded in the command log
    send(svc, env, request_id="late-1", type="approve", run_id=second.run_id, target="arm", approver="ana", reason="ok")
    settle(host, 3)
    [entry] = [e for e in svc.commands.list("Rejected") if e["RowKey"] == "req:late-1"]
    assert "not waiting for approval on arm (it is ApprovalExpired)" in entry["reason"]


def test_a_newer_approved_run_supersedes_an_older_one_still_waiting(world, fresh_emulator):
    env, host, svc = world
    older = trained(env, host, svc, fresh_emulator, "good.csv", GOOD)
    newer = trained(env, host, svc, fresh_emulator, "better.csv", BETTER)
    assert newer.targets["arm"]["status"] == "AwaitingApproval" and svc.targets.get("arm").awaiting_run == newer.run_id
    older = svc.store.get("default", older.run_id)
    assert older.targets["arm"]["status"] == "Superseded" and newer.run_id in older.targets["arm"]["reason"]
    assert older.status == R.PARTIALLY_DEPLOYED


def test_approval_settings_are_checked_per_target(loop_env, fresh_emulator):
    from shared.settings import Settings, SettingsError

    targets = fresh_emulator.deploy_targets(API_KEY)
    for bad, message in (
        ({"approval": "sometimes"}, "approval: must be 'auto' or 'manual'"),
        ({"approval_hours": 0}, "approval_hours"),
    ):
        with pytest.raises(SettingsError, match=message):
            Settings.from_env({**loop_env, "DEPLOY_TARGETS": json.dumps([{**targets[0], **bad}])})
    settings = Settings.from_env({**loop_env, "DEPLOY_TARGETS": json.dumps([{**targets[0], "approval": "manual"}])})
    assert settings.approval_hours("classic") == 24 and settings.approval_hours("arm") is None
