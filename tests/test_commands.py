"""The command contract: every command type end to end, replays, rejections, and attempts to redirect."""

import json

import pytest

from emulator import sample_data
from shared import commands
from shared import runs as R
from shared.store import DONE, REJECTED
from tests.conftest import jobs, upload
from tests.loop import drain_commands, finish, services, target_settings, wait_job

GOOD = sample_data.generate(800, seed=21, label_noise=0.15).encode()
WORSE = sample_data.generate(800, seed=23, label_noise=0.35).encode()


@pytest.fixture
def loop(env, fresh_emulator, monkeypatch):
    return services(target_settings(env, fresh_emulator), monkeypatch)


def send(svc, body, message_id="m-1", attempt=1):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return commands.handle(svc, raw, message_id=message_id, dequeue_count=attempt, actor=f"queue/{message_id}")


def record(svc, key):
    return svc.commands.get(key)


def test_retrain_a_named_blob_and_a_replay_of_the_same_request_id_is_done_once(loop, fresh_emulator):
    upload(loop, "march.csv", GOOD)
    body = {"type": "retrain", "version": 1, "blob": "march.csv", "request_id": "erp-42"}
    first = send(loop, body, "m-1")
    second = send(loop, body, "m-2")  # a different message, the same request
    assert first.startswith("retrain: run ") and "started" in first
    assert second == "duplicate: req:erp-42 was already Done"
    assert len(jobs(fresh_emulator)) == 1
    entry = record(loop, "req:erp-42")
    assert (entry["status"], entry["duplicates"], entry["type"]) == (DONE, 1, "retrain")


def test_retrain_without_a_blob_takes_the_newest_training_blob(loop):
    import time

    upload(loop, "old.csv", GOOD)
    time.sleep(1.1)  # blob upload times have whole-second resolution
    upload(loop, "new.csv", GOOD)
    send(loop, {"type": "retrain", "version": 1})
    [run] = [r for r in loop.store.list_runs("default")]
    assert (run.blob_name, run.source, run.status) == ("new.csv", "queue", R.RUNNING)


def test_a_rollback_replayed_with_the_same_request_id_does_not_roll_back_twice(loop, fresh_emulator):
    from shared import workflow

    for name, data in (("a.csv", GOOD), ("b.csv", sample_data.generate(1600, seed=22, label_noise=0.0).encode())):
        outcome = workflow.start_run_for_blob(loop, upload(loop, name, data), source="blob", actor="t")
        finish(loop, outcome.run_id)
    first_live = loop.targets.get("classic").previous_run
    body = {"type": "rollback", "version": 1, "target": "classic", "request_id": "ops-7", "reason": "bad scores"}
    send(loop, body, "m-1")
    send(loop, body, "m-2")
    assert loop.targets.get("classic").live_run == first_live  # once, not toggled back
    assert len(loop.targets.history("classic")) == 3


def test_a_forced_deploy_skips_the_gate_and_records_why(loop, fresh_emulator):
    from shared import workflow

    good = workflow.start_run_for_blob(loop, upload(loop, "good.csv", GOOD), source="blob", actor="t")
    finish(loop, good.run_id)
    worse = workflow.start_run_for_blob(loop, upload(loop, "worse.csv", WORSE), source="blob", actor="t")
    finish(loop, worse.run_id)
    assert loop.store.get("default", worse.run_id).status == R.REJECTED
    forced = {
        "type": "deploy",
        "version": 1,
        "run_id": worse.run_id,
        "targets": ["arm"],
        "force": True,
        "reason": "INC-123: the champion mislabels a segment",
        "request_id": "inc-123",
    }
    assert "arm: Deployed" in send(loop, forced, "m-1")
    assert send(loop, forced, "m-2").startswith("duplicate")  # replayed: deployed once
    patches = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "arm.patch"]
    assert len(patches) == 2  # the good run's deploy, and this one
    run = loop.store.get("default", worse.run_id)
    assert run.targets["arm"]["forced"] == "INC-123: the champion mislabels a segment"
    assert run.status == R.REJECTED  # its history keeps the gate's verdict
    assert loop.targets.get("arm").live_run == worse.run_id
    assert loop.targets.get("classic").live_run == good.run_id
    assert loop.targets.history("arm")[0]["kind"] == "forced deploy"


