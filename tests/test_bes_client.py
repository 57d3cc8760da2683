"""The BES client against the emulator over HTTP: the protocol, error classes and retries."""

import itertools
import time

import pytest

from shared.bes import BesClient, BesError, parse_status
from shared.http import make_session
from shared.runs import Run, utcnow
from tests.conftest import API_KEY, upload


def client(emulator, key=API_KEY, retries=3):
    return BesClient(
        emulator.bes_jobs_url, key, timeout=10, session=make_session(retries=retries, backoff=0.05, max_retry_after=2)
    )


def request_for(svc, name="data.csv", data=None):
    blob = upload(svc, name) if data is None else upload(svc, name, data)
    run = Run.for_blob(svc.settings.pipeline, blob, "test", "test", utcnow())
    svc.storage.ensure_container(svc.settings.models_container)
    return svc.trainer(run.pipeline).request(run, utcnow())


def wait_for(bes, job_id, statuses=("Finished", "Failed", "Cancelled"), timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = bes.status(job_id)
        if status.status in statuses:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses}")


def test_submit_start_and_finish_a_job(svc, fresh_emulator):
    # GIVEN a training blob and a BES client
    bes = client(fresh_emulator)
    request, outputs = request_for(svc)
    # WHEN a job is submitted
    job_id = bes.submit(request)
    # THEN it is NotStarted until started, then Running, then Finished with results for both outputs
    assert len(job_id) == 32
    assert bes.status(job_id).status == "NotStarted"
    assert bes.status(job_id).results is None
    bes.start(job_id)
    assert bes.status(job_id).status in ("Running", "Finished")
    done = wait_for(bes, job_id)
    assert done.status == "Finished", done.details
    assert set(done.results) == {"output1", "output2"}
    assert done.results["output1"]["RelativeLocation"] == outputs["model"]
    models = svc.storage.blobs.get_container_client(svc.settings.models_container)
    names = {b.name for b in models.list_blobs()}
    assert {o.split("/", 1)[1] for o in outputs.values()} <= names


def test_status_accepts_legacy_integer_status_codes(svc, fresh_emulator):
    fresh_emulator.admin("POST", "config", {"legacy_status_codes": True})
    bes = client(fresh_emulator)
    job_id = bes.submit(request_for(svc)[0])
    assert bes.status(job_id).status == "NotStarted"
    assert bes.status(job_id).raw_status == 0
    bes.start(job_id)
    assert wait_for(bes, job_id).status == "Finished"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"StatusCode": "Finished", "Results": {}, "Details": None}, "Finished"),
        ({"Status Code": "Running", "Results": None}, "Running"),  # the docs' typo
        ({"statusCode": 3}, "Cancelled"),
        ({"StatusCode": "2"}, "Failed"),
        ({"StatusCode": "Canceled"}, "Cancelled"),  # one L, as one public client spells it
    ],
)
def test_status_parsing_is_tolerant(body, status):
    assert parse_status(body).status == status


@pytest.mark.parametrize("body", [{"StatusCode": "Exploded"}, {"StatusCode": 7}, {"Results": None}, ["Finished"]])
def test_an_unknown_status_is_a_transient_error_not_a_guess(body):
    with pytest.raises(BesError) as caught:
        parse_status(body)
    assert caught.value.transient


def test_wrong_key_is_a_permanent_401_with_the_documented_codes(svc, fresh_emulator):
    bes = client(fresh_emulator, key="wrong-key-" + "y" * 20)
    with pytest.raises(BesError) as caught:
        bes.submit(request_for(svc)[0])
    error = caught.value
    assert (error.http_status, error.code, error.detail_codes) == (401, "Unauthorized", ("ScoreRequestUnauthorized",))
    assert not error.transient
    assert "wrong-key" not in str(error)
    submits = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.submit"]
    assert len(submits) == 1  # a 4xx is never retried


def test_bad_output_extension_reports_detail_code_and_message(svc, fresh_emulator):
    request, _ = request_for(svc)
    request["Outputs"]["output1"]["RelativeLocation"] = request["Outputs"]["output1"]["RelativeLocation"].replace(
        ".ilearner", ".csv"
    )
    with pytest.raises(BesError) as caught:
        client(fresh_emulator).submit(request)
    assert caught.value.code == "BadArgument"
    assert caught.value.detail_codes == ("InvalidBlobExtension",)
    assert "invalid or missing file extension" in caught.value.message
    record = caught.value.as_record()
    assert record["detail_codes"] == ["InvalidBlobExtension"] and record["http_status"] == 400


def test_503_with_retry_after_is_retried_after_the_requested_delay(svc, fresh_emulator):
    # GIVEN the service answers 503 with Retry-After: 1 twice
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 503, "retry_after": 1, "times": 2})
    # WHEN a job is submitted
    job_id = client(fresh_emulator).submit(request_for(svc)[0])
    # THEN the third attempt succeeds, each one at least a second after the previous
    assert job_id
    submits = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.submit"]
    assert [r["status"] for r in submits] == [503, 503, 200]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(submits)]
    assert all(gap >= 0.95 for gap in gaps), gaps


