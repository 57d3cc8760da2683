"""Notifications through the registered functions: each notable run end arrives once per receiver (an
Event Grid topic and a signed webhook, both on the emulator), late if a receiver was down for a while,
in the poison queue with a record if it is down for good, and the run never waits for it."""

from __future__ import annotations

import importlib
import json
import time

import pytest

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import notify
from shared import runs as R
from tests.conftest import API_KEY
from tests.test_function_app import put_blob, wait_for_job_end

GOOD = sample_data.generate(800, seed=3, label_noise=0.1).encode()
BAD = sample_data.generate(800, seed=5, label_noise=0.5).encode()
TOPIC_KEY = "topic-key-" + "t" * 30
HOOK_SECRET = "webhook-secret-" + "w" * 30


@pytest.fixture
def notified(loop_env, fresh_emulator, monkeypatch, request):
    """Both receivers configured; ``indirect`` param "approval": the ARM target needs manual approval;
    "identity": the topic is reached with the app's managed identity, not a key."""
    fresh_emulator.admin("POST", "receivers", {"topic_key": TOPIC_KEY, "webhook_secret": HOOK_SECRET})
    targets = fresh_emulator.deploy_targets(API_KEY)
    mode = getattr(request, "param", None)
    if mode == "approval":
        targets[1].update(approval="manual")
    env = {
        **loop_env,
        "DEPLOY_TARGETS": json.dumps(targets),
        "NOTIFY_EVENTGRID_TOPIC": f"{fresh_emulator.url}/eventgrid/autopilot/api/events",
        **({} if mode == "identity" else {"NOTIFY_EVENTGRID_KEY": TOPIC_KEY}),
        "NOTIFY_WEBHOOK_URL": f"{fresh_emulator.url}/webhook/ops",
        "NOTIFY_WEBHOOK_SECRET": HOOK_SECRET,
        "NOTIFY_QUEUE": "events-" + loop_env["COMMANDS_QUEUE"].split("-", 1)[1],
        "GATE_MIN": "0.6",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = importlib.reload(function_app)  # the events trigger is registered when a receiver is configured
    host = LocalHost(app.app, env, visibility_timeout=0)
    from shared.workflow import get_services

    yield env, host, get_services()
    host.stop()
    for name in ("NOTIFY_EVENTGRID_TOPIC", "NOTIFY_WEBHOOK_URL"):
        monkeypatch.delenv(name)
    importlib.reload(function_app)


def settle(host, seconds: float = 8) -> None:
    """Poll, commands and events until the announced events have become visible and been sent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        host.fire_timer("poll_runs")
        host.pump_queues()
        time.sleep(0.2)


def upload_and_settle(env, host, emulator, name: str, data: bytes) -> None:
    """An upload, through the blob trigger, its job, and the poll, commands and events after it."""
    put_blob(env, name, data)
    host.scan_blobs()
    wait_for_job_end(emulator)
    settle(host)


def received(emulator) -> list[dict]:
    return emulator.admin("GET", "received")


def test_the_events_trigger_exists_only_when_a_receiver_is_configured(notified):
    from localdev.runner import index

    assert "send_event" in {f.get_function_name() for f in index(function_app.app)}
    from shared.settings import notify_queue

    assert notify_queue({}) is None


def test_each_notable_end_arrives_once_at_both_receivers_with_nothing_secret(notified, fresh_emulator):
    env, host, svc = notified
    put_blob(env, "good.csv", GOOD)
    put_blob(env, "empty.csv", b"")
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    settle(host)
    upload_and_settle(env, host, fresh_emulator, "bad.csv", BAD)
    runs = {r.blob_name: r for r in svc.store.list_runs("default")}
    assert (runs["good.csv"].status, runs["empty.csv"].status, runs["bad.csv"].status) == (
        R.DEPLOYED, R.INVALID, R.REJECTED,
    )  # fmt: skip
    got = received(fresh_emulator)
    by_receiver = {
        receiver: sorted(e["event"]["type"] for e in got if e["receiver"] == receiver)
        for receiver in ("eventgrid", "webhook")
    }
    expected = sorted(["Autopilot.Run.Deployed", "Autopilot.Run.Invalid", "Autopilot.Run.Rejected"])
    assert by_receiver == {"eventgrid": expected, "webhook": expected}  # once each, at both
    deployed = next(e["event"] for e in got if e["event"]["type"] == "Autopilot.Run.Deployed")
    good = runs["good.csv"]
    assert (
        deployed["id"] == f"{good.run_id}.Deployed" and deployed["subject"] == f"pipelines/default/runs/{good.run_id}"
    )
    assert deployed["data"]["metric"]["name"] == "AUC" and deployed["data"]["targets"]["arm"]["status"] == "Deployed"
    assert deployed["data"]["links"]["run"] == f"/api/runs/{good.run_id}?pipeline=default"
    text = json.dumps(got)
    for secret in (API_KEY, TOPIC_KEY, HOOK_SECRET, *fresh_emulator.admin("GET", "tokens")):
        assert secret not in text
    log = {e["RowKey"]: e for e in notify.events(svc)}
    assert {e["status"] for e in log.values()} == {"Delivered"} and len(log) == 6


def test_a_receiver_down_for_a_while_gets_the_event_later_and_the_run_does_not_wait(notified, fresh_emulator):
    env, host, svc = notified
    fresh_emulator.admin("POST", "faults", {"route": "receiver.webhook", "status": 503, "times": 3})
    upload_and_settle(env, host, fresh_emulator, "good.csv", GOOD)
    [run] = svc.store.list_runs("default")
    assert run.status == R.DEPLOYED
    assert sorted(e["receiver"] for e in received(fresh_emulator)) == ["eventgrid", "webhook"]  # each once
    entry = next(e for e in notify.events(svc) if e["RowKey"].endswith(".webhook"))
    assert entry["status"] == "Delivered" and entry["deliveries"] == 2  # the HTTP retry, then the queue's


def test_a_receiver_down_for_good_ends_in_the_poison_queue_with_a_record(notified, fresh_emulator):
    env, host, svc = notified
    fresh_emulator.admin("POST", "faults", {"route": "receiver.webhook", "status": 500})
    put_blob(env, "good.csv", GOOD)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    settle(host, seconds=10)
    [run] = svc.store.list_runs("default")
    assert run.status == R.DEPLOYED  # the run never waited for the receiver
    entry = next(e for e in notify.events(svc) if e["RowKey"].endswith(".webhook"))
    assert entry["status"] == "Failed" and entry["deliveries"] == host.max_dequeue_count
    assert "HTTP 500" in entry["detail"]
    poison = svc.storage.queue(env["NOTIFY_QUEUE"] + "-poison")
    assert len(poison.peek_messages(max_messages=32)) == 1
    assert [e["receiver"] for e in received(fresh_emulator)] == ["eventgrid"]


def test_an_announced_end_that_never_happened_is_dropped_with_a_record(notified, fresh_emulator):
    """A store announces before it writes; a write that then lost its race leaves an announcement of an
    end the run never reached: it is retried while the write may still land, then dropped, recorded."""
    env, host, svc = notified
    upload_and_settle(env, host, fresh_emulator, "good.csv", GOOD)
    [run] = svc.store.list_runs("default")
    assert run.status == R.DEPLOYED
    message = json.dumps(
        {
            "event_id": f"{run.run_id}.Failed",
            "receiver": "webhook",
            "pipeline": "default",
            "run_id": run.run_id,
            "status": "Failed",
        }
    ).encode()
    with pytest.raises(R.RetryLater, match="has not reached Failed"):
        notify.deliver(svc, message, dequeue_count=1, max_dequeue_count=5, actor="test")
    outcome = notify.deliver(svc, message, dequeue_count=5, max_dequeue_count=5, actor="test")
    assert outcome.endswith("dropped (never happened)")
    entry = next(e for e in notify.events(svc) if e["RowKey"] == f"{run.run_id}.Failed.webhook")
    assert entry["status"] == "Dropped" and "never reached Failed" in entry["detail"]
    assert not [e for e in received(fresh_emulator) if e["event"]["type"] == "Autopilot.Run.Failed"]


def test_the_webhook_signature_is_the_documented_hmac():
    import hashlib
    import hmac

    body = b'{"id": "r.Deployed"}'
    header = notify.signature("s" * 20, 1700000000, body)
    expected = hmac.new(b"s" * 20, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_a_duplicate_delivery_of_an_event_sends_nothing_twice(notified, fresh_emulator):
    env, host, svc = notified
    upload_and_settle(env, host, fresh_emulator, "good.csv", GOOD)
    [run] = svc.store.list_runs("default")
    before = len(received(fresh_emulator))
    again = json.dumps(
        {
            "event_id": f"{run.run_id}.Deployed",
            "receiver": "webhook",
            "pipeline": "default",
            "run_id": run.run_id,
            "status": "Deployed",
        }
    ).encode()
    assert notify.deliver(svc, again, dequeue_count=1, max_dequeue_count=5, actor="test").endswith("delivered already")
    assert len(received(fresh_emulator)) == before


def test_a_rollback_is_announced_and_arrives_once_per_receiver(notified, fresh_emulator):
    env, host, svc = notified
    for name, data in (
        ("first.csv", GOOD),
        ("second.csv", sample_data.generate(1600, seed=4, label_noise=0.02).encode()),
    ):
        put_blob(env, name, data)
        host.scan_blobs()
        wait_for_job_end(fresh_emulator)
        settle(host)
    runs = {r.blob_name: r for r in svc.store.list_runs("default")}
    assert runs["second.csv"].status == R.DEPLOYED and svc.targets.get("classic").live_run == runs["second.csv"].run_id
    command = {"type": "rollback", "version": 1, "target": "classic", "request_id": "rb-1", "reason": "bad week"}
    svc.storage.queue(env["COMMANDS_QUEUE"]).send_message(json.dumps(command))
    settle(host)
    assert svc.targets.get("classic").live_run == runs["first.csv"].run_id
    rolled = [e for e in received(fresh_emulator) if e["event"]["type"] == "Autopilot.Target.RolledBack"]
    assert sorted(e["receiver"] for e in rolled) == ["eventgrid", "webhook"]
    data = rolled[0]["event"]["data"]
    assert (data["target"], data["live_run"], data["replaced_run"]) == (
        "classic", runs["first.csv"].run_id, runs["second.csv"].run_id,
    )  # fmt: skip
    assert rolled[0]["event"]["subject"] == "pipelines/default/targets/classic"


@pytest.mark.parametrize("notified", ["approval"], indirect=True)
def test_every_other_event_type_arrives_once_at_both_receivers(notified, fresh_emulator):
    """AwaitingApproval, PartiallyDeployed (a refusal), Failed (a failed job) and TimedOut (the deadline)."""
    import datetime as dt

    from shared import poll

    env, host, svc = notified
    upload_and_settle(env, host, fresh_emulator, "good.csv", GOOD)
    [waiting] = svc.store.list_runs("default")
    assert waiting.status == R.AWAITING_APPROVAL
    reject = {
        "type": "reject",
        "version": 1,
        "run_id": waiting.run_id,
        "target": "arm",
        "approver": "bo",
        "reason": "no",
    }
    svc.storage.queue(env["COMMANDS_QUEUE"]).send_message(json.dumps(reject))
    settle(host)
    assert svc.store.get("default", waiting.run_id).status == R.PARTIALLY_DEPLOYED
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": "Out of memory", "times": 1})
    upload_and_settle(env, host, fresh_emulator, "failing.csv", GOOD)
    fresh_emulator.admin("POST", "config", {"job_seconds": 60})
    put_blob(env, "slow.csv", GOOD)
    host.scan_blobs()
    poll.poll(svc, actor="test", now=R.utcnow() + dt.timedelta(minutes=svc.settings.job_timeout_minutes + 1))
    settle(host)
    statuses = {r.blob_name: r.status for r in svc.store.list_runs("default")}
    assert statuses == {"good.csv": R.PARTIALLY_DEPLOYED, "failing.csv": R.FAILED, "slow.csv": R.TIMED_OUT}
    got = received(fresh_emulator)
    expected = sorted(f"Autopilot.Run.{s}" for s in ("AwaitingApproval", "PartiallyDeployed", "Failed", "TimedOut"))
    for receiver in ("eventgrid", "webhook"):
        assert sorted(e["event"]["type"] for e in got if e["receiver"] == receiver) == expected, receiver


@pytest.mark.parametrize("notified", ["identity"], indirect=True)
def test_without_a_key_the_topic_gets_the_apps_managed_identity_token(notified, fresh_emulator):
    env, host, _ = notified
    assert "NOTIFY_EVENTGRID_KEY" not in env
    upload_and_settle(env, host, fresh_emulator, "good.csv", GOOD)
    assert [e["event"]["type"] for e in received(fresh_emulator) if e["receiver"] == "eventgrid"] == [
        "Autopilot.Run.Deployed"
    ]