RUN = "20261125T101500Z-1a2b3c4d5e6f7a8b"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"type": "deploy", "version": 2, "run_id": RUN}).encode(), "unsupported command version"),
        (json.dumps({"type": "explode", "version": 1}).encode(), "unknown command type"),
        (json.dumps({"type": "deploy", "version": 1}).encode(), "'run_id' is a required property"),
        (json.dumps({"type": "deploy", "version": 1, "run_id": RUN, "extra": 1}).encode(), "Additional properties"),
        (json.dumps({"type": "deploy", "version": 1, "run_id": 42}).encode(), "is not of type 'string'"),
        (json.dumps({"type": "deploy", "version": 1, "run_id": RUN, "targets": "prod"}).encode(), "not of type"),
        (
            json.dumps({"type": "deploy", "version": 1, "run_id": RUN, "force": True, "targets": ["arm"]}).encode(),
            "'reason' is a required property",
        ),
        (json.dumps({"type": "retrain", "version": 1, "blob": "x" * 49_200}).encode(), "exceeds"),
        (json.dumps({"type": "deploy", "version": 1, "run_id": RUN}).encode(), "no run"),
        (json.dumps({"type": "rollback", "version": 1, "target": "nope"}).encode(), "no deploy target named"),
        (json.dumps({"type": "rollback", "version": 1, "target": "classic"}).encode(), "no earlier model"),
        (json.dumps({"type": "retrain", "version": 1, "blob": "missing.csv"}).encode(), "no blob"),
        (json.dumps({"type": "retrain", "version": 1, "pipeline": "other"}).encode(), "unknown pipeline"),
    ],
)
def test_bad_commands_are_recorded_as_rejected_with_the_reason_and_consumed(loop, raw, reason):
    result = send(loop, raw, "m-bad")
    assert result.startswith("rejected:") and reason in result
    [entry] = loop.commands.list(REJECTED)
    assert entry["RowKey"] == "msg:m-bad" and reason in entry["reason"]
    assert entry["raw"] == raw[:1000].decode("utf-8", "replace")
    assert send(loop, raw, "m-bad").startswith("duplicate")  # a redelivery is not judged twice


UNKNOWN_FIELD = "Additional properties are not allowed"
OUTSIDE = "is refused: A blob name inside TRAINING_CONTAINER"  # after the name itself: "$.blob: '<name>' is ..."


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"type": "deploy", "version": 1, "run_id": RUN, "endpoint_url": "https://collector.example.com/x"},
            f"{UNKNOWN_FIELD} ('endpoint_url' was unexpected)",
        ),
        ({"type": "deploy", "version": 1, "run_id": RUN, "api_key": "stolen"}, f"{UNKNOWN_FIELD} ('api_key'"),
        (
            {"type": "rollback", "version": 1, "target": "classic", "management_url": "https://collector.example.com"},
            f"{UNKNOWN_FIELD} ('management_url'",
        ),
        ({"type": "retrain", "version": 1, "blob": "https://collector.example.com/data.csv"}, OUTSIDE),
        ({"type": "retrain", "version": 1, "blob": "../models/default/x/model.csv"}, OUTSIDE),
        ({"type": "retrain", "version": 1, "blob": "/models/x.csv"}, OUTSIDE),
        ({"type": "retrain", "version": 1, "blob": "a\\..\\b.csv"}, OUTSIDE),
        ({"type": "retrain", "version": 1, "blob": "data/../../models/x.csv"}, OUTSIDE),
        (
            {"type": "retrain", "version": 1, "connection_string": "DefaultEndpointsProtocol=https;AccountName=evil"},
            f"{UNKNOWN_FIELD} ('connection_string'",
        ),
        (
            {"type": "deploy", "version": 1, "run_id": RUN, "targets": ["https://collector.example.com"]},
            "$.targets[0]: 'https://collector.example.com' does not match",
        ),
        (
            {"type": "deploy", "version": 1, "run_id": RUN, "targets": ["unconfigured"], "force": True, "reason": "x"},
            "forced deploy needs configured targets; unknown: unconfigured",
        ),
    ],
)
def test_no_message_can_send_credentials_or_data_anywhere_else(loop, fresh_emulator, body, reason):
    # WHEN a message tries to supply an address, a key, or a blob outside the training container
    result = send(loop, body)
    # THEN it is refused for exactly that, nothing reached any Azure ML service, and the refusal is recorded
    if reason == OUTSIDE:
        reason = f"$.blob: {body['blob']!r} {OUTSIDE}"
    assert result.startswith("rejected:") and reason in result, result
    assert fresh_emulator.admin("GET", "requests") == []
    [entry] = loop.commands.list(REJECTED)
    assert reason in entry["reason"]


