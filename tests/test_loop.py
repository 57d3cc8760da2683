"""The closed loop against Azurite and the emulator: poll, judge, deploy to classic and ARM, verify."""

import threading
import time

import pytest

from emulator import sample_data, training
from shared import poll
from shared import runs as R
from tests.conftest import jobs, upload
from tests.loop import arm_score, classic_score, drain_commands, finish, services, target_settings, wait_job

GOOD = sample_data.generate(800, seed=21, label_noise=0.15).encode()
BETTER = sample_data.generate(1600, seed=22, label_noise=0.0).encode()
DEGRADED = sample_data.generate(800, seed=23, label_noise=0.45).encode()
ROWS = [
    dict(zip(sample_data.FEATURES, values, strict=True))
    for values in ([0.5, -1.0, 1.2, 0.1, -0.3], [-1.5, 1.1, -0.8, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0, 0.0])
]


@pytest.fixture
def loop(env, fresh_emulator, monkeypatch):
    return services(target_settings(env, fresh_emulator), monkeypatch)


def start(svc, name, data):
    from shared import workflow

    return workflow.start_run_for_blob(svc, upload(svc, name, data), source="blob", actor="blob-trigger/test")


def model_of(svc, run):
    container, blob = run.outputs["model"].split("/", 1)
    return training.load_model(svc.storage.blobs.get_blob_client(container, blob).download_blob().readall())


def test_upload_to_verified_deploy_on_classic_and_arm_and_scoring_uses_the_new_model(loop, fresh_emulator):
    # GIVEN services scoring with their initial model
    before = classic_score(fresh_emulator, ROWS)
    # WHEN good data is uploaded, trained, polled and its deploy command delivered
    outcome = start(loop, "good.csv", GOOD)
    finish(loop, outcome.run_id)
    # THEN the run is Deployed on both targets, each verified, with the gate's reasoning recorded
    run = loop.store.get("default", outcome.run_id)
    assert run.status == R.DEPLOYED, run.history
    assert {t: run.targets[t]["status"] for t in ("classic", "arm")} == {"classic": "Deployed", "arm": "Deployed"}
    assert run.gate["classic"]["approved"] and run.gate["classic"]["champion"] is None
    assert 0.5 < run.metrics["AUC"] <= 1.0
    for name in ("classic", "arm"):
        state = loop.targets.get(name)
        assert (state.live_run, state.live_model) == (run.run_id, run.outputs["model"])
        assert state.live_metrics["AUC"] == run.metrics["AUC"]
        assert loop.deployer(loop.settings.target(name)).live() == run.outputs["model"]
        assert [h["run"] for h in loop.targets.history(name)] == [run.run_id]
    # AND both services now score with exactly the trained model
    expected = training.score(model_of(loop, run), ROWS)
    assert classic_score(fresh_emulator, ROWS) == pytest.approx(expected, abs=1e-6)
    assert arm_score(fresh_emulator, ROWS) == pytest.approx(expected, abs=1e-6)
    assert classic_score(fresh_emulator, ROWS) != pytest.approx(before, abs=1e-6)


def test_the_arm_update_keeps_every_key_it_does_not_change(loop, fresh_emulator):
    outcome = start(loop, "good.csv", GOOD)
    finish(loop, outcome.run_id)
    definition = loop.deployer(loop.settings.target("arm")).client.get(fresh_emulator.info["arm_resource_id"])
    properties = definition["properties"]
    assert properties["package"]["nodes"]["node1"]["AssetId"] == "asset1"  # PascalCase from the spec example
    assert properties["assets"]["asset1"]["locationInfo"] == {"uri": "aml://module/moduleId-1", "credentials": ""}
    assert properties["assets"]["asset3"]["outputPorts"] == {"Results dataset": {"type": "Dataset"}}
    assert properties["assets"]["asset3"]["locationInfo"]["uri"].endswith(f"/{outcome.run_id}/model.ilearner")
    assert properties["provisioningState"] == "Succeeded"


def test_a_degraded_model_is_rejected_and_the_live_model_stays(loop, fresh_emulator):
    first = start(loop, "good.csv", GOOD)
    finish(loop, first.run_id)
    live_scores = classic_score(fresh_emulator, ROWS)
    # WHEN worse data arrives
    second = start(loop, "degraded.csv", DEGRADED)
    finish(loop, second.run_id)
    # THEN it is a recorded skip with both metrics, not a failure, and nothing changed on the services
    run = loop.store.get("default", second.run_id)
    assert run.status == R.REJECTED
    good = loop.store.get("default", first.run_id)
    for name in ("classic", "arm"):
        decision = run.gate[name]
        assert not decision["approved"]
        assert decision["value"] == run.metrics["AUC"] and decision["champion"] == good.metrics["AUC"]
        assert loop.targets.get(name).live_run == first.run_id
    assert classic_score(fresh_emulator, ROWS) == pytest.approx(live_scores, abs=1e-9)
    assert loop.storage.queue(loop.settings.commands_queue).peek_messages() == []


