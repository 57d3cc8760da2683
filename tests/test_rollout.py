"""Safe rollout to an Azure ML v2 managed online endpoint, through the registered functions against
Azurite and the emulator: a v2 pipeline's registered model goes create → probe → shadow → canary →
promote → retire, one stage per poll tick, and anything that goes wrong rolls the traffic back."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from emulator import sample_data
from shared import deploy, rollout
from shared import runs as R
from tests.test_azureml import JOB, v2_host, v2_trainer
from tests.test_function_app import put_blob

GOOD = sample_data.generate(600, seed=31, label_noise=0.1).encode()
ALSO_GOOD = sample_data.generate(600, seed=32, label_noise=0.1).encode()
FAST = {"mirror_percent": 20, "mirror_minutes": 0, "canary_percent": 25, "bake_minutes": 0, "probe_rows": 5}


def online_target(emulator, endpoint="census-online", **fields) -> dict:
    return {
        "name": "census-online",
        "kind": "azureml-online",
        "endpoint": f"{emulator.info['v2_workspace']}/onlineEndpoints/{endpoint}",
        "management_url": emulator.url,
        "rollout": FAST,
        **fields,
    }


@pytest.fixture
def world(app_env, fresh_emulator, monkeypatch):
    """A v2 pipeline (Command jobs) whose one target is an online endpoint; returns ``make(**target)``."""
    hosts = []

    def make(**target_fields):
        pipeline = {
            "name": "census",
            "blob_prefix": "census/",
            "trainer": v2_trainer(fresh_emulator, job=JOB),
            "targets": ["census-online"],
            "gate": {"metric": "AUC", "min": 0.6, "min_improvement": -1.0},  # every good model is approved
        }
        flat = {k: v for k, v in app_env.items() if k not in ("BES_JOBS_URL", "BES_API_KEY", "DEPLOY_TARGETS")}
        env = {
            **flat,
            "PIPELINES": json.dumps([pipeline]),
            "DEPLOY_TARGETS": json.dumps([online_target(fresh_emulator, **target_fields)]),
            "POLL_SCHEDULE": "*/1 * * * * *",
        }
        return v2_host(env, fresh_emulator, monkeypatch, hosts)

    yield make
    for host in hosts:
        host.stop()


def endpoint_state(emulator, name="census-online") -> dict:
    """The emulator's view of one endpoint: its maps and deployments (never its keys)."""
    return next(e for e in emulator.admin("GET", "v2/online") if e["endpoint"] == name)


