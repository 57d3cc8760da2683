"""Azure ML (v2) as a trainer, through the registered functions against Azurite and the emulator: a
v2 pipeline (Command job or batch-endpoint pipeline) beside a BES one, with the same guarantees."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import requests

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import runs as R
from tests.test_emulator_predictive import token
from tests.test_function_app import put_blob

GOOD = sample_data.generate(800, seed=31, label_noise=0.1).encode()
BAD = sample_data.generate(800, seed=5, label_noise=0.5).encode()  # labels are noise: AUC near 0.5
JOB = {
    "command": "python train.py --data ${{inputs.training_data}} --model ${{outputs.model}}",
    "environmentId": "azureml:sklearn-env:1",
    "computeId": "cpu-cluster",
}


def v2_trainer(emulator, **fields) -> dict:
    trainer = {
        "kind": "azureml",
        "workspace": emulator.info["v2_workspace"],
        "datastore": "autopilot_training",
        "model_name": "census",
        "management_url": emulator.url,
        **fields,
    }
    return {k: v for k, v in trainer.items() if v is not None}


def world_env(app_env, emulator, *, trainer: dict, gate: dict | None = None, **extra) -> dict:
    pipelines = [
        {"name": "census", "blob_prefix": "census/", "trainer": trainer, "gate": gate or {"metric": "AUC", "min": 0.6}},
        {
            "name": "churn",
            "blob_prefix": "churn/",
            "trainer": {"kind": "bes", "jobs_url": app_env["BES_JOBS_URL"], "api_key_setting": "CHURN_BES_KEY"},
            "gate": {"metric": "AUC"},
        },
    ]
    flat = {k: v for k, v in app_env.items() if k not in ("BES_JOBS_URL", "BES_API_KEY")}
    return {**flat, "PIPELINES": json.dumps(pipelines), "CHURN_BES_KEY": app_env["BES_API_KEY"], **extra}


def v2_host(env: dict, emulator, monkeypatch, hosts: list):
    """The app on ``env`` (a v2 world: no flat BES settings), the emulator's ``autopilot_training``
    datastore on its training container, and a local host (added to ``hosts``, for stopping)."""
    for name in ("BES_JOBS_URL", "BES_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    emulator.admin("POST", "v2/datastores", {"name": "autopilot_training", "container": env["TRAINING_CONTAINER"]})
    host = LocalHost(function_app.app, env, visibility_timeout=0)
    hosts.append(host)
    from shared.workflow import get_services

    return env, host, get_services()


@pytest.fixture
def make_world(app_env, fresh_emulator, monkeypatch):
    hosts: list = []

    def make(trainer: dict, **kwargs):
        env = world_env(app_env, fresh_emulator, trainer=trainer, POLL_SCHEDULE="*/1 * * * * *", **kwargs)
        return v2_host(env, fresh_emulator, monkeypatch, hosts)

    yield make
    for host in hosts:
        host.stop()


def settle_until(host, svc, pipeline: str, statuses, timeout: float = 30, blob: str | None = None) -> R.Run:
    """Run the poll and the queue until the pipeline's run (of ``blob``, else its newest) is in ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.fire_timer("poll_runs")
        host.pump_queues()
        runs = [r for r in svc.store.list_runs(pipeline) if blob is None or r.blob_name == blob]
        if runs and runs[0].status in statuses:
            return runs[0]
        time.sleep(0.1)
    raise AssertionError(f"{pipeline}: {[(r.run_id, r.status) for r in svc.store.list_runs(pipeline)]}")


def v2_jobs(emulator) -> list[dict]:
    return emulator.admin("GET", "v2/jobs")


