"""Many models in one app: pipelines side by side through the registered functions, against Azurite
and the emulator — each with its own training service and key, slot, gate and targets; an upload no
pipeline claims is recorded; one pipeline's failing service holds up no other."""

from __future__ import annotations

import json
import threading
import time

import pytest

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import runs as R
from tests.conftest import jobs
from tests.loop import CHURN_SERVICE, two_pipelines
from tests.test_function_app import put_blob, wait_for_job_end

GOOD = sample_data.generate(800, seed=31, label_noise=0.1).encode()


@pytest.fixture
def world(app_env, fresh_emulator, monkeypatch):
    env = two_pipelines(app_env, fresh_emulator, POLL_SCHEDULE="*/1 * * * * *")
    for name in ("BES_JOBS_URL", "BES_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    host = LocalHost(function_app.app, env, visibility_timeout=0)
    from shared.workflow import get_services

    yield env, host, get_services()
    host.stop()


def settle(host, rounds: int = 40) -> None:
    """Let the registered functions run until nothing is left to do (jobs take 0.3 s here)."""
    for _ in range(rounds):
        host.fire_timer("poll_runs")
        host.pump_queues()
        time.sleep(0.1)


def runs_of(svc, pipeline: str) -> list[R.Run]:
    return list(svc.store.list_runs(pipeline))


def test_two_pipelines_train_on_their_own_services_and_deploy_to_their_own_targets(world, fresh_emulator):
    env, host, svc = world
    # GIVEN an upload for each pipeline
    put_blob(env, "census/2026-12.csv", GOOD)
    put_blob(env, "churn/2026-12.csv", GOOD)
    # WHEN the registered functions run
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    settle(host, rounds=10)
    # THEN each pipeline has its own run, trained on its own service (its own key), judged by its gate
    [census] = runs_of(svc, "census")
    [churn] = runs_of(svc, "churn")
    assert (census.blob_name, churn.blob_name) == ("census/2026-12.csv", "churn/2026-12.csv")
    by_job = {j["id"]: j["service"] for j in jobs(fresh_emulator)}
    assert by_job[churn.job_id] == CHURN_SERVICE and by_job[census.job_id] != CHURN_SERVICE
    assert set(census.gate) == {"classic"} and census.gate["classic"]["metric"] == "AUC"
    assert set(churn.gate) == {"arm"} and churn.gate["arm"]["metric"] == "Accuracy"
    # AND each went live on its own target only
    assert (census.status, churn.status) == (R.DEPLOYED, R.DEPLOYED), (census.history, churn.history)
    assert svc.targets.get("classic").live_run == census.run_id
    assert svc.targets.get("arm").live_run == churn.run_id
    assert census.outputs["model"].startswith(f"{env['MODELS_CONTAINER']}/census/")


def test_each_pipeline_has_its_own_training_slot(world, fresh_emulator):
    env, host, svc = world
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    for name in ("census/a.csv", "churn/a.csv", "census/b.csv"):
        put_blob(env, name, GOOD)
        host.scan_blobs()
        time.sleep(1.05)  # upload times have whole-second resolution
    # THEN churn trains at once beside census; census's second upload waits for census's first
    statuses = {(r.pipeline, r.blob_name): r.status for p in ("census", "churn") for r in runs_of(svc, p)}
    assert statuses == {
        ("census", "census/a.csv"): R.RUNNING,
        ("census", "census/b.csv"): R.WAITING,
        ("churn", "churn/a.csv"): R.RUNNING,
    }
    slots = {s.pipeline: s for s in svc.store.slots()}
    assert slots["census"].waiting_run and not slots["churn"].waiting_run


def test_an_upload_no_pipeline_claims_is_recorded_once_and_starts_nothing(world, fresh_emulator, caplog):
    env, host, svc = world
    put_blob(env, "finance/q4.csv", GOOD)
    # WHEN it is delivered, and again after a host restart (a new host has no receipts)
    host.scan_blobs()
    LocalHost(function_app.app, env).scan_blobs()
    # THEN no run and no job exist; one record says why; the log says it once
    assert runs_of(svc, "census") == runs_of(svc, "churn") == [] and jobs(fresh_emulator) == []
    [record] = svc.store.list_unrouted()
    assert record["blob_name"] == "finance/q4.csv"
    assert "no pipeline's blob_prefix matches 'finance/q4.csv'" in record["reason"] and "'census/'" in record["reason"]
    assert caplog.text.count("starts nothing") == 1


def test_a_command_names_its_pipeline_when_there_are_several(world, fresh_emulator):
    env, host, svc = world
    put_blob(env, "census/a.csv", GOOD)
    put_blob(env, "churn/a.csv", GOOD)
    queue = svc.storage.queue(env["COMMANDS_QUEUE"])
    bodies = {
        "no-pipeline": {"type": "retrain", "version": 1},
        "unknown": {"type": "retrain", "version": 1, "pipeline": "fraud"},
        "not-its-data": {"type": "retrain", "version": 1, "pipeline": "census", "blob": "churn/a.csv"},
        "not-its-target": {"type": "rollback", "version": 1, "pipeline": "census", "target": "arm"},
        "ok": {"type": "retrain", "version": 1, "pipeline": "census", "blob": "census/a.csv"},
    }
    for request_id, body in bodies.items():
        queue.send_message(json.dumps({**body, "request_id": request_id}))
    host.pump_queues()
    log = {e["RowKey"]: e for e in svc.commands.list()}
    assert "pipeline is required: 2 are configured (census, churn)" in log["req:no-pipeline"]["reason"]
    assert "unknown pipeline 'fraud' (configured: census, churn)" in log["req:unknown"]["reason"]
    assert "'churn/a.csv' is pipeline 'churn''s data, not pipeline 'census''s" in log["req:not-its-data"]["reason"]
    assert "target 'arm' is not pipeline 'census''s" in log["req:not-its-target"]["reason"]
    assert log["req:ok"]["status"] == "Done"
    [run] = runs_of(svc, "census")
    assert run.blob_name == "census/a.csv" and runs_of(svc, "churn") == []


def test_a_slow_failing_service_holds_up_no_other_pipeline(world, fresh_emulator):
    env, host, svc = world
    put_blob(env, "census/a.csv", GOOD)
    put_blob(env, "churn/a.csv", GOOD)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    # GIVEN census's service answers its status calls slowly and with errors (churn's is fine)
    census_service = next(j["service"] for j in jobs(fresh_emulator) if j["service"] != CHURN_SERVICE)
    slow = {"route": "bes.status", "path": f"/services/{census_service}/", "status": 503, "delay": 2.0}
    fresh_emulator.admin("POST", "faults", slow)
    # WHEN the timer fires: churn's run moves on while census's call is still hanging
    seen: dict[str, float] = {}
    started = time.monotonic()

    def watch() -> None:
        while time.monotonic() - started < 10 and "churn" not in seen:
            if any(r.status in (R.DEPLOYING, R.APPROVED) for r in runs_of(svc, "churn")):
                seen["churn"] = time.monotonic() - started
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    host.fire_timer("poll_runs")
    took = time.monotonic() - started
    watcher.join()
    # THEN churn was judged and handed off long before census's slow answer came back
    assert seen["churn"] < 1.5 < took, (seen, took)
    [census] = runs_of(svc, "census")
    assert census.status == R.RUNNING and census.check_failures == 1
    assert census.last_check_error["http_status"] == 503


def test_an_unforeseen_error_in_one_pipeline_is_recorded_on_it_and_the_others_go_on(world, fresh_emulator):
    env, host, svc = world
    put_blob(env, "census/a.csv", GOOD)
    put_blob(env, "churn/a.csv", GOOD)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    # A mock, because no real fault makes this raise outside the recorded errors: it stands for a bug
    # in one pipeline's trainer.
    census = svc.trainer("census")

    def broken(job_id):
        raise TypeError("a bug in one pipeline's trainer")

    census.status = broken
    [invocation] = [host.fire_timer("poll_runs")]
    assert invocation.ok  # the timer did not fail
    slot = {s.pipeline: s for s in svc.store.slots()}["census"]
    assert slot.last_error["code"] == "TypeError" and "a bug in one pipeline's trainer" in slot.last_error["message"]
    [run] = runs_of(svc, "census")
    assert run.status == R.RUNNING and run.last_check_error["code"] == "Unexpected"
    assert runs_of(svc, "churn")[0].status in (R.DEPLOYING, R.DEPLOYED)
    # WHEN the bug is gone, the next poll clears the pipeline's error
    del census.status
    host.fire_timer("poll_runs")
    assert {s.pipeline: s for s in svc.store.slots()}["census"].last_error is None


FUNCTION_KEY = "test-function-key-not-a-secret"


@pytest.fixture
def deployed(world, fresh_emulator):
    """Both pipelines with a deployed run, and an upload no pipeline claims."""
    env, host, svc = world
    for name in ("census/2026-12.csv", "churn/2026-12.csv", "finance/q4.csv"):
        put_blob(env, name, GOOD)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    settle(host, rounds=10)
    base = host.serve_http(FUNCTION_KEY)
    return env, svc, base, {p: runs_of(svc, p)[0] for p in ("census", "churn")}


def api(base, path, **params):
    import requests

    return requests.get(f"{base}/api/{path}", params={"code": FUNCTION_KEY, **params}, timeout=10)


def test_the_api_shows_each_pipeline_and_asks_which_one_when_it_matters(deployed):
    _, _, base, runs = deployed
    ambiguous = api(base, "runs").json()["error"]
    assert (ambiguous["parameter"], ambiguous["message"]) == (
        "pipeline",
        "parameter pipeline: is required: 2 pipelines are configured (census, churn)",
    )
    census = api(base, "runs", pipeline="census").json()
    assert census["pipeline"] == "census" and [r["run_id"] for r in census["runs"]] == [runs["census"].run_id]
    assert census["runs"][0]["metric"]["name"] == "AUC"
    assert api(base, "runs", pipeline="churn").json()["runs"][0]["metric"]["name"] == "Accuracy"
    assert api(base, "runs", pipeline="fraud").json()["error"]["message"].startswith("parameter pipeline: unknown")
    # one run is found without naming its pipeline (run ids are unique across pipelines)
    assert api(base, f"runs/{runs['churn'].run_id}").json()["pipeline"] == "churn"
    targets = {t["name"]: t for t in api(base, "targets").json()["targets"]}
    assert (targets["classic"]["pipeline"], targets["arm"]["pipeline"]) == ("census", "churn")
    assert [t["name"] for t in api(base, "targets", pipeline="churn").json()["targets"]] == ["arm"]
    pipelines = {p["name"]: p for p in api(base, "pipelines").json()["pipelines"]}
    assert pipelines["churn"]["gate"]["metric"] == "Accuracy" and pipelines["churn"]["targets"] == ["arm"]
    assert pipelines["census"]["blob_prefix"] == "census/" and pipelines["census"]["last_error"] is None
    [unrouted] = api(base, "unrouted").json()["unrouted"]
    assert unrouted["blob"] == "finance/q4.csv" and "no pipeline's blob_prefix matches" in unrouted["reason"]


def test_the_page_shows_every_pipeline_its_details_and_the_unclaimed_uploads(deployed):
    _, _, base, runs = deployed
    page = api(base, "status").text
    assert "<table id=pipelines>" in page and "<table id=unrouted>" in page and "finance/q4.csv" in page
    for name in ("census", "churn"):
        assert f"<section id=pipeline-{name}>" in page and f"id=chart-{name}" in page
        assert runs[name].run_id in page
    assert f"status?code={FUNCTION_KEY}&amp;pipeline=census" in page  # the summary links to each pipeline
    one = api(base, "status", pipeline="churn").text
    assert (
        "<section id=pipeline>" in one
        and runs["churn"].run_id in one
        and runs["census"].run_id not in one.split("<section")[1]
    )


def test_the_cli_shows_pipelines_and_sends_to_one(deployed, tmp_path, capsys):
    from shared import cli

    env, _, _, runs = deployed
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": env}))
    assert cli.main(["runs", "--settings", str(path)]) == 2
    assert "--pipeline: is required: 2 pipelines are configured" in capsys.readouterr().err
    assert cli.main(["runs", "--settings", str(path), "--pipeline", "churn"]) == 0
    assert runs["churn"].run_id in capsys.readouterr().out
    assert cli.main(["pipelines", "--settings", str(path)]) == 0
    out = capsys.readouterr().out
    assert "census    census/" in out and "churn" in out and "Accuracy" in out
    assert cli.main(["unrouted", "--settings", str(path)]) == 0
    assert "finance/q4.csv" in capsys.readouterr().out
    assert cli.main(["send", "--settings", str(path), "retrain", "--pipeline", "churn", "--request-id", "r-9"]) == 0
    assert json.loads(capsys.readouterr().out)["queued"]["pipeline"] == "churn"
    # check reaches each pipeline's own training service (with its own key) and shows what it would send
    assert cli.main(["check", "--settings", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pipeline census (bes trainer, uploads under 'census/')" in out and "pipeline churn (bes" in out
    assert out.count("ok    BES: ") == 2 and "would send to BES for" in out