def test_rollback_puts_the_previous_model_back_and_verifies_it(loop, fresh_emulator):
    from shared import commands

    first = start(loop, "good.csv", GOOD)
    finish(loop, first.run_id)
    first_scores = classic_score(fresh_emulator, ROWS)
    second = start(loop, "better.csv", BETTER)
    finish(loop, second.run_id)
    assert loop.targets.get("classic").live_run == second.run_id, loop.store.get("default", second.run_id).gate
    # WHEN an operator rolls the classic target back
    result = commands.handle(
        loop,
        b'{"type": "rollback", "version": 1, "target": "classic"}',
        message_id="m1",
        dequeue_count=1,
        actor="operator",
    )
    # THEN the first model is live and scoring again, and the change is in the target's history
    assert result.startswith("rollback classic: deployed")
    state = loop.targets.get("classic")
    assert (state.live_run, state.previous_run) == (first.run_id, second.run_id)
    assert classic_score(fresh_emulator, ROWS) == pytest.approx(first_scores, abs=1e-9)
    history = loop.targets.history("classic")
    assert [(h["kind"], h["run"]) for h in history] == [
        ("rollback", first.run_id),
        ("deploy", second.run_id),
        ("deploy", first.run_id),
    ]
    assert loop.targets.get("arm").live_run == second.run_id  # the other target is untouched


def test_a_job_past_its_deadline_is_cancelled_and_the_run_times_out(loop, fresh_emulator):
    import datetime as dt

    fresh_emulator.admin("POST", "config", {"job_seconds": 60})
    outcome = start(loop, "slow.csv", GOOD)
    waiting = start(loop, "next.csv", GOOD)
    later = R.utcnow() + dt.timedelta(minutes=loop.settings.job_timeout_minutes + 1)
    poll.poll(loop, actor="timer-poll/test", now=later)
    run = loop.store.get("default", outcome.run_id)
    assert run.status == R.TIMED_OUT and run.error["code"] == "JobTimeout"
    assert next(j for j in jobs(fresh_emulator) if j["id"] == run.job_id)["status"] == "Cancelled"
    assert loop.store.get("default", waiting.run_id).status == R.RUNNING  # the queue moved on


def test_a_failed_job_records_its_details(loop, fresh_emulator):
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": "Out of memory in Train Model.", "times": 1})
    outcome = start(loop, "data.csv", GOOD)
    assert wait_job(loop, outcome.run_id) == "Failed"
    poll.poll(loop, actor="timer-poll/test")
    run = loop.store.get("default", outcome.run_id)
    assert run.status == R.FAILED
    assert "Out of memory in Train Model." in run.error["message"]
    assert loop.store.get_slot("default").active_run is None


def test_a_failed_job_can_be_resubmitted_up_to_max_attempts(env, fresh_emulator, monkeypatch):
    svc = services(target_settings(env, fresh_emulator, RESUBMIT_FAILED_JOBS="true"), monkeypatch)
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": "Transient module error.", "times": 1})
    outcome = start(svc, "data.csv", GOOD)
    assert wait_job(svc, outcome.run_id) == "Failed"
    poll.poll(svc, actor="timer-poll/test")
    run = svc.store.get("default", outcome.run_id)
    assert run.status == R.RUNNING and run.attempts == 2 and len(jobs(fresh_emulator)) == 2
    finish(svc, outcome.run_id)
    assert svc.store.get("default", outcome.run_id).status == R.DEPLOYED


def test_overlapping_polls_judge_and_hand_off_a_run_once(loop, fresh_emulator):
    outcome = start(loop, "data.csv", GOOD)
    wait_job(loop, outcome.run_id)
    barrier = threading.Barrier(4)
    results = []

    def tick(i):
        barrier.wait()
        results.extend(poll.poll(loop, actor=f"timer-poll/{i}"))

    threads = [threading.Thread(target=tick, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run = loop.store.get("default", outcome.run_id)
    assert [h.get("to") for h in run.history].count(R.APPROVED) == 1
    assert [r.action for r in results].count("approved") == 1
    assert len(loop.storage.queue(loop.settings.commands_queue).peek_messages(max_messages=32)) == 1


def test_the_same_deploy_command_twice_deploys_once(loop, fresh_emulator):
    outcome = start(loop, "data.csv", GOOD)
    wait_job(loop, outcome.run_id)
    poll.poll(loop, actor="timer-poll/test")
    queue = loop.storage.queue(loop.settings.commands_queue)
    [message] = queue.peek_messages()
    queue.send_message(message.content)  # a duplicate, as at-least-once delivery may produce
    drain_commands(loop)
    patches = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] in ("classic.patch", "arm.patch")]
    assert sorted(r["route"] for r in patches) == ["arm.patch", "classic.patch"]
    assert len(loop.targets.history("classic")) == 1
    assert loop.store.get("default", outcome.run_id).status == R.DEPLOYED