def roll(
    host, svc, emulator, blob: str, timeout: float = 60, endpoint="census-online"
) -> tuple[R.Run, dict, list[dict]]:
    """Tick until ``blob``'s run has ended on the target; the run, the final rollout and what the
    endpoint looked like after each tick (traffic always sums to 100 and names existing deployments)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.fire_timer("poll_runs")
        host.pump_queues()
        now = endpoint_state(emulator, endpoint)
        traffic = now["traffic"]
        assert not traffic or sum(traffic.values()) == 100, traffic
        assert set(traffic) | set(now["mirrorTraffic"]) <= set(now["deployments"]), now
        state = svc.targets.get("census-online")
        seen.append({**now, "stage": (state.rollout or {}).get("stage")})
        runs = [r for r in svc.store.list_runs("census") if r.blob_name == blob]
        if runs and runs[0].status in (R.DEPLOYED, R.FAILED, R.REJECTED, R.PARTIALLY_DEPLOYED):
            return runs[0], state.rollout, seen
        time.sleep(0.05)
    raise AssertionError(f"no end: {seen[-1]}; {svc.targets.get('census-online').rollout}")


def requests_to(emulator, route: str, method: str | None = None) -> list[dict]:
    return [
        r
        for r in emulator.admin("GET", "requests")
        if r["route"] == route and (method is None or r["method"] == method)
    ]


def test_a_first_deploy_then_a_new_model_goes_through_shadow_and_canary_to_all_traffic(world, fresh_emulator):
    env, host, svc = world(keep_deployments=2)
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    first, doc, _ = roll(host, svc, fresh_emulator, "census/2026-11.csv")
    assert first.status == R.DEPLOYED, first.history
    # a first deploy: no live deployment to split with, so create → probe → promote (no shadow, no canary)
    assert [s["stage"] for s in doc["stages"]] == ["create", "probe", "promote", "retire", "Promoted"]
    blue = doc["deployment"]
    assert endpoint_state(fresh_emulator)["traffic"] == {blue: 100}
    assert doc["probes"][0]["rows"] == 5 and doc["probes"][0]["errors"] == 0
    state = svc.targets.get("census-online")
    assert state.live_run == first.run_id and state.live_model == first.model["id"] and state.deploying_run is None

    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    second, doc, seen = roll(host, svc, fresh_emulator, "census/2026-12.csv")
    assert second.status == R.DEPLOYED, second.history
    green = doc["deployment"]
    assert [s["stage"] for s in doc["stages"]] == [
        "create", "probe", "shadow", "canary", "promote", "retire", "Promoted"
    ]  # fmt: skip
    assert {"traffic": {blue: 100}, "mirrorTraffic": {green: 20}} in [
        {"traffic": s["traffic"], "mirrorTraffic": s["mirrorTraffic"]} for s in seen
    ]  # the shadow: live traffic untouched, a mirrored share to the new deployment
    assert {blue: 75, green: 25} in [s["traffic"] for s in seen]  # the canary
    final = endpoint_state(fresh_emulator)
    assert final["traffic"] == {green: 100} and final["mirrorTraffic"] == {}
    assert final["deployments"][green]["model"] == second.model["id"]
    assert set(final["deployments"]) == {blue, green}  # keep 2: the live one and the one to roll back to
    state = svc.targets.get("census-online")
    assert (state.live_run, state.previous_run) == (second.run_id, first.run_id)
    [newest, oldest] = svc.targets.history("census-online")  # newest first: what replaced what
    assert (newest["run"], newest["replaced_run"], oldest["run"], oldest.get("replaced_run")) == (
        second.run_id, first.run_id, first.run_id, None,
    )  # fmt: skip
    assert second.targets["census-online"]["status"] == deploy.DEPLOYED
    # PATCH is never used for traffic or model: every change was a PUT of the whole endpoint
    assert not requests_to(fresh_emulator, "v2.online.endpoint.patch")
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == 2  # one create per model


def test_a_third_model_retires_the_oldest_deployment_but_never_the_live_or_the_rollback_one(world, fresh_emulator):
    env, host, svc = world(keep_deployments=2, rollout={"canary_percent": 0, "probe_rows": 2})
    names = []
    for month, data in (("10", GOOD), ("11", ALSO_GOOD), ("12", GOOD)):
        put_blob(env, f"census/2026-{month}.csv", data)
        host.scan_blobs()
        run, doc, _ = roll(host, svc, fresh_emulator, f"census/2026-{month}.csv")
        assert run.status == R.DEPLOYED, run.history
        names.append(doc["deployment"])
    assert doc["retired"] == [names[0]] and sorted(doc["kept"]) == sorted(names[1:])
    remaining = endpoint_state(fresh_emulator)["deployments"]
    assert {n for n, d in remaining.items() if d["state"] != "Deleting"} == set(names[1:])  # the DELETE is an LRO


def test_a_failed_provisioning_is_rolled_back_with_the_traffic_untouched(world, fresh_emulator):
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    first, doc, _ = roll(host, svc, fresh_emulator, "census/2026-11.csv")
    before = endpoint_state(fresh_emulator)["traffic"]
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.provision", "fail": "quota exceeded", "times": 1})
    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    second, doc, seen = roll(host, svc, fresh_emulator, "census/2026-12.csv")
    assert second.status == R.FAILED
    assert second.targets["census-online"]["status"] == deploy.ROLLED_BACK
    assert "quota exceeded" in doc["reason"] and "traffic untouched" in doc["reason"]
    assert all(s["traffic"] == before for s in seen)  # never moved, not even for a tick
    assert not requests_to(fresh_emulator, "v2.online.endpoint.put")[1:]  # only the first deploy's promote
    state = svc.targets.get("census-online")
    assert state.live_run == first.run_id and state.live_model == first.model["id"]
    assert doc["deployment"] in endpoint_state(fresh_emulator)["deployments"]  # kept for inspection


def test_probe_errors_during_the_canary_roll_traffic_back_and_keep_the_live_model(world, fresh_emulator):
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    first, doc, _ = roll(host, svc, fresh_emulator, "census/2026-11.csv")
    blue = doc["deployment"]
    # the next deployment is healthy when probed alone, and fails once it has live traffic
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.degrade", "fail": "CUDA out of memory", "path": "ap-"})
    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    second, doc, seen = roll(host, svc, fresh_emulator, "census/2026-12.csv")
    assert second.status == R.FAILED and second.targets["census-online"]["status"] == deploy.ROLLED_BACK
    assert doc["failed_stage"] == "canary" and "probe error rate 100%" in doc["reason"]
    assert "CUDA out of memory" in doc["reason"]
    assert [p["ok"] for p in doc["probes"]][-3:] == [True, True, False]  # probe, shadow pass; the canary fails
    assert {blue: 75, doc["deployment"]: 25} in [s["traffic"] for s in seen]
    final = endpoint_state(fresh_emulator)
    assert final["traffic"] == {blue: 100} and final["mirrorTraffic"] == {}
    state = svc.targets.get("census-online")
    assert state.live_run == first.run_id and state.live_model == first.model["id"] and state.deploying_run is None


def test_a_stage_past_its_deadline_is_rolled_back(world, fresh_emulator):
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    roll(host, svc, fresh_emulator, "census/2026-11.csv")
    fresh_emulator.admin("POST", "config", {"online_operation_timeout": "PT1S"})
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.stuck", "times": 1})  # the create never ends
    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    second, doc, _ = roll(host, svc, fresh_emulator, "census/2026-12.csv")
    assert second.targets["census-online"]["status"] == deploy.ROLLED_BACK
    assert doc["failed_stage"] == "create" and "passed its deadline" in doc["reason"]


def test_redelivered_commands_and_overlapping_ticks_change_nothing_twice(world, fresh_emulator):
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    deadline = time.monotonic() + 30
    while not rollout.is_active(svc.targets.get("census-online")):
        assert time.monotonic() < deadline
        host.fire_timer("poll_runs")
        host.pump_queues()
    run = next(iter(svc.store.list_runs("census")))
    # the deploy command again (an at-least-once queue): the rollout is not started twice
    from shared.poll import deploy_command

    svc.storage.queue(svc.settings.commands_queue).send_message(json.dumps(deploy_command(run)))
    host.pump_queues()
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == 1
    # two ticks at once, at every stage: exactly one does the stage's work
    target = svc.settings.target("census-online")
    while rollout.is_active(svc.targets.get("census-online")):
        time.sleep(0.25)  # let an operation finish, so a step has work to do
        state = svc.targets.get("census-online")
        results: list[str] = []

        def tick(state=state, results=results) -> None:
            results.append(rollout.advance(svc, target, state, actor="t", now=R.utcnow()))

        threads = [threading.Thread(target=tick) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count("busy") >= 1, results
    host.pump_queues()
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == 1
    assert len(requests_to(fresh_emulator, "v2.online.endpoint.put")) == 1  # the one promote (a first deploy)
    assert svc.store.get("census", run.run_id).status == R.DEPLOYED
    history = [h for h in svc.targets.history("census-online") if h["kind"] == "deploy"]
    assert len(history) == 1


def test_a_rollback_command_moves_traffic_back_to_the_previous_deployment_and_verifies_it(world, fresh_emulator):
    env, host, svc = world(rollout={"canary_percent": 0, "probe_rows": 2})
    for month, data in (("11", GOOD), ("12", ALSO_GOOD)):
        put_blob(env, f"census/2026-{month}.csv", data)
        host.scan_blobs()
        run, _, _ = roll(host, svc, fresh_emulator, f"census/2026-{month}.csv")
        assert run.status == R.DEPLOYED
    first = list(svc.store.list_runs("census"))[-1]
    previous = svc.targets.get("census-online")
    command = {"type": "rollback", "version": 1, "target": "census-online", "pipeline": "census", "request_id": "rb-1"}
    svc.storage.queue(svc.settings.commands_queue).send_message(json.dumps(command))
    puts_before = len(requests_to(fresh_emulator, "v2.online.deployment.put"))
    deadline = time.monotonic() + 30
    while svc.targets.get("census-online").live_run != first.run_id or rollout.is_active(
        svc.targets.get("census-online")
    ):
        assert time.monotonic() < deadline, svc.targets.get("census-online").rollout
        host.pump_queues()
        host.fire_timer("poll_runs")
        time.sleep(0.05)
    state = svc.targets.get("census-online")
    assert state.rollout["kind"] == "rollback" and state.rollout["outcome"] == rollout.PROMOTED
    assert [s["stage"] for s in state.rollout["stages"]] == ["create", "promote", "retire", "Promoted"]
    assert endpoint_state(fresh_emulator)["traffic"] == {state.rollout["deployment"]: 100}
    assert state.live_model == first.model["id"] and state.previous_run == previous.live_run
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == puts_before  # instant: nothing created


def test_operators_see_the_rollout_stage_maps_kept_deployments_and_probes(world, fresh_emulator, tmp_path, capsys):
    from shared import cli, status
    from tests.test_cli import settings_file

    env, host, svc = world()
    for month, data in (("11", GOOD), ("12", ALSO_GOOD)):
        put_blob(env, f"census/2026-{month}.csv", data)
        host.scan_blobs()
        run, doc, _ = roll(host, svc, fresh_emulator, f"census/2026-{month}.csv")
    [view] = status.list_targets(svc)
    assert view["rollout"]["outcome"] == "Promoted" and view["rollout"]["traffic"] == {doc["deployment"]: 100}
    assert sorted(view["rollout"]["kept"]) == sorted([doc["deployment"], doc["replacing"]])
    assert [p["stage"] for p in view["rollout"]["probes"]] == ["probe", "shadow", "canary"]
    line = status.rollout_text(view["rollout"])
    assert line.startswith(f"Promoted ({run.run_id}) · traffic {doc['deployment']} 100%") and "probe 0/5 errors" in line
    page = status.run_page_html(svc, run.run_id)
    assert "Rollout on census-online" in page and "id=probes-census-online" in page and "canary" in page
    path = settings_file(tmp_path, env)
    capsys.readouterr()
    assert cli.main(["targets", "--settings", path]) == 0
    assert "Promoted" in capsys.readouterr().out
    assert cli.main(["check", "--settings", path]) == 0
    checked = capsys.readouterr().out
    assert "endpoint reachable, token accepted; authMode Key" in checked and "2 deployment(s)" in checked
    assert cli.main(["tail", run.run_id, "--settings", path, "--interval", "0.05"]) == 0
    followed = capsys.readouterr().out
    for stage in ("create", "probe", "shadow", "canary", "promote", "retire", "Promoted"):
        assert f"census-online: {stage}" in followed
    # the endpoint's scoring key was used for the probes, and is nowhere in what was recorded
    deployer = svc.deployer(svc.settings.target("census-online"))
    secret = deployer.scoring_credential("Key")
    assert len(secret) > 20 and secret not in json.dumps(list(svc.targets.table.query_entities("")), default=str)


def test_a_newer_model_waits_for_the_rollout_in_progress_and_the_newest_waiting_one_goes_next(world, fresh_emulator):
    env, host, svc = world(rollout={**FAST, "bake_minutes": 0.1})  # each canary bakes 6 s
    put_blob(env, "census/2026-09.csv", GOOD)
    host.scan_blobs()
    roll(host, svc, fresh_emulator, "census/2026-09.csv")  # a first deploy: no canary, no bake

    def tick_until(blob: str, status: str, timeout: float = 40) -> R.Run:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host.fire_timer("poll_runs")
            host.pump_queues()
            run = next((r for r in svc.store.list_runs("census") if r.blob_name == blob), None)
            if run is not None and run.targets.get("census-online", {}).get("status") == status:
                return run
            time.sleep(0.05)
        raise AssertionError(
            f"{blob} never {status}: {[(r.blob_name, r.status, r.targets) for r in svc.store.list_runs('census')]}"
        )

    put_blob(env, "census/2026-10.csv", ALSO_GOOD)
    host.scan_blobs()
    baking = tick_until("census/2026-10.csv", deploy.ROLLING_OUT)
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    third = tick_until("census/2026-11.csv", deploy.QUEUED)
    assert "queued behind the rollout of run " + baking.run_id in third.targets["census-online"]["reason"]
    assert svc.targets.get("census-online").rollout["run"] == baking.run_id  # the rollout in progress goes on
    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    fourth = tick_until("census/2026-12.csv", deploy.QUEUED)
    third = svc.store.get("census", third.run_id)
    assert third.targets["census-online"]["status"] == deploy.SUPERSEDED
    assert tick_until("census/2026-10.csv", deploy.DEPLOYED).status == R.DEPLOYED
    fourth = tick_until("census/2026-12.csv", deploy.DEPLOYED)
    state = svc.targets.get("census-online")
    assert state.live_run == fourth.run_id and state.previous_run == baking.run_id and state.queued_run is None
    assert svc.store.get("census", third.run_id).status != R.DEPLOYING  # it ended, never deployed


def test_once_promoted_a_retire_that_keeps_failing_ends_promoted_and_never_rolls_back(world, fresh_emulator):
    env, host, svc = world(rollout={"canary_percent": 0, "probe_rows": 2})
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    roll(host, svc, fresh_emulator, "census/2026-11.csv")
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.deployments.list", "status": 500})  # for good
    put_blob(env, "census/2026-12.csv", ALSO_GOOD)
    host.scan_blobs()
    deadline = time.monotonic() + 30
    while (svc.targets.get("census-online").rollout or {}).get("stage") != "retire" or not (
        svc.targets.get("census-online").rollout.get("last_error")
    ):
        assert time.monotonic() < deadline, svc.targets.get("census-online").rollout
        host.fire_timer("poll_runs")
        host.pump_queues()
        time.sleep(0.05)
    later = R.utcnow() + dt.timedelta(hours=1)  # a tick past the retire stage's deadline
    rollout.advance_all(svc, actor="late-tick", now=later)
    state = svc.targets.get("census-online")
    assert state.rollout["outcome"] == rollout.PROMOTED and "passed its deadline" in state.rollout["reason"]
    second = next(r for r in svc.store.list_runs("census") if r.blob_name == "census/2026-12.csv")
    assert second.status == R.DEPLOYED and state.live_run == second.run_id
    assert endpoint_state(fresh_emulator)["traffic"] == {state.rollout["deployment"]: 100}  # not rolled back


def test_a_rollback_to_an_older_run_whose_deployment_was_retired_redeploys_its_model_version(world, fresh_emulator):
    env, host, svc = world(keep_deployments=2, rollout={"canary_percent": 0, "probe_rows": 2})
    for month, data in (("10", GOOD), ("11", ALSO_GOOD), ("12", GOOD)):
        put_blob(env, f"census/2026-{month}.csv", data)
        host.scan_blobs()
        _, doc, _ = roll(host, svc, fresh_emulator, f"census/2026-{month}.csv")
    oldest = list(svc.store.list_runs("census"))[-1]
    assert doc["retired"]  # the oldest run's deployment is being deleted (a rollback waits until it is gone)
    body = {"type": "rollback", "version": 1, "target": "census-online", "pipeline": "census", "to_run": oldest.run_id}
    svc.storage.queue(svc.settings.commands_queue).send_message(json.dumps(body))
    puts = len(requests_to(fresh_emulator, "v2.online.deployment.put"))
    deadline = time.monotonic() + 30
    while svc.targets.get("census-online").live_run != oldest.run_id or rollout.is_active(
        svc.targets.get("census-online")
    ):
        assert time.monotonic() < deadline, (svc.targets.get("census-online").rollout, svc.commands.list())
        host.pump_queues()
        host.fire_timer("poll_runs")
        time.sleep(0.1)
    state = svc.targets.get("census-online")
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == puts + 1  # its deployment made again
    assert [s["stage"] for s in state.rollout["stages"]] == ["create", "promote", "retire", "Promoted"]
    final = endpoint_state(fresh_emulator)
    assert final["traffic"] == {state.rollout["deployment"]: 100}
    assert final["deployments"][state.rollout["deployment"]]["model"] == oldest.model["id"] == state.live_model


@pytest.mark.parametrize("endpoint", ["census-online-aml", "census-online-aad"])
def test_probes_use_the_credential_of_each_auth_mode(world, fresh_emulator, endpoint):
    env, host, svc = world(endpoint=endpoint, rollout={"canary_percent": 0, "probe_rows": 3})
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    run, doc, _ = roll(host, svc, fresh_emulator, "census/2026-11.csv", endpoint=endpoint)
    assert run.status == R.DEPLOYED, doc
    assert doc["auth_mode"] == {"census-online-aml": "AMLToken", "census-online-aad": "AADToken"}[endpoint]
    assert doc["probes"][0]["errors"] == 0
    routes = {r["route"] for r in requests_to(fresh_emulator, "v2.online.token")}
    assert bool(routes) == (endpoint == "census-online-aml")  # an AML token is asked for; an Entra one is not


def test_a_probe_that_hangs_is_bounded_and_its_unscored_rows_count_as_errors(world, fresh_emulator, monkeypatch):
    monkeypatch.setattr(rollout, "PROBE_SECONDS", 0.3)  # the budget, shortened so the test is quick
    env, host, svc = world(rollout={"canary_percent": 0, "probe_rows": 5})
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.score", "delay": 0.4})  # every request slow
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    run, doc, _ = roll(host, svc, fresh_emulator, "census/2026-11.csv")
    assert run.targets["census-online"]["status"] == deploy.ROLLED_BACK
    [probe] = doc["probes"]
    assert probe["rows"] == 5 and probe["errors"] == 4 and "not scored within 0s" in doc["reason"]
    assert len(requests_to(fresh_emulator, "v2.online.score")) == 1  # the tick stopped waiting after one
