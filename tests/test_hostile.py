"""The promises under attack and under a broken network, through the registered functions against
Azurite and the emulator: every run ends in a recorded state, every message ends in the command log,
a service answering garbage loses nothing, credentials go nowhere else, a skewed clock blocks nobody.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import runs as R
from shared.store import FAILED, REJECTED
from tests.conftest import jobs
from tests.test_function_app import put_blob, wait_for_job_end

GOOD = sample_data.generate(800, seed=5, label_noise=0.1).encode()
RUN = "20261125T101500Z-1a2b3c4d5e6f7a8b"


@pytest.fixture
def host(loop_env):
    instance = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    yield instance
    instance.stop()


@pytest.fixture
def svc(host):
    from shared.workflow import get_services

    return get_services()


def runs(svc) -> list[R.Run]:
    return list(svc.store.list_runs(svc.settings.pipeline))


def the_run(svc, name: str) -> R.Run:
    return next(r for r in runs(svc) if r.blob_name == name)


def age(svc, run_id: str, minutes: float) -> None:
    """GIVEN the run's job was submitted ``minutes`` earlier than it was (its stored state moved back in
    time, as an old run's state is: no clock is patched)."""

    def change(run: R.Run) -> bool:
        run.submitted_at -= dt.timedelta(minutes=minutes)
        return True

    svc.store.update(svc.settings.pipeline, run_id, change)


def send_raw(svc, raw: bytes) -> None:
    """Put a message on the commands queue as any sender could: base64 of arbitrary bytes."""
    from azure.storage.queue import QueueClient

    svc.storage.queue(svc.settings.commands_queue)  # created on first use, as the app's own sends do
    queue = QueueClient.from_connection_string(svc.settings.storage_connection, svc.settings.commands_queue)
    queue.send_message(base64.b64encode(raw).decode())


def poison(svc) -> list:
    return list(svc.storage.queue(f"{svc.settings.commands_queue}-poison").peek_messages(32))


def running_with_a_waiter(host, svc, emulator) -> tuple[R.Run, R.Run]:
    """A run whose (slow) job is running, and a newer upload waiting for the pipeline's slot."""
    emulator.admin("POST", "config", {"job_seconds": 120})
    for name in ("first.csv", "second.csv"):
        upload_pair(svc, name)
        host.scan_blobs()
    first, second = the_run(svc, "first.csv"), the_run(svc, "second.csv")
    assert (first.status, second.status) == (R.RUNNING, R.WAITING)
    return first, second


# --- a job whose status call keeps failing still ends ---------------------------------------------

STATUS_FAULTS = {
    "500": {"status": 500},
    "an HTML page": {
        "status": 200,
        "body": "<html><body>Service Unavailable</body></html>",
        "content_type": "text/html",
    },
    "StatusCode ²": {"status": 200, "body": {"StatusCode": "²", "Results": None, "Details": None}},
    "StatusCode an object": {"status": 200, "body": {"StatusCode": {"name": "Running"}, "Results": [], "Details": 7}},
    "a list": {"status": 200, "body": [1, 2, 3]},
}