@pytest.mark.parametrize("mode", ["job", "batch_endpoint"])
def test_a_v2_pipeline_trains_beside_a_bes_one_and_is_judged_on_its_mlflow_metrics(make_world, fresh_emulator, mode):
    trainer = (
        v2_trainer(fresh_emulator, job=JOB)
        if mode == "job"
        else v2_trainer(fresh_emulator, batch_endpoint="retrain-census")
    )
    env, host, svc = make_world(trainer)
    put_blob(env, "census/2026-12.csv", GOOD)
    put_blob(env, "churn/2026-12.csv", GOOD)
    host.scan_blobs()
    census = settle_until(host, svc, "census", (R.FINISHED, R.FAILED, R.REJECTED))
    churn = settle_until(host, svc, "churn", (R.FINISHED, R.FAILED, R.REJECTED))
    assert census.status == R.FINISHED, census.history
    assert churn.status == R.FINISHED  # the BES pipeline beside it, untouched
    [job] = v2_jobs(fresh_emulator)
    assert job["name"] == census.job_id and job["kind"] == ("command" if mode == "job" else "pipeline")
    assert 0.6 < census.metrics["AUC"] <= 1
    # the job trained on the upload, through the datastore: no SAS, no key in what was sent
    uri = job["properties"]["inputs"]["training_data"]["uri"]
    assert uri == "azureml://datastores/autopilot_training/paths/census/2026-12.csv"
    assert "sig=" not in json.dumps(job["properties"]) and env["AzureWebJobsStorage"] not in json.dumps(job)
    # the model is registered as a version of model_name, derived from the run, with its provenance
    [version] = fresh_emulator.admin("GET", "v2/models")
    assert version["id"].endswith(f"/models/census/versions/{census.run_id.lower()}")
    assert version["properties"]["modelUri"] == f"azureml://jobs/{census.job_id}/outputs/model/paths/"
    assert version["properties"]["modelType"] == "mlflow_model" and version["properties"]["jobName"] == census.job_id
    tags = version["properties"]["tags"]
    assert (tags["autopilot.run"], tags["autopilot.metric"]) == (census.run_id, "AUC")
    assert float(tags["autopilot.value"]) == pytest.approx(census.metrics["AUC"], abs=1e-6)
    assert census.model == {"name": "census", "version": census.run_id.lower(), "id": version["id"]}
    from shared import status

    assert status.get_run(svc, census.run_id)["model"]["id"] == version["id"]  # the API and the page show it
    if mode == "job":
        assert census.job_id == f"autopilot-{census.run_id.lower()}-1"  # the first job of the run
        tags = job["properties"]["tags"]
        assert tags["autopilot.run"] == census.run_id and tags["autopilot.blob"] == "census/2026-12.csv"


def test_a_retried_submission_puts_the_same_job_again_never_a_second(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    put_blob(env, "census/a.csv", GOOD)
    # the PUT reached the service but its answer was lost, on the HTTP layer's retry too (HTTP_RETRIES=1):
    # the submission fails, and the next attempt PUTs the same name again
    assert env["HTTP_RETRIES"] == "1"
    fresh_emulator.admin("POST", "faults", {"route": "v2.jobs.put", "drop": True, "after": True, "times": 2})
    host.scan_blobs()
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FINISHED, R.FAILED))
    assert run.status == R.FINISHED
    assert [j["name"] for j in v2_jobs(fresh_emulator)] == [run.job_id] == [f"autopilot-{run.run_id.lower()}-1"]
    puts = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "v2.jobs.put"]
    assert len(puts) >= 3 and {r["path"].rsplit("/", 1)[1] for r in puts} == {run.job_id}


def test_the_metric_on_a_child_run_is_found_and_a_rejected_run_is_judged_so(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, batch_endpoint="retrain-census"))
    put_blob(env, "census/good.csv", GOOD)
    host.scan_blobs()
    good = settle_until(host, svc, "census", (R.FINISHED, R.FAILED))
    assert good.status == R.FINISHED and good.metrics["AUC"] > 0.6
    put_blob(env, "census/bad.csv", BAD)
    host.scan_blobs()
    bad = settle_until(host, svc, "census", (R.REJECTED, R.FAILED, R.FINISHED), blob="census/bad.csv")
    [rejection] = [h for h in bad.history if h.get("to") == R.REJECTED]
    assert bad.status == R.REJECTED and "misses the minimum 0.6" in rejection["reason"]
    assert bad.model is None  # a rejected run registers nothing
    assert [v["name"] for v in fresh_emulator.admin("GET", "v2/models")] == [good.run_id.lower()]


