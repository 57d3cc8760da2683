"""Starting a run for new data: idempotent, coalescing, least privilege, every failure recorded."""

import datetime as dt
import itertools
import json
import logging
import threading
import time
from urllib.parse import parse_qs

import pytest

from shared import runs as R
from shared import submission, workflow
from shared.bes import SAS_MARGIN, BesClient
from shared.http import make_session
from shared.store import run_entity
from tests.conftest import API_KEY, jobs, upload


def start(svc, blob, actor="blob-trigger/test"):
    return workflow.start_run_for_blob(svc, blob, source="blob", actor=actor)


def run_of(svc, run_id):
    return svc.store.get(svc.settings.pipeline, run_id)


def fast_bes(svc, retries=1):
    """The same client with a short retry budget, so exhausting retries takes milliseconds."""
    svc.bes = BesClient(
        svc.settings.bes_jobs_url,
        API_KEY,
        timeout=5,
        session=make_session(retries=retries, backoff=0.01, max_retry_after=1),
    )
    return svc


def test_an_upload_records_a_run_and_starts_one_bes_job(svc, fresh_emulator):
    # GIVEN new training data
    blob = upload(svc, "census.csv")
    # WHEN the trigger delivers it
    outcome = start(svc, blob)
    # THEN one run is Running with its job id, its blob identity and a history of every move
    assert outcome.action == "started"
    run = run_of(svc, outcome.run_id)
    assert run.status == R.RUNNING
    assert (run.blob_name, run.blob_etag, run.blob_size) == ("census.csv", blob.etag, blob.size)
    assert [h.get("to") for h in run.history] == [R.REQUESTED, R.SUBMITTED, R.RUNNING]
    assert all(h["by"] == "blob-trigger/test" and h["at"] for h in run.history)
    [job] = jobs(fresh_emulator)
    assert job["id"] == run.job_id
    assert job["status"] in ("Running", "Finished")
    assert run.outputs["model"].endswith(f"/{run.run_id}/model.ilearner")


def test_bes_gets_blob_scoped_sas_references_and_never_the_account_key(svc, fresh_emulator):
    blob = upload(svc, "census.csv")
    start(svc, blob)
    [job] = jobs(fresh_emulator)
    request = job["request"]
    assert "AccountKey" not in json.dumps(request)
    source = request["Inputs"]["input1"]
    assert source["ConnectionString"] is None
    assert source["RelativeLocation"] == f"{svc.settings.training_container}/census.csv"
    sas = parse_qs(source["SasBlobToken"].lstrip("?"))
    assert sas["sp"] == ["r"] and sas["sr"] == ["b"]  # read-only, this one blob
    for name in ("output1", "output2"):
        out = parse_qs(request["Outputs"][name]["SasBlobToken"].lstrip("?"))
        assert out["sp"] == ["cw"] and out["sr"] == ["b"]
    assert request["Outputs"]["output1"]["RelativeLocation"].endswith(".ilearner")
    assert request["Outputs"]["output2"]["RelativeLocation"].endswith(".csv")
    # every SAS expires with the job's allowed time plus the margin, not a minute later
    run = next(iter(svc.store.list_runs(svc.settings.pipeline)))
    expected = run.submitted_at + dt.timedelta(minutes=svc.settings.job_timeout_minutes) + SAS_MARGIN
    for ref in (source, *request["Outputs"].values()):
        expiry = dt.datetime.fromisoformat(parse_qs(ref["SasBlobToken"].lstrip("?"))["se"][0].replace("Z", "+00:00"))
        assert abs(expiry - expected) < dt.timedelta(seconds=5), (expiry, expected)


def test_the_same_blob_delivered_twice_yields_one_run_and_one_job(svc, fresh_emulator):
    blob = upload(svc, "census.csv")
    first, second = start(svc, blob), start(svc, blob, actor="blob-trigger/again")
    assert first.run_id == second.run_id
    assert second.action == "duplicate"
    assert len(jobs(fresh_emulator)) == 1
    assert len(list(svc.store.list_runs(svc.settings.pipeline))) == 1