@pytest.mark.parametrize("answer", list(STATUS_FAULTS))
def test_a_status_call_that_keeps_failing_is_counted_and_the_deadline_still_holds(host, svc, fresh_emulator, answer):
    # GIVEN a running job, a newer upload waiting, and a status call that fails every time
    first, second = running_with_a_waiter(host, svc, fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", **STATUS_FAULTS[answer]})
    # WHEN the timer fires twice before the deadline
    assert [i.ok for i in (host.fire_timer("poll_runs"), host.fire_timer("poll_runs"))] == [True, True]
    # THEN each failed check is counted, the last error kept, and the history notes it once
    run = svc.store.get("default", first.run_id)
    assert (run.status, run.check_failures) == (R.RUNNING, 2)
    assert run.last_check_error["transient"] and run.last_check_error["code"] in (
        "UnexpectedResponse",
        "UnknownJobStatusCode",
        "InternalError",
    )
    assert sum("checking job" in h.get("event", "") for h in run.history) == 1
    from shared import status

    assert "2 failed status checks" in status.page_html(svc)  # visible to an operator before the deadline
    # WHEN the job's allowed time has passed (status still failing)
    age(svc, first.run_id, svc.settings.job_timeout_minutes + 1)
    host.fire_timer("poll_runs")
    # THEN the run timed out, its job was cancelled, and the waiting upload got the slot
    run = svc.store.get("default", first.run_id)
    assert run.status == R.TIMED_OUT and run.error["code"] == "JobTimeout" and run.error["failed_checks"] == 3
    assert "unchecked (3 failed checks)" in run.history[-1]["reason"] and "cancelled" in run.history[-1]["reason"]
    assert next(j for j in jobs(fresh_emulator) if j["id"] == first.job_id)["status"] == "Cancelled"
    assert svc.store.get("default", second.run_id).status == R.RUNNING


@pytest.mark.parametrize(
    ("status", "code", "why"),
    [(404, "NotFound", "the job is gone"), (401, "Unauthorized", "the key was rotated")],
)
def test_a_permanent_status_error_ends_the_run_with_the_reason(host, svc, fresh_emulator, status, code, why):
    first, second = running_with_a_waiter(host, svc, fresh_emulator)
    body = {"error": {"code": code, "message": f"{why}", "details": []}}
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "status": status, "body": body})
    host.fire_timer("poll_runs")
    run = svc.store.get("default", first.run_id)
    assert run.status == R.FAILED and run.error["http_status"] == status and run.error["code"] == code
    assert f"cannot be checked: BES status failed: HTTP {status} {code}: {why}" in run.history[-1]["reason"]
    assert svc.store.get("default", second.run_id).status == R.RUNNING  # the slot moved on


def test_a_cancel_that_fails_at_the_deadline_is_retried_until_the_jobs_sas_expire(host, svc, fresh_emulator):
    first, second = running_with_a_waiter(host, svc, fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "status": 503})
    fresh_emulator.admin("POST", "faults", {"route": "bes.cancel", "status": 503})
    # WHEN the deadline has passed but the job cannot be cancelled: it may still run, so it keeps the slot
    age(svc, first.run_id, svc.settings.job_timeout_minutes + 1)
    host.fire_timer("poll_runs")
    run = svc.store.get("default", first.run_id)
    assert run.status == R.RUNNING and run.last_check_error["operation"] == "BES cancel"
    assert svc.store.get("default", second.run_id).status == R.WAITING
    # WHEN its SAS have expired too (deadline + 30 minutes): the job can no longer touch our data
    age(svc, first.run_id, 30)
    host.fire_timer("poll_runs")
    run = svc.store.get("default", first.run_id)
    assert run.status == R.TIMED_OUT and "not cancelled" in run.history[-1]["reason"]
    assert "its access to the data has expired" in run.history[-1]["reason"]
    assert svc.store.get("default", second.run_id).status == R.RUNNING


# --- every message ends in the command log -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"type": "retrain", "version": 1, "reason": ' + b"9" * 5000 + b"}", "not UTF-8 JSON"),
        (json.dumps({"type": "retrain", "version": 1, "request_id": "abc\n"}).encode(), "request_id"),
        (json.dumps({"type": "deploy", "version": 1, "run_id": RUN + "\n"}).encode(), "run_id"),
        (json.dumps({"type": "rollback", "version": 1, "target": "classic\n"}).encode(), "target"),
        (json.dumps({"type": "retrain", "version": 1, "pipeline": "default\n"}).encode(), "pipeline"),
        (json.dumps({"type": "retrain", "version": 1, "blob": "./data.csv"}).encode(), "'.' or '..' segment"),
        (json.dumps({"type": "retrain", "version": 1, "blob": "x/./data.csv"}).encode(), "'.' or '..' segment"),
        (b'{"type": "retrain", "version": 1, "request_id": "a/b#c?"}', "request_id"),
    ],
)
def test_a_message_that_cannot_be_carried_out_is_recorded_and_consumed_never_lost(host, svc, raw, reason):
    send_raw(svc, raw)
    # WHEN the host delivers it
    [invocation] = host.pump_queues()
    # THEN the invocation succeeded (nothing to retry), the rejection is in the command log with the
    # reason, and nothing went to the poison queue
    assert invocation.ok, invocation.error
    [entry] = svc.commands.list()
    assert entry["status"] == REJECTED and reason in entry["reason"], entry["reason"]
    assert host.pump_queues() == [] and poison(svc) == []


# --- a wrong-shaped answer is a recorded, retried error -------------------------------------------