def test_metrics_run_job_does_not_look_at_child_runs(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, batch_endpoint="retrain-census", metrics_run="job"))
    put_blob(env, "census/good.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FINISHED, R.FAILED))
    assert run.status == R.FAILED and "no numeric 'AUC'" in run.error["message"]


def test_a_failed_job_ends_the_run_failed_with_the_services_error(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    fresh_emulator.admin("POST", "faults", {"route": "v2.job", "fail": "Out of memory in train.py", "times": 1})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FAILED and run.error["message"] == "Out of memory in train.py"


def test_at_the_deadline_the_job_is_cancelled(make_world, fresh_emulator, monkeypatch):
    fresh_emulator.admin("POST", "config", {"job_seconds": 60})
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB), JOB_TIMEOUT_MINUTES="1")
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    [run] = svc.store.list_runs("census")
    from shared import poll
    from shared.runs import utcnow

    poll.poll(svc, actor="test", now=utcnow() + dt.timedelta(minutes=2))
    ended = svc.store.get("census", run.run_id)
    assert ended.status == R.TIMED_OUT
    deadline = time.monotonic() + 10
    while v2_jobs(fresh_emulator)[0]["status"] != "Canceled" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert v2_jobs(fresh_emulator)[0]["status"] == "Canceled"


def test_throttling_with_retry_after_is_waited_out(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    fresh_emulator.admin("POST", "faults", {"route": "v2.jobs.get", "status": 429, "retry_after": 1, "times": 2})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FINISHED, R.FAILED))
    assert run.status == R.FINISHED
    throttled = [
        r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "v2.jobs.get" and r["status"] == 429
    ]
    assert len(throttled) == 2


def test_the_emulator_refuses_a_token_of_the_wrong_audience_so_the_clients_choice_is_proven(fresh_emulator):
    workspace = fresh_emulator.url + fresh_emulator.info["v2_workspace"]
    ml = {"Authorization": f"Bearer {token(fresh_emulator, 'https://ml.azure.com')}"}
    assert requests.get(f"{workspace}/jobs/x", params={"api-version": "2025-12-01"}, headers=ml).status_code == 401


def test_a_token_never_goes_to_an_mlflow_host_the_allow_list_does_not_know(make_world, fresh_emulator):
    """The workspace answers (here: is made to answer) a tracking URI on a foreign host: the metrics
    are not read there, and the run fails with the reason instead."""
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    foreign = {"properties": {"mlFlowTrackingUri": "azureml://collector.example.com/mlflow/v1.0/x"}}
    fresh_emulator.admin("POST", "faults", {"route": "v2.workspace", "status": 200, "body": foreign})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FAILED and run.error["code"] == "UntrustedHost"
    assert "collector.example.com" in run.error["message"]
    assert not [r for r in fresh_emulator.admin("GET", "requests") if "collector" in r["path"]]


def test_a_transient_mlflow_failure_is_retried_on_the_next_tick(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    fresh_emulator.admin("POST", "faults", {"route": "v2.mlflow.runs.get", "status": 500, "times": 1})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FINISHED and run.check_failures == 1


def test_a_failed_job_resubmitted_is_a_new_job_with_the_next_name(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB), RESUBMIT_FAILED_JOBS="true")
    fresh_emulator.admin("POST", "faults", {"route": "v2.job", "fail": "Spot node preempted", "times": 1})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FINISHED and run.resubmissions == 1
    prefix = f"autopilot-{run.run_id.lower()}"
    assert (
        sorted(j["name"] for j in v2_jobs(fresh_emulator)) == [f"{prefix}-1", f"{prefix}-2"]
        and run.job_id == f"{prefix}-2"
    )


def test_a_registration_whose_answer_was_lost_is_the_same_version_again(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    fresh_emulator.admin("POST", "faults", {"route": "v2.models.put", "drop": True, "after": True, "times": 2})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FINISHED and run.check_failures == 1  # one tick's registration failed: retried
    assert [v["name"] for v in fresh_emulator.admin("GET", "v2/models")] == [run.run_id.lower()]
    puts = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "v2.models.put"]
    assert len(puts) == 3 and {p["status"] for p in puts} == {"dropped", 200}


def test_check_verifies_the_datastore_points_at_the_training_container(make_world, fresh_emulator, tmp_path, capsys):
    from shared import cli
    from tests.test_operations import settings_file

    env, _, _ = make_world(v2_trainer(fresh_emulator, batch_endpoint="retrain-census"))
    path = settings_file(tmp_path, env)
    assert cli.main(["check", "--settings", path]) == 0
    out = capsys.readouterr().out
    assert f"ok    datastore autopilot_training: points at devstoreaccount1/{env['TRAINING_CONTAINER']}" in out
    assert "ok    AZUREML: workspace reachable, token accepted" in out
    fresh_emulator.admin("POST", "v2/datastores", {"name": "autopilot_training", "container": "somewhere-else"})
    assert cli.main(["check", "--settings", path]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if "datastore autopilot_training:" in x)
    assert line.startswith("  FAIL") and "jobs would not see the uploads" in line