def test_concurrent_deliveries_of_one_blob_yield_one_job(svc, fresh_emulator):
    # GIVEN one blob delivered by eight instances at the same moment
    blob = upload(svc, "census.csv")
    barrier = threading.Barrier(8)
    outcomes = []

    def deliver(i):
        barrier.wait()
        outcomes.append(start(svc, blob, actor=f"instance-{i}"))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN exactly one started a job; the others saw it in progress or done
    assert sorted(o.action for o in outcomes).count("started") == 1
    assert {o.action for o in outcomes} <= {"started", "duplicate", "in_progress"}
    assert len(jobs(fresh_emulator)) == 1
    assert run_of(svc, outcomes[0].run_id).status == R.RUNNING


def test_a_changed_blob_is_new_data_and_waits_for_the_active_run(svc, fresh_emulator):
    first = start(svc, upload(svc, "census.csv"))
    changed = start(svc, upload(svc, "census.csv", b"age,label\n" + b"1,0\n2,1\n" * 20))
    assert changed.run_id != first.run_id
    assert changed.action == "waiting"
    assert len(jobs(fresh_emulator)) == 1


def test_uploads_during_a_run_coalesce_to_the_newest_and_it_starts_when_the_run_ends(svc, fresh_emulator):
    # GIVEN a run in progress
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    active = start(svc, upload(svc, "day-0.csv"))
    # WHEN four more uploads arrive while it runs (within one second: arrival order decides)
    later = [start(svc, upload(svc, f"day-{day}.csv")) for day in range(1, 5)]
    # THEN only the newest waits; the older ones are recorded as superseded by the one after them
    assert [o.action for o in later] == ["waiting"] * 4
    statuses = [run_of(svc, o.run_id).status for o in later]
    assert statuses == [R.SUPERSEDED, R.SUPERSEDED, R.SUPERSEDED, R.WAITING]
    for older, newer in itertools.pairwise(later):
        assert run_of(svc, older.run_id).superseded_by == newer.run_id
    assert len(jobs(fresh_emulator)) == 1
    # WHEN the active run ends
    workflow.cancel_run(svc, active.run_id, actor="operator", reason="test: end the active run")
    # THEN the newest waiting upload starts, and nothing else does
    newest = run_of(svc, later[-1].run_id)
    assert newest.status == R.RUNNING
    assert any("promoted" in h.get("reason", "") for h in newest.history)
    assert {j["status"] for j in jobs(fresh_emulator) if j["id"] != newest.job_id} == {"Cancelled"}
    assert len(jobs(fresh_emulator)) == 2
    slot = svc.store.get_slot(svc.settings.pipeline)
    assert (slot.active_run, slot.waiting_run) == (newest.run_id, None)


def promotion_in_flight(svc, fresh_emulator):
    """A waiting upload the instant after the slot names it and before it is started (what an instance
    passing the slot on looks like to everyone else)."""
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    active = start(svc, upload(svc, "day-0.csv"))
    waiter = start(svc, upload(svc, "day-1.csv"))
    workflow.cancel_run(svc, active.run_id, actor="operator", reason="test")  # frees and promotes...
    waiter_run = run_of(svc, waiter.run_id)
    fresh_emulator.admin("POST", "reset")  # ...so rebuild that moment by hand, with no job started:
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    waiter_run.status, waiter_run.job_id, waiter_run.lease_owner, waiter_run.lease_until = R.WAITING, None, None, None
    waiter_run.history = [h for h in waiter_run.history if h.get("to") in (R.REQUESTED, R.WAITING)]
    svc.store.save(waiter_run)
    slot = svc.store.get_slot(svc.settings.pipeline)
    slot.active_run, slot.waiting_run, slot.waiting_key = waiter.run_id, None, None
    svc.store.save_slot(slot)
    return waiter.run_id