def test_a_retrain_rejected_because_its_blob_was_missing_runs_when_resent_after_the_upload(loop, fresh_emulator):
    body = {"type": "retrain", "version": 1, "blob": "april.csv", "request_id": "erp-april"}
    # GIVEN the ERP sent its retrain before the export had landed
    assert "no blob 'april.csv'" in send(loop, body, "m-1")
    assert record(loop, "req:erp-april")["status"] == REJECTED
    # AND the same message delivered again is still a duplicate of that rejection
    assert send(loop, body, "m-1").startswith("duplicate: req:erp-april was already Rejected")
    # WHEN the export lands and the ERP resends with the same request id
    upload(loop, "april.csv", GOOD)
    result = send(loop, body, "m-2")
    # THEN it is carried out, once, and the record keeps why it was refused before
    assert result.startswith("retrain: run ") and "started" in result
    entry = record(loop, "req:erp-april")
    assert (entry["status"], entry["resends"]) == (DONE, 1) and "no blob" in entry["previous_reason"]
    assert send(loop, body, "m-3").startswith("duplicate: req:erp-april was already Done")
    assert len(jobs(fresh_emulator)) == 1


def test_a_transient_failure_is_retried_then_recorded_before_it_is_poisoned(loop, fresh_emulator):
    from shared import workflow

    outcome = workflow.start_run_for_blob(loop, upload(loop, "a.csv", GOOD), source="blob", actor="t")
    wait_job(loop, outcome.run_id)
    from shared import poll

    poll.poll(loop, actor="timer-poll/t")
    [message] = loop.storage.queue(loop.settings.commands_queue).receive_messages()
    fresh_emulator.admin("POST", "faults", {"route": "arm.patch", "status": 503})
    limit = commands.max_dequeue_count()
    for attempt in range(1, limit + 1):
        with pytest.raises(Exception, match="ARM"):
            send(loop, message.content.encode(), message.id, attempt)
        entry = record(loop, f"msg:{message.id}")
        assert entry["status"] == ("InProgress" if attempt < limit else "Failed")
    assert f"gave up after {limit} deliveries" in entry["reason"]
    fresh_emulator.admin("DELETE", "faults")
    drain_commands(loop)


def test_a_blob_name_that_looks_like_a_url_is_only_a_name_in_the_training_container(loop, fresh_emulator):
    name = "https:/collector.example.com/data?sig=abc.csv"  # a legal blob name, nothing more
    upload(loop, name, GOOD)
    assert "started" in send(loop, {"type": "retrain", "version": 1, "blob": name})
    [job] = jobs(fresh_emulator)
    source = job["request"]["Inputs"]["input1"]
    assert source["RelativeLocation"] == f"{loop.settings.training_container}/{name}"
    assert source["BaseLocation"] == loop.storage.blob_base_location


def test_a_delivery_that_died_mid_way_is_taken_over_by_the_next_delivery_of_that_message(loop, fresh_emulator):
    # GIVEN a delivery of message m-1 that claimed its request and then died (its host was stopped)
    upload(loop, "march.csv", GOOD)
    body = {"type": "retrain", "version": 1, "blob": "march.csv", "request_id": "erp-7"}
    now = commands.utcnow()
    fields = {"message_id": "m-1", "raw": "{}", "by": "queue/m-1", "type": "retrain"}
    assert loop.commands.claim("req:erp-7", fields, commands.LEASE, now, 1)[0] == "claimed"
    # WHEN another message with the same request_id arrives meanwhile, it waits for the holder...
    with pytest.raises(commands.RetryLater):
        send(loop, body, "m-2", attempt=1)
    # ...and on its last delivery it is consumed as a duplicate, not poisoned
    assert send(loop, body, "m-2", attempt=commands.max_dequeue_count()).startswith("duplicate:")
    assert jobs(fresh_emulator) == []
    # WHEN the queue hands m-1 out again (it does so only once the dead delivery stopped holding it)
    result = send(loop, body, "m-1", attempt=2)
    # THEN it is carried out at once, not after the dead delivery's lease
    assert "started" in result and len(jobs(fresh_emulator)) == 1
    entry = record(loop, "req:erp-7")
    assert (entry["status"], entry["deliveries"], entry["dequeue_count"]) == (DONE, 2, 2)