def test_one_target_failing_does_not_block_the_other(env, fresh_emulator, monkeypatch):
    import json

    settings = target_settings(env, fresh_emulator)
    targets = json.loads(settings["DEPLOY_TARGETS"])
    targets[0]["resource_name"] = "No Such Model [trained model]"
    svc = services({**settings, "DEPLOY_TARGETS": json.dumps(targets)}, monkeypatch)
    outcome = start(svc, "data.csv", GOOD)
    finish(svc, outcome.run_id)
    run = svc.store.get("default", outcome.run_id)
    assert run.status == R.PARTIALLY_DEPLOYED
    assert run.targets["arm"]["status"] == "Deployed"
    assert run.targets["classic"]["status"] == "Failed"
    assert run.targets["classic"]["error"]["detail_codes"] == ["InvalidResourceName"]
    assert svc.targets.get("classic").live_run is None and svc.targets.get("classic").deploying_run is None


def test_the_default_endpoint_is_refused_with_the_services_error(env, fresh_emulator, monkeypatch):
    import json

    settings = target_settings(env, fresh_emulator)
    targets = json.loads(settings["DEPLOY_TARGETS"])[:1]
    targets[0]["endpoint_url"] = fresh_emulator.info["classic_default_endpoint_url"]
    svc = services({**settings, "DEPLOY_TARGETS": json.dumps(targets)}, monkeypatch)
    outcome = start(svc, "data.csv", GOOD)
    finish(svc, outcome.run_id)
    run = svc.store.get("default", outcome.run_id)
    assert run.status == R.FAILED
    assert run.targets["classic"]["error"]["detail_codes"] == ["UpdateDefaultEndpointNotAllowed"]


def test_an_arm_operation_that_ends_failed_is_a_failed_deploy(loop, fresh_emulator):
    fresh_emulator.admin("POST", "faults", {"route": "arm.lro", "fail": "Provisioning the graph failed.", "times": 1})
    outcome = start(loop, "data.csv", GOOD)
    finish(loop, outcome.run_id)
    run = loop.store.get("default", outcome.run_id)
    assert run.status == R.PARTIALLY_DEPLOYED
    assert run.targets["arm"]["status"] == "Failed"
    assert "Provisioning the graph failed." in run.targets["arm"]["reason"]
    assert loop.targets.get("arm").live_run is None


def test_a_200_that_changes_nothing_is_retried_then_poisoned_with_the_reason_recorded(loop, fresh_emulator):
    from shared import commands

    fresh_emulator.admin("POST", "faults", {"route": "classic.patch", "no_effect": True})
    outcome = start(loop, "data.csv", GOOD)
    wait_job(loop, outcome.run_id)
    poll.poll(loop, actor="timer-poll/test")
    queue = loop.storage.queue(loop.settings.commands_queue)
    [message] = queue.peek_messages()
    body = message.content.encode()
    limit = commands.max_dequeue_count()
    for attempt in range(1, limit + 1):
        with pytest.raises(Exception, match="classic"):
            commands.handle(loop, body, message_id=message.id, dequeue_count=attempt, actor=f"queue/{attempt}")
        run = loop.store.get("default", outcome.run_id)
        expected = "Retrying" if attempt < limit else "Failed"
        assert run.targets["classic"]["status"] == expected
        assert run.targets["arm"]["status"] == "Deployed"
    assert "gave up after" in run.targets["classic"]["reason"] and "NotInEffect" in run.targets["classic"]["reason"]
    assert run.status == R.PARTIALLY_DEPLOYED


def test_an_older_runs_late_deploy_never_replaces_a_newer_live_model(loop, fresh_emulator):
    from shared import commands

    # GIVEN two approved runs whose deploy commands are delivered newest first
    older = start(loop, "a.csv", GOOD)
    wait_job(loop, older.run_id)
    newer = start(loop, "b.csv", BETTER)  # waits behind the older run
    poll.poll(loop, actor="timer-poll/1")  # older approved, handed off; newer starts
    wait_job(loop, newer.run_id)
    poll.poll(loop, actor="timer-poll/2")
    queue = loop.storage.queue(loop.settings.commands_queue)
    messages = sorted(queue.receive_messages(max_messages=32), key=lambda m: newer.run_id not in m.content)
    assert len(messages) == 2
    for message in messages:  # the newer run's command first
        commands.handle(loop, message.content.encode(), message_id=message.id, dequeue_count=1, actor="queue/x")
    # THEN the newer model stays live and the older run records why it was not deployed
    assert loop.targets.get("classic").live_run == newer.run_id
    run = loop.store.get("default", older.run_id)
    assert run.targets["classic"]["status"] == "Skipped" and "newer" in run.targets["classic"]["reason"]
    assert run.status == R.DEPLOYED  # nothing failed: skipping is the right outcome