def test_an_upload_during_a_promotion_waits_instead_of_taking_the_slot(svc, fresh_emulator):
    # Found by the chaos suite: the upload took the Waiting run in the slot for a leftover, freed the
    # slot and started itself, then the promotion started the waiter too: two trainings at once.
    promoted = promotion_in_flight(svc, fresh_emulator)
    newer = start(svc, upload(svc, "day-2.csv"))
    assert newer.action == "waiting"
    assert submission.promote(svc, "default", promoted, "poll/test", "promoted: test").status == R.RUNNING
    slot = svc.store.get_slot(svc.settings.pipeline)
    assert (slot.active_run, slot.waiting_run) == (promoted, newer.run_id)
    assert len(jobs(fresh_emulator)) == 1


def test_a_poll_leaves_a_promotion_in_flight_alone_and_finishes_one_cut_short(svc, fresh_emulator):
    from shared import poll

    promoted = promotion_in_flight(svc, fresh_emulator)
    since = svc.store.get_slot(svc.settings.pipeline).updated_at
    now = R.utcnow()
    assert poll.poll_run(svc, "default", promoted, actor="poll/1", now=now, slot_since=since).action == "in_progress"
    assert run_of(svc, promoted).status == R.WAITING and jobs(fresh_emulator) == []
    # The promoting instance died: once its claim would have lapsed, a poll starts the run.
    later = since + workflow.LEASE + dt.timedelta(seconds=1)
    assert poll.poll_run(svc, "default", promoted, actor="poll/2", now=later, slot_since=since).status == R.RUNNING
    assert len(jobs(fresh_emulator)) == 1


def test_an_older_upload_delivered_late_is_superseded_by_the_active_run(svc, fresh_emulator):
    # Upload times have whole-second resolution: a second apart, the older one is known to be older.
    old_blob = upload(svc, "old.csv")
    time.sleep(1.05)
    new = start(svc, upload(svc, "new.csv"))
    late = start(svc, old_blob)
    assert late.action == "superseded"
    assert run_of(svc, late.run_id).superseded_by == new.run_id


@pytest.mark.parametrize(
    "name",
    [
        "with space.csv",
        "ünïcødé-データ.csv",
        "hash#tag.csv",
        "what?.csv",
        "100%.csv",
        "folder/sub folder/x.csv",
        "a+b=c&d.csv",
    ],
)
def test_odd_blob_names_train(svc, fresh_emulator, name):
    outcome = start(svc, upload(svc, name))
    run = run_of(svc, outcome.run_id)
    assert run.status == R.RUNNING and run.blob_name == name
    [job] = jobs(fresh_emulator)
    assert job["request"]["Inputs"]["input1"]["RelativeLocation"] == f"{svc.settings.training_container}/{name}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and jobs(fresh_emulator)[0]["status"] == "Running":
        time.sleep(0.1)
    assert jobs(fresh_emulator)[0]["status"] == "Finished", jobs(fresh_emulator)[0]["details"]


@pytest.mark.parametrize(
    ("name", "data", "why"), [("notes.txt", b"hello", "is not training data"), ("empty.csv", b"", "is empty")]
)
def test_unusable_blobs_are_recorded_as_invalid_without_calling_bes(svc, fresh_emulator, name, data, why):
    outcome = start(svc, upload(svc, name, data))
    run = run_of(svc, outcome.run_id)
    assert (outcome.action, run.status) == ("invalid", R.INVALID)
    assert why in run.error["message"] and run.error["code"] == "InvalidTrainingData"
    assert jobs(fresh_emulator) == []
    assert svc.store.get_slot(svc.settings.pipeline).active_run is None


def test_a_permanent_bes_error_fails_the_run_with_the_service_codes_and_frees_the_slot(svc, fresh_emulator):
    # GIVEN a key BES rejects
    svc.bes = BesClient(svc.settings.bes_jobs_url, "rotated-key-" + "z" * 30, timeout=5)
    outcome = start(svc, upload(svc, "census.csv"))
    run = run_of(svc, outcome.run_id)
    assert (outcome.action, run.status) == ("failed", R.FAILED)
    assert run.error["http_status"] == 401
    assert run.error["code"] == "Unauthorized" and run.error["detail_codes"] == ["ScoreRequestUnauthorized"]
    assert "rotated-key" not in json.dumps(run_entity(run), default=str)
    assert svc.store.get_slot(svc.settings.pipeline).active_run is None