WRONG_SHAPES = {
    "ARM assets as a list": (
        "arm",
        "arm.get",
        {"status": 200, "body": {"properties": {"packageType": "Graph", "assets": [{"name": "x"}]}}},
    ),
    "classic Resources a number": ("classic", "classic.endpoint", {"status": 200, "body": {"Resources": 5}}),
    "an HTML page from a proxy": (
        "classic",
        "classic.endpoint",
        {"status": 200, "body": "<html>Bad gateway</html>", "content_type": "text/html"},
    ),
    "an ARM operation that is a string": ("arm", "arm.operation", {"status": 200, "body": '"Succeeded"'}),
}


def approved(host, svc, fresh_emulator) -> R.Run:
    upload_pair(svc, "data.csv")
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    host.fire_timer("poll_runs")
    run = the_run(svc, "data.csv")
    assert run.status == R.DEPLOYING
    return run


@pytest.mark.parametrize("shape", list(WRONG_SHAPES))
def test_a_wrong_shaped_answer_is_retried_and_the_deploy_completes_once_the_service_recovers(
    host, svc, fresh_emulator, shape
):
    target, route, fault = WRONG_SHAPES[shape]
    run = approved(host, svc, fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": route, **fault, "times": 2})
    # WHEN the deploy command is delivered while the service answers garbage, then after it recovers
    outcomes = [i.ok for _ in range(3) for i in host.pump_queues()]
    # THEN the bad answers were retries with the reason recorded, and the deploy completed
    assert outcomes == [False, False, True]
    run = svc.store.get("default", run.run_id)
    assert run.status == R.DEPLOYED and run.targets[target]["status"] == "Deployed"
    notes = " ".join(h.get("event", "") for h in run.history)
    assert "UnexpectedResponse" in notes or "unexpected answer" in notes


@pytest.mark.parametrize("shape", ["ARM assets as a list", "classic Resources a number"])
def test_a_service_that_never_answers_the_right_shape_ends_the_deploy_recorded(host, svc, fresh_emulator, shape):
    target, route, fault = WRONG_SHAPES[shape]
    run = approved(host, svc, fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": route, **fault})
    for _ in range(host.max_dequeue_count):
        host.pump_queues()
    # THEN the command failed for good with the reason, the run ended (not Deploying), and the message
    # is in the poison queue
    [entry] = [e for e in svc.commands.list() if e["type"] == "deploy"]
    assert entry["status"] == FAILED and "gave up after 5 deliveries" in entry["reason"]
    run = svc.store.get("default", run.run_id)
    assert run.status == R.PARTIALLY_DEPLOYED and run.targets[target]["status"] == "Failed"
    assert "unexpected answer" in run.targets[target]["reason"]
    assert len(poison(svc)) == 1


def test_an_unforeseen_exception_on_the_last_delivery_still_records_failed_on_the_command_and_the_run(
    host, svc, fresh_emulator, monkeypatch
):
    # A mock, because the fault cannot be produced for real: every client now checks what it reads, so
    # no answer makes the deploy raise outside the recorded errors. It stands for a bug.
    from shared import deploy

    run = approved(host, svc, fresh_emulator)

    def broken(*args, **kwargs):
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(deploy, "deploy_run", broken)
    for _ in range(host.max_dequeue_count):
        host.pump_queues()
    [entry] = [e for e in svc.commands.list() if e["type"] == "deploy"]
    assert entry["status"] == FAILED and "unexpected TypeError: 'int' object is not iterable" in entry["reason"]
    run = svc.store.get("default", run.run_id)
    assert run.status == R.FAILED
    assert all("unexpected TypeError" in t["reason"] for t in run.targets.values()), run.targets


# --- credentials go only to Azure ML hosts ---------------------------------------------------------


def test_a_jobs_url_on_the_metadata_address_fails_the_invocation_naming_the_setting(
    loop_env, host, svc, fresh_emulator, monkeypatch
):
    from shared import settings as settings_module
    from shared import workflow

    monkeypatch.setenv("BES_JOBS_URL", "https://169.254.169.254/workspaces/a/services/b/jobs")
    settings_module.get_settings.cache_clear()
    workflow.get_services.cache_clear()
    put_blob(loop_env, "data.csv", GOOD)
    [invocation] = host.scan_blobs()
    assert not invocation.ok and "Setting BES_JOBS_URL" in invocation.error and "link-local" in invocation.error
    assert fresh_emulator.admin("GET", "requests") == []


# --- a skewed clock blocks nobody -------------------------------------------------------------------


def test_a_lease_written_by_a_clock_five_hours_fast_lapses_on_time(svc, fresh_emulator):
    from shared import poll, workflow

    # GIVEN a submission an instance with a clock 5 h fast started and then died (its lease, by its
    # clock, lasts until 5 h 10 min from now)
    blob = svc.storage.blob_ref(*upload_pair(svc, "data.csv"))
    fast = R.utcnow() + dt.timedelta(hours=5)
    run = R.Run.for_blob("default", blob, "blob", "fast-instance", fast)
    run.attempts, run.lease_owner, run.lease_until = 1, "fast-instance", fast + workflow.LEASE
    svc.store.create(run)
    slot = svc.store.get_slot("default")
    slot.active_run = run.run_id
    svc.store.save_slot(slot)
    # WHEN a correct instance polls 11 minutes later (it cannot wait that long here: it says so with
    # its own clock, the only clock these functions read)
    later = R.utcnow() + dt.timedelta(minutes=11)
    poll.poll(svc, actor="timer-poll/correct", now=later)
    # THEN the lease counted from when storage received it, so it has lapsed and the run was started
    resumed = svc.store.get("default", run.run_id)
    assert resumed.status == R.RUNNING and resumed.attempts == 2
    assert [j["id"] for j in jobs(fresh_emulator)] == [resumed.job_id]


def test_a_command_claim_from_a_fast_clock_lapses_on_time(svc):
    fields = {"message_id": "m-1", "raw": "{}", "by": "queue/m-1", "type": "retrain"}
    fast = R.utcnow() + dt.timedelta(hours=5)
    assert svc.commands.claim("req:x", fields, dt.timedelta(minutes=10), fast)[0] == "claimed"
    other = {**fields, "message_id": "m-2"}
    assert svc.commands.claim("req:x", other, dt.timedelta(minutes=10), R.utcnow())[0] == "busy"
    later = R.utcnow() + dt.timedelta(minutes=11)
    assert svc.commands.claim("req:x", other, dt.timedelta(minutes=10), later)[0] == "claimed"


def test_two_uploads_in_one_second_are_ordered_by_storage_not_by_a_skewed_clock(svc, fresh_emulator):
    from shared import workflow

    # GIVEN two uploads in the same second; the first recorded by an instance whose clock is 5 h fast
    for _ in range(10):
        first, second = upload_pair(svc, "a.csv"), upload_pair(svc, "b.csv")
        a, b = svc.storage.blob_ref(*first), svc.storage.blob_ref(*second)
        if a.last_modified == b.last_modified:
            break
    else:
        pytest.skip("could not upload twice within one second")
    fast = R.utcnow() + dt.timedelta(hours=5)
    fresh_emulator.admin("POST", "config", {"job_seconds": 60})
    workflow.start_run_for_blob(svc, a, source="blob", actor="fast-instance", now=fast)
    # WHEN the second upload is recorded by a correct instance
    outcome = workflow.start_run_for_blob(svc, b, source="blob", actor="correct-instance")
    # THEN it is the newer data (it arrived later): it waits, it is not superseded by the older one
    assert outcome.action == "waiting", outcome


def upload_pair(svc, name: str) -> tuple[str, str]:
    container = svc.settings.training_container
    svc.storage.ensure_container(container)
    svc.storage.blobs.get_blob_client(container, name).upload_blob(GOOD, overwrite=True)
    return container, name


def test_a_lease_is_capped_by_when_storage_received_it():
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
    length = dt.timedelta(minutes=10)
    assert R.lease_lapsed(None, None, length, now)
    assert not R.lease_lapsed(now + length, None, length, now)
    # written by a clock 5 h fast: it lasts its length from when storage took it, not 5 h more
    assert not R.lease_lapsed(now + dt.timedelta(hours=5), now - dt.timedelta(minutes=9), length, now)
    assert R.lease_lapsed(now + dt.timedelta(hours=5), now - dt.timedelta(minutes=11), length, now)
    # a shorter lease stays as short as it was
    assert R.lease_lapsed(now - dt.timedelta(seconds=1), now, length, now)