def test_the_classic_endpoint_gets_a_read_only_sas_for_exactly_the_model_for_deploy_sas_days(loop, fresh_emulator):
    import datetime as dt
    from urllib.parse import parse_qs

    outcome = start(loop, "good.csv", GOOD)
    finish(loop, outcome.run_id)
    target = loop.settings.target("classic")
    location = loop.deployer(target).client.resource_location(target.resource_name)
    sas = parse_qs(location["SasBlobToken"].lstrip("?"))
    assert sas["sp"] == ["r"] and sas["sr"] == ["b"]  # read, this one blob: never write or delete
    assert location["RelativeLocation"] == loop.store.get("default", outcome.run_id).outputs["model"]
    expiry = dt.datetime.fromisoformat(sas["se"][0].replace("Z", "+00:00"))
    expected = R.utcnow() + dt.timedelta(days=loop.settings.deploy_sas_days)
    assert abs(expiry - expected) < dt.timedelta(minutes=5)


def test_resubmission_stops_at_max_attempts_and_the_run_fails(env, fresh_emulator, monkeypatch):
    svc = services(target_settings(env, fresh_emulator, RESUBMIT_FAILED_JOBS="true", MAX_ATTEMPTS="3"), monkeypatch)
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": "Always fails."})
    outcome = start(svc, "data.csv", GOOD)
    for _ in range(6):  # more polls than attempts: each failed job is resubmitted until the limit
        run = svc.store.get("default", outcome.run_id)
        if run.ended:
            break
        wait_job(svc, outcome.run_id)
        poll.poll(svc, actor="timer-poll/test")
    run = svc.store.get("default", outcome.run_id)
    assert (run.status, run.attempts) == (R.FAILED, 3)
    assert len(jobs(fresh_emulator)) == 3 and "Always fails." in run.error["message"]


def test_an_arm_update_whose_operation_succeeds_but_changes_nothing_is_not_a_deploy(loop, fresh_emulator):
    from shared import commands

    # GIVEN an ARM web service whose update operations succeed and change nothing
    fresh_emulator.admin("POST", "faults", {"route": "arm.lro", "no_effect": True})
    outcome = start(loop, "data.csv", GOOD)
    wait_job(loop, outcome.run_id)
    poll.poll(loop, actor="timer-poll/test")
    [message] = loop.storage.queue(loop.settings.commands_queue).peek_messages()
    limit = commands.max_dequeue_count()
    for attempt in range(1, limit + 1):
        with pytest.raises(Exception, match="arm"):
            commands.handle(loop, message.content.encode(), message_id=message.id, dequeue_count=attempt, actor="q")
    # THEN reading the definition back caught it: the ARM target failed, verified as not in effect
    run = loop.store.get("default", outcome.run_id)
    assert run.targets["arm"]["status"] == "Failed" and "NotInEffect" in run.targets["arm"]["reason"]
    assert run.targets["classic"]["status"] == "Deployed" and run.status == R.PARTIALLY_DEPLOYED
    assert loop.targets.get("arm").live_run is None


def test_two_deploys_racing_for_one_target_take_turns(loop, fresh_emulator):
    from shared import deploy

    first = start(loop, "a.csv", GOOD)
    wait_job(loop, first.run_id)
    second = start(loop, "b.csv", BETTER)
    poll.poll(loop, actor="timer-poll/1")
    wait_job(loop, second.run_id)
    poll.poll(loop, actor="timer-poll/2")
    runs = [loop.store.get("default", o.run_id) for o in (first, second)]
    target = loop.settings.target("classic")
    # GIVEN a slow classic endpoint, so the first deploy is still updating it when the second starts
    fresh_emulator.admin("POST", "faults", {"route": "classic.patch", "delay": 1.5, "times": 1})
    results: dict[str, object] = {}

    def put(run):
        try:
            results[run.run_id] = deploy.put_live(loop, target, run, actor=f"t/{run.run_id}", kind="forced deploy")
        except deploy.DeployError as exc:
            results[run.run_id] = exc

    racers = [threading.Thread(target=put, args=(run,)) for run in runs]
    racers[0].start()
    time.sleep(0.5)
    racers[1].start()
    for racer in racers:
        racer.join()
    # THEN the second found the target leased and was told to retry; one update reached the service
    assert isinstance(results[runs[0].run_id], deploy.PutResult)
    busy = results[runs[1].run_id]
    assert isinstance(busy, deploy.DeployError) and busy.code == "TargetBusy" and busy.transient
    patches = [r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "classic.patch"]
    assert len(patches) == 1
    assert loop.targets.get("classic").live_run == runs[0].run_id