def test_transient_errors_are_retried_by_redelivery_then_the_run_fails_after_max_attempts(svc, fresh_emulator):
    # GIVEN BES answers 503 to every submit
    fast_bes(svc)
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 503})
    blob = upload(svc, "census.csv")
    # WHEN the trigger delivers the blob; each failure raises so the host delivers it again
    for attempt in range(1, svc.settings.max_attempts):
        with pytest.raises(workflow.RetryLater):
            start(svc, blob, actor=f"delivery-{attempt}")
        run = run_of(svc, R.run_id_for(svc.settings.pipeline, blob))
        assert (run.status, run.attempts) == (R.REQUESTED, attempt)
        assert run.error["http_status"] == 503 and run.error["transient"]
    final = start(svc, blob, actor="delivery-last")
    # THEN the last attempt records the failure instead of raising, and the slot is free again
    run = run_of(svc, final.run_id)
    assert (final.action, run.status, run.attempts) == ("failed", R.FAILED, svc.settings.max_attempts)
    assert "gave up after" in run.history[-1]["reason"]
    assert svc.store.get_slot(svc.settings.pipeline).active_run is None


def test_an_interrupted_start_is_resumed_by_the_next_delivery_without_a_second_job(svc, fresh_emulator):
    # GIVEN the connection drops on the start: the job is created but not started (a POST is not
    # repeated by the HTTP layer, so the delivery fails)
    fast_bes(svc)
    fresh_emulator.admin("POST", "faults", {"route": "bes.start", "drop": True, "times": 1})
    blob = upload(svc, "census.csv")
    with pytest.raises(workflow.RetryLater):
        start(svc, blob)
    run = run_of(svc, R.run_id_for(svc.settings.pipeline, blob))
    assert run.status == R.SUBMITTED and run.job_id
    # WHEN the host delivers the blob again
    outcome = start(svc, blob, actor="redelivery")
    # THEN the same job is started; no second job exists
    assert outcome.action == "started"
    assert [j["id"] for j in jobs(fresh_emulator)] == [run.job_id]


def test_a_start_that_already_happened_is_recognised(svc, fresh_emulator):
    # GIVEN the job was started but the answer was lost (start is answered 200 only after the retry)
    fast_bes(svc)
    blob = upload(svc, "census.csv")
    svc.storage.ensure_container(svc.settings.models_container)  # else the job fails within 0.3 s
    run = R.Run.for_blob(svc.settings.pipeline, blob, "blob", "earlier", R.utcnow())
    request, outputs = svc.trainer(run.pipeline).request(run, R.utcnow())
    job_id = svc.bes.submit(request)
    svc.bes.start(job_id)
    run.transition(R.SUBMITTED, by="earlier", reason="created", job_id=job_id, outputs=outputs)
    run.attempts = 1
    svc.store.create(run)
    slot = svc.store.get_slot(svc.settings.pipeline)
    slot.active_run = run.run_id
    svc.store.save_slot(slot)
    # WHEN a redelivery resumes it and BES answers CannotStartJob
    outcome = start(svc, blob, actor="redelivery")
    # THEN the run is Running on the one job
    assert outcome.action == "started"
    assert run_of(svc, run.run_id).status == R.RUNNING
    assert len(jobs(fresh_emulator)) == 1


def test_no_secret_reaches_the_log_or_the_table(svc, fresh_emulator, caplog):
    caplog.set_level(logging.DEBUG)
    fast_bes(svc)
    fresh_emulator.admin(
        "POST",
        "faults",
        {
            "route": "bes.submit",
            "status": 400,
            "times": 1,
            "body": {"error": {"code": "BadArgument", "message": "bad sig=abcdef123456", "details": []}},
        },
    )
    start(svc, upload(svc, "a.csv"))
    start(svc, upload(svc, "b.csv"))
    stored = json.dumps([run_entity(r) for r in svc.store.list_runs("default")], default=str)
    for text in (caplog.text, stored):
        assert API_KEY not in text
        assert "AccountKey=" not in text
        assert "sig=abcdef" not in text
    assert "sig=REDACTED" in stored


