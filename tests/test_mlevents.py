"""Azure ML workspace events nudge the poll: the Event Grid trigger checks a finished job at once.

The sample events are the Event Grid data-plane spec's (``emulator/data/eventgrid/``, copied verbatim
from ``../shared/reference/examples-v2/eventgrid/``); the rest goes through the registered function."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from shared import deploy, mlevents
from shared import runs as R
from tests.test_function_app import put_blob
from tests.test_rollout import GOOD, requests_to, world  # noqa: F401 - the fixture

SAMPLES = Path(__file__).resolve().parent.parent / "emulator" / "data" / "eventgrid"
STATUS_CHANGED = json.loads((SAMPLES / "run_status_changed.cloudevent.json").read_text())
MODEL_REGISTERED = json.loads((SAMPLES / "model_registered.cloudevent.json").read_text())


def as_event_grid_schema(cloud_event: dict) -> dict:
    return {
        "id": cloud_event["id"],
        "topic": cloud_event["source"],
        "subject": cloud_event["subject"],
        "eventType": cloud_event["type"],
        "eventTime": cloud_event["time"],
        "data": cloud_event["data"],
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def event_for(job: str, kind: str = "RunStatusChanged", status: str = "completed", event_id: str = "e-1") -> dict:
    event = copy.deepcopy(STATUS_CHANGED)
    event["id"], event["type"] = event_id, f"Microsoft.MachineLearningServices.{kind}"
    event["subject"] = f"experiments/{event['data']['experimentId']}/runs/{job}"
    event["data"].update(runId=job, runStatus=status)
    return event


def test_both_envelopes_and_any_key_casing_name_the_job_and_other_events_are_not_ours():
    sample = mlevents.parse(STATUS_CHANGED)
    assert sample.job == "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5" and sample.status == "failed"
    assert mlevents.parse(as_event_grid_schema(STATUS_CHANGED)) == sample
    shouting = {k.upper(): v for k, v in STATUS_CHANGED.items()}
    shouting["DATA"] = {k[0].upper() + k[1:]: v for k, v in STATUS_CHANGED["data"].items()}  # PascalCase data
    assert mlevents.parse(shouting).job == sample.job
    no_data = {**STATUS_CHANGED, "data": {}}  # the run id from the subject instead
    assert mlevents.parse(no_data).job == sample.job
    completed = {**STATUS_CHANGED, "type": "Microsoft.MachineLearningServices.RunCompleted"}
    assert mlevents.parse(completed).job == sample.job
    assert mlevents.parse(MODEL_REGISTERED) is None
    for junk in (None, [], "x", {}, {"type": "Microsoft.MachineLearningServices.RunCompleted", "data": {"runId": 7}}):
        assert mlevents.parse(junk) is None


def test_an_event_moves_a_finished_job_on_without_a_tick_and_repeats_change_nothing(world, fresh_emulator):  # noqa: F811
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    [run] = svc.store.list_runs("census")
    assert run.status == R.RUNNING and run.job_id
    host.post_event(event_for(run.job_id, status="running", event_id="early"))  # not finished yet: nothing
    assert svc.store.get("census", run.run_id).status == R.RUNNING
    deadline = time.monotonic() + 20
    while next(j for j in fresh_emulator.admin("GET", "v2/jobs") if j["name"] == run.job_id)["status"] != "Completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [invocation] = host.post_event(event_for(run.job_id))  # the sample's envelope: "specVersion", camelCase
    assert invocation.ok, invocation.error
    moved = svc.store.get("census", run.run_id)
    assert moved.status == R.DEPLOYING, moved.history  # judged, registered and handed off: no timer fired
    host.pump_queues()
    assert svc.store.get("census", run.run_id).targets["census-online"]["status"] == deploy.ROLLING_OUT
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == 1  # the deployment is being created
    history = len(svc.store.get("census", run.run_id).history)
    for late in (event_for(run.job_id), as_event_grid_schema(event_for(run.job_id, kind="RunCompleted"))):
        assert all(i.ok for i in host.post_event(late))  # a duplicate, then a late one in the other schema
    unknown = host.post_event(event_for("someone-elses-job"))
    assert all(i.ok for i in unknown)
    assert len(svc.store.get("census", run.run_id).history) == history  # nothing changed twice
    assert len(requests_to(fresh_emulator, "v2.online.deployment.put")) == 1


def test_the_local_host_takes_events_on_event_grids_webhook_as_azure_delivers_them(world, fresh_emulator):  # noqa: F811
    import requests

    _, host, _ = world()
    base = host.serve_http("local-key")
    url = f"{base}/runtime/webhooks/eventgrid?functionName=nudge_on_ml_event&code=local-key"
    validation = [
        {
            "id": "v-1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
            "eventTime": "2026-12-08T00:00:00Z",
            "dataVersion": "1",
        }
    ]
    answer = requests.post(url, json=validation, timeout=5)
    assert answer.status_code == 200 and answer.json() == {
        "validationResponse": validation[0]["data"]["validationCode"]
    }
    assert requests.options(url, timeout=5).headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    sample = (SAMPLES / "run_status_changed.cloudevent.json").read_bytes()
    headers = {"Content-Type": "application/cloudevents+json"}
    assert requests.post(url, data=sample, headers=headers, timeout=5).status_code == 202
    assert requests.post(url.replace("local-key", "wrong"), data=sample, headers=headers, timeout=5).status_code == 401
    other = url.replace("nudge_on_ml_event", "poll_runs")
    assert requests.post(other, data=sample, headers=headers, timeout=5).status_code == 404


def test_an_event_for_another_job_leaves_a_running_job_to_the_timer(world, fresh_emulator):  # noqa: F811
    env, host, svc = world()
    put_blob(env, "census/2026-11.csv", GOOD)
    host.scan_blobs()
    [run] = svc.store.list_runs("census")
    checks = len([r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "v2.jobs.get"])
    assert all(i.ok for i in host.post_event(event_for("someone-elses-job")))
    after = len([r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "v2.jobs.get"])
    assert after == checks  # no status call: the event named a job that is no run's
    assert svc.store.get("census", run.run_id).status == R.RUNNING