def test_a_v2_loop_with_failures_leaves_no_token_or_key_anywhere(make_world, fresh_emulator, caplog):
    """Every token the emulator issued (both audiences), the keys and the identity header, looked for in
    every table entity, queue message and log line of a v2 loop that also failed and was throttled."""
    import logging

    from tests.scan import assert_no_secret, log_text, secrets_used, written

    caplog.set_level(logging.DEBUG)
    logging.getLogger("azure").setLevel(logging.WARNING)
    env, host, svc = make_world(v2_trainer(fresh_emulator, batch_endpoint="retrain-census"))
    fresh_emulator.admin("POST", "faults", {"route": "v2.batch.invoke", "status": 429, "retry_after": 1, "times": 1})
    fresh_emulator.admin(
        "POST", "faults", {"route": "v2.job", "fail": "failed reading with token {input_url}", "times": 1}
    )
    put_blob(env, "census/first.csv", GOOD)
    host.scan_blobs()
    settle_until(host, svc, "census", (R.FAILED, R.FINISHED), blob="census/first.csv")
    put_blob(env, "census/second.csv", GOOD)
    host.scan_blobs()
    assert settle_until(host, svc, "census", (R.FAILED, R.FINISHED), blob="census/second.csv").status == R.FINISHED
    tokens = fresh_emulator.admin("GET", "tokens")
    assert len(tokens) >= 2  # both audiences were used, so the scan looks for real material
    places = written(env["AzureWebJobsStorage"], env["RUNS_TABLE"], log_text(caplog))
    assert_no_secret(places, secrets_used(fresh_emulator, svc))


def test_concurrent_deliveries_of_one_upload_make_one_job(make_world, fresh_emulator):
    import threading

    from shared import workflow

    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    put_blob(env, "census/a.csv", GOOD)
    blob = svc.storage.blob_ref(env["TRAINING_CONTAINER"], "census/a.csv")
    barrier, outcomes = threading.Barrier(3), []

    def deliver(n: int) -> None:
        barrier.wait()
        try:
            outcomes.append(workflow.start_run_for_blob(svc, blob, source="blob", actor=f"delivery-{n}"))
        except Exception as exc:  # a delivery that loses a race may be told to retry: that is fine
            outcomes.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    host.scan_blobs()  # and the host's own delivery, later
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FINISHED and len(list(svc.store.list_runs("census"))) == 1
    assert [j["name"] for j in v2_jobs(fresh_emulator)] == [run.job_id]


@pytest.mark.parametrize(("children", "code"), [(0, "EvaluationMissing"), (2, "EvaluationAmbiguous")])
def test_no_or_several_child_runs_with_the_metric_fail_the_run_with_a_clear_reason(
    make_world, fresh_emulator, children, code
):
    fresh_emulator.admin("POST", "config", {"v2_metric_children": children})
    env, host, svc = make_world(v2_trainer(fresh_emulator, batch_endpoint="retrain-census"))
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FAILED and run.error["code"] == code
    expected = "logged no 'AUC' metric" if children == 0 else "2 child runs of job"
    assert expected in run.error["message"] and run.model is None


def test_a_job_that_stops_responding_is_noted_once_and_still_finishes(make_world, fresh_emulator):
    env, host, svc = make_world(v2_trainer(fresh_emulator, job=JOB))
    silent = {"name": "x", "properties": {"status": "NotResponding"}}
    fresh_emulator.admin("POST", "faults", {"route": "v2.jobs.get", "status": 200, "body": silent, "times": 3})
    put_blob(env, "census/a.csv", GOOD)
    host.scan_blobs()
    run = settle_until(host, svc, "census", (R.FAILED, R.FINISHED))
    assert run.status == R.FINISHED
    notes = [h for h in run.history if h.get("event") == "the job reports: the job is NotResponding"]
    assert len(notes) == 1  # three such answers, one note