def test_a_job_whose_submit_answer_was_lost_never_runs_and_the_retry_makes_the_only_job_that_does(svc, fresh_emulator):
    # GIVEN BES creates the job but the answer never arrives (the connection drops after the work)
    fast_bes(svc)
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "drop": True, "after": True, "times": 1})
    blob = upload(svc, "census.csv")
    # WHEN the delivery fails (a POST is not repeated: it may have created a job) and is redelivered
    with pytest.raises(workflow.RetryLater):
        start(svc, blob)
    outcome = start(svc, blob, actor="redelivery")
    # THEN the run trains on the job whose id it recorded; the orphan, whose id nobody learnt, stays
    # NotStarted: BES starts a job only when asked to, and BES cannot list jobs, so it cannot be found
    run = run_of(svc, outcome.run_id)
    assert (outcome.action, run.status, run.attempts) == ("started", R.RUNNING, 2)
    [orphan] = [j for j in jobs(fresh_emulator) if j["id"] != run.job_id]
    assert orphan["status"] == "NotStarted" and orphan["started"] is None
    assert [j["id"] for j in jobs(fresh_emulator) if j["started"]] == [run.job_id]


def test_an_upload_that_heals_the_slot_is_not_failed_by_the_run_it_promotes(svc, fresh_emulator):
    # Found by the chaos suite (seed 28): the slot still named a run that had ended (a crash between
    # ending it and moving on); the next upload healed the slot by promoting the waiter, whose BES
    # submit failed — and that failure escaped the upload's own delivery, leaving its run Requested
    # with a dead invocation's lease, outside the slot, where nothing would ever move it on.
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    ended = start(svc, upload(svc, "day-0.csv"))
    waiter = start(svc, upload(svc, "day-1.csv"))
    run = run_of(svc, ended.run_id)
    run.transition(R.FAILED, by="test", reason="ended; the instance died before moving the slot on")
    svc.store.save(run)
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 503, "times": 4})
    time.sleep(1.05)  # upload times have whole-second resolution
    # WHEN a newer upload arrives: it heals the slot, and the waiter's submission fails (transient)
    newer = start(svc, upload(svc, "day-2.csv"))
    # THEN the upload itself is recorded and waits; the waiter holds the slot with its failure noted
    assert newer.action == "waiting", newer
    slot = svc.store.get_slot(svc.settings.pipeline)
    assert (slot.active_run, slot.waiting_run) == (waiter.run_id, newer.run_id)
    promoted = run_of(svc, waiter.run_id)
    assert promoted.status == R.REQUESTED and promoted.lease_owner is None
    assert "attempt 1 failed" in promoted.history[-1]["event"]


def test_a_delivery_that_fails_after_recording_its_run_gives_up_its_lease(svc, fresh_emulator, monkeypatch):
    # A mock, because the fault cannot be produced on demand: the pipeline's slot so contended that
    # every conditional write of it lost (StaleError after the bounded retries).
    from shared import slot

    def contended(*args, **kwargs):
        raise workflow.StaleError("pipeline default: slot: gave up after 20 conflicting updates")

    blob = upload(svc, "census.csv")
    monkeypatch.setattr(slot, "admit", contended)
    with pytest.raises(workflow.StaleError):
        start(svc, blob)
    run = run_of(svc, R.run_id_for(svc.settings.pipeline, blob))
    assert run.status == R.REQUESTED and run.lease_owner is None  # released, not held for ten minutes
    monkeypatch.undo()
    # WHEN the host delivers the blob again, at once: it resumes the run instead of waiting out a lease
    assert start(svc, blob, actor="redelivery").action == "started"