def test_429_and_504_are_retried(svc, fresh_emulator):
    bes = client(fresh_emulator)
    job_id = bes.submit(request_for(svc)[0])
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "status": 429, "times": 1})
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "status": 504, "times": 1})
    assert bes.status(job_id).status == "NotStarted"
    statuses = [r["status"] for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.status"]
    assert statuses == [429, 504, 200]


def test_a_dropped_connection_is_retried_for_a_read_but_a_post_is_never_repeated(svc, fresh_emulator):
    bes = client(fresh_emulator)
    job_id = bes.submit(request_for(svc)[0])
    # GIVEN a status read whose connection drops: repeating a GET is harmless
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "drop": True, "times": 1})
    assert bes.status(job_id).status == "NotStarted"
    # WHEN a POST's connection drops after the service received it (it may have created a job)
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "drop": True, "times": 1})
    with pytest.raises(BesError) as caught:
        bes.submit(request_for(svc)[0])
    # THEN it is not sent again (a second job would be an orphan nobody can find): the caller records it
    assert caught.value.transient and caught.value.code == "ConnectionError"
    log = fresh_emulator.admin("GET", "requests")
    assert [r["status"] for r in log if r["route"] == "bes.status"] == ["dropped", 200]
    assert [r["status"] for r in log if r["route"] == "bes.submit"] == [200, "dropped"]


def test_a_post_the_service_refused_unprocessed_is_retried(svc, fresh_emulator):
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 429, "times": 1})
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 504, "times": 1})
    bes = client(fresh_emulator)
    # 429 says "not processed": repeated; 504 may have been processed: surfaced, not repeated
    with pytest.raises(BesError) as caught:
        bes.submit(request_for(svc)[0])
    assert caught.value.http_status == 504 and caught.value.transient
    assert [r["status"] for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.submit"] == [429, 504]


def test_exhausted_retries_surface_as_a_transient_error_with_the_service_codes(svc, fresh_emulator):
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 503})
    with pytest.raises(BesError) as caught:
        client(fresh_emulator, retries=2).submit(request_for(svc)[0])
    assert caught.value.transient
    assert (caught.value.http_status, caught.value.code) == (503, "ServiceUnavailable")
    assert caught.value.detail_codes == ("RequestThrottled",)
    submits = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.submit"]
    assert len(submits) == 3


def test_an_unreachable_service_is_a_transient_connection_error():
    bes = BesClient(
        "http://127.0.0.1:9/workspaces/a/services/b/jobs",
        API_KEY,
        timeout=2,
        session=make_session(retries=1, backoff=0.01),
    )
    with pytest.raises(BesError) as caught:
        bes.status("0" * 32)
    assert caught.value.transient and caught.value.code == "ConnectionError"
    assert API_KEY not in str(caught.value)


def test_second_start_is_cannot_start_job(svc, fresh_emulator):
    bes = client(fresh_emulator)
    job_id = bes.submit(request_for(svc)[0])
    bes.start(job_id)
    with pytest.raises(BesError) as caught:
        bes.start(job_id)
    assert (caught.value.code, caught.value.detail_codes) == ("InvalidOperation", ("CannotStartJob",))


def test_cancel_marks_a_running_job_cancelled_and_its_outputs_are_not_written(svc, fresh_emulator):
    fresh_emulator.admin("POST", "config", {"job_seconds": 5})
    bes = client(fresh_emulator)
    request, _outputs = request_for(svc)
    job_id = bes.submit(request)
    bes.start(job_id)
    bes.cancel(job_id)
    assert bes.status(job_id).status == "Cancelled"
    models = svc.storage.blobs.get_container_client(svc.settings.models_container)
    assert list(models.list_blobs()) == []


def test_an_unknown_job_is_404_not_found(fresh_emulator):
    with pytest.raises(BesError) as caught:
        client(fresh_emulator).status("f" * 32)
    assert (caught.value.http_status, caught.value.code, caught.value.transient) == (404, "NotFound", False)


def test_a_slow_answer_past_the_read_timeout_is_abandoned_and_retried(svc, fresh_emulator):
    # GIVEN a client with a 1 s read timeout and a service whose first status answer takes 2 s
    bes = BesClient(
        fresh_emulator.bes_jobs_url,
        API_KEY,
        timeout=1,
        session=make_session(retries=2, backoff=0.01, max_retry_after=1),
    )
    job_id = bes.submit(request_for(svc)[0])
    fresh_emulator.admin("POST", "faults", {"route": "bes.status", "delay": 2, "times": 1})
    started = time.monotonic()
    # WHEN the status is read
    status = bes.status(job_id)
    # THEN the slow attempt was given up after the timeout and the retry answered
    assert status.status == "NotStarted"
    assert 1 <= time.monotonic() - started < 2
    time.sleep(1.2)  # let the slow request finish so the log is complete
    assert len([r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "bes.status"]) == 2
