"""The Azure ML v2 emulator is strict where the protocol is: raw HTTP, checked against the reference
(``../shared/reference/azure-ml-v2-protocol.md``) and its spec examples."""

import time

import pytest
import requests

from emulator import sample_data
from tests.conftest import upload
from tests.test_emulator_predictive import token

API = {"api-version": "2025-12-01"}


@pytest.fixture
def v2(fresh_emulator, svc):
    """The seeded workspace, its datastore on this test's training container, and an ARM token."""
    fresh_emulator.admin("POST", "v2/datastores", {"name": "training", "container": svc.settings.training_container})
    workspace = fresh_emulator.url + fresh_emulator.info["v2_workspace"]
    return workspace, {"Authorization": f"Bearer {token(fresh_emulator)}"}


def command_job(blob="data.csv", **changes):
    properties = {
        "jobType": "Command",
        "command": "python train.py --data ${{inputs.training_data}} --model ${{outputs.model}}",
        "environmentId": "azureml:sklearn:1",
        "experimentName": "autopilot",
        "inputs": {"training_data": {"jobInputType": "uri_file", "uri": f"azureml://datastores/training/paths/{blob}"}},
        "outputs": {"model": {"jobOutputType": "mlflow_model", "mode": "Upload"}},
        "tags": {"autopilot.run": "r1"},
        **changes,
    }
    return {"properties": properties}


def wait_status(workspace, headers, name, statuses=("Completed", "Failed", "Canceled"), timeout=20):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{workspace}/jobs/{name}", params=API, headers=headers, timeout=5).json()
        status = status["properties"]["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in statuses:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"job {name} did not end: {seen}")


def mlflow_base(workspace, headers):
    uri = requests.get(workspace, params=API, headers=headers, timeout=5).json()["properties"]["mlFlowTrackingUri"]
    assert uri.startswith("azureml://127.0.0.1:")
    return uri.replace("azureml://", "http://", 1) + "/api/2.0/mlflow"


def test_the_workspace_names_its_mlflow_tracking_uri_and_needs_an_arm_token_and_api_version(fresh_emulator, v2):
    workspace, headers = v2
    body = requests.get(workspace, params=API, headers=headers, timeout=5).json()
    assert body["properties"]["mlFlowTrackingUri"].endswith("/mlflow/v1.0" + fresh_emulator.info["v2_workspace"])
    assert body["properties"]["discoveryUrl"]
    missing = requests.get(workspace, headers=headers, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingApiVersionParameter"
    wrong = {"Authorization": f"Bearer {token(fresh_emulator, 'https://ml.azure.com')}"}
    assert requests.get(workspace, params=API, headers=wrong, timeout=5).status_code == 401  # audience checked
    unknown = requests.get(workspace.replace("autopilot-ws", "nope"), params=API, headers=headers, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ResourceNotFound"


def test_a_datastore_points_at_a_container_of_the_emulators_storage_account(v2, svc):
    workspace, headers = v2
    store = requests.get(f"{workspace}/datastores/training", params=API, headers=headers, timeout=5).json()
    assert store["properties"]["containerName"] == svc.settings.training_container
    assert store["properties"]["accountName"] == "devstoreaccount1"
    assert requests.get(f"{workspace}/datastores/nope", params=API, headers=headers, timeout=5).status_code == 404


def test_a_command_job_trains_logs_its_evaluation_and_a_retried_put_is_the_same_job(v2, svc):
    workspace, headers = v2
    upload(svc, "data.csv")
    url = f"{workspace}/jobs/autopilot-job-1"
    created = requests.put(url, params=API, headers=headers, json=command_job(), timeout=5)
    assert created.status_code == 201 and created.json()["properties"]["status"] == "NotStarted"
    again = requests.put(url, params=API, headers=headers, json=command_job(tags={"x": "y"}), timeout=5)
    assert again.status_code == 200 and again.json()["properties"]["tags"] == {"x": "y"}  # tags replace
    different = requests.put(url, params=API, headers=headers, json=command_job(blob="other.csv"), timeout=5)
    assert different.status_code == 400 and different.json()["error"]["code"] == "UserError"
    seen = wait_status(workspace, headers, "autopilot-job-1")
    assert seen[-1] == "Completed" and "Running" in seen and seen.index("Running") < seen.index("Completed")
    base = mlflow_base(workspace, headers)
    run = requests.get(f"{base}/runs/get", params={"run_id": "autopilot-job-1"}, headers=headers, timeout=5).json()
    metrics = {m["key"]: m["value"] for m in run["run"]["data"]["metrics"]}
    assert 0.6 < metrics["AUC"] <= 1 and run["run"]["info"]["status"] == "FINISHED"
    history = requests.get(
        f"{base}/metrics/get-history", params={"run_id": "autopilot-job-1", "metric_key": "AUC"}, headers=headers
    ).json()
    assert [m["value"] for m in history["metrics"]] == [metrics["AUC"]]
    output = requests.get(url, params=API, headers=headers, timeout=5).json()["properties"]["outputs"]["model"]
    assert output["uri"].startswith("azureml://datastores/workspaceartifactstore/paths/")


def test_a_model_version_must_name_a_completed_jobs_output_and_is_immutable(v2, svc):
    workspace, headers = v2
    upload(svc, "data.csv")
    requests.put(f"{workspace}/jobs/job-m", params=API, headers=headers, json=command_job(), timeout=5)
    model = {"properties": {"modelType": "mlflow_model", "modelUri": "azureml://jobs/job-m/outputs/model/paths/"}}
    url = f"{workspace}/models/census/versions/1"
    early = requests.put(url, params=API, headers=headers, json=model, timeout=5)
    assert early.status_code == 400 and "completed job" in early.json()["error"]["message"]
    wait_status(workspace, headers, "job-m")
    assert requests.put(url, params=API, headers=headers, json=model, timeout=5).status_code == 201
    assert requests.put(url, params=API, headers=headers, json=model, timeout=5).status_code == 200  # same again
    other = {"properties": {**model["properties"], "modelUri": "azureml://jobs/job-m/outputs/nope/paths/"}}
    assert requests.put(url, params=API, headers=headers, json=other, timeout=5).status_code == 400
    got = requests.get(url, params=API, headers=headers, timeout=5).json()
    assert got["id"].endswith("/models/census/versions/1") and got["properties"]["provisioningState"] == "Succeeded"
    listed = requests.get(f"{workspace}/models/census/versions", params=API, headers=headers, timeout=5).json()
    assert [v["name"] for v in listed["value"]] == ["1"]


def test_a_batch_endpoint_invocation_needs_an_ml_token_and_logs_metrics_on_a_child_run(fresh_emulator, v2, svc):
    workspace, headers = v2
    upload(svc, "data.csv")
    endpoint = requests.get(f"{workspace}/batchEndpoints/retrain-census", params=API, headers=headers).json()
    scoring = endpoint["properties"]["scoringUri"]
    body = {
        "properties": {
            "InputData": {
                "training_data": {"JobInputType": "UriFile", "Uri": "azureml://datastores/training/paths/data.csv"}
            }
        }
    }
    assert requests.post(scoring, headers=headers, json=body, timeout=5).status_code == 401  # an ARM token
    ml = {"Authorization": f"Bearer {token(fresh_emulator, 'https://ml.azure.com')}"}
    job = requests.post(scoring, headers=ml, json=body, timeout=5).json()
    assert wait_status(workspace, headers, job["name"])[-1] == "Completed"
    base = mlflow_base(workspace, headers)
    parent = requests.get(f"{base}/runs/get", params={"run_id": job["name"]}, headers=headers, timeout=5).json()
    assert parent["run"]["data"]["metrics"] == []
    search = {
        "experiment_ids": [parent["run"]["info"]["experiment_id"]],
        "filter": f"tags.mlflow.parentRunId = '{job['name']}'",
    }
    [child] = requests.post(f"{base}/runs/search", headers=headers, json=search, timeout=5).json()["runs"]
    assert "AUC" in {m["key"] for m in child["data"]["metrics"]}
    camel = {
        "properties": {
            "inputData": {
                "training_data": {"jobInputType": "UriFile", "uri": "azureml://datastores/training/paths/data.csv"}
            }
        }
    }
    assert requests.post(scoring, headers=ml, json=camel, timeout=5).status_code == 200  # either casing


def test_degraded_data_trains_a_worse_model(v2, svc):
    workspace, headers = v2
    upload(svc, "good.csv", sample_data.generate(800, seed=3, label_noise=0.05).encode())
    upload(svc, "bad.csv", sample_data.generate(800, seed=3, label_noise=0.45).encode())
    for name, blob in (("good", "good.csv"), ("bad", "bad.csv")):
        requests.put(f"{workspace}/jobs/{name}", params=API, headers=headers, json=command_job(blob=blob), timeout=5)
    base = mlflow_base(workspace, headers)
    auc = {}
    for name in ("good", "bad"):
        wait_status(workspace, headers, name)
        run = requests.get(f"{base}/runs/get", params={"run_id": name}, headers=headers, timeout=5).json()["run"]
        auc[name] = {m["key"]: m["value"] for m in run["data"]["metrics"]}["AUC"]
    assert auc["good"] > auc["bad"] + 0.1


def test_cancel_is_a_202_with_a_location_that_answers_200_once_canceled(fresh_emulator, v2, svc):
    fresh_emulator.admin("POST", "config", {"job_seconds": 5})
    workspace, headers = v2
    upload(svc, "data.csv")
    requests.put(f"{workspace}/jobs/to-cancel", params=API, headers=headers, json=command_job(), timeout=5)
    cancel = requests.post(f"{workspace}/jobs/to-cancel/cancel", params=API, headers=headers, timeout=5)
    assert cancel.status_code == 202 and cancel.headers["Retry-After"]
    assert wait_status(workspace, headers, "to-cancel")[-1] == "Canceled"
    assert requests.get(cancel.headers["Location"], headers=headers, timeout=5).status_code == 200


def test_an_injected_failure_fails_the_job_with_its_error(fresh_emulator, v2, svc):
    fresh_emulator.admin("POST", "faults", {"route": "v2.job", "fail": "Out of memory in the train step.", "times": 1})
    workspace, headers = v2
    upload(svc, "data.csv")
    requests.put(f"{workspace}/jobs/failing", params=API, headers=headers, json=command_job(), timeout=5)
    assert wait_status(workspace, headers, "failing")[-1] == "Failed"
    job = requests.get(f"{workspace}/jobs/failing", params=API, headers=headers, timeout=5).json()
    assert job["properties"]["error"]["message"] == "Out of memory in the train step."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"jobType": "Pipeline"}, "Only jobType 'Command'"),
        ({"command": ""}, "properties.command is required"),
        ({"outputs": {}}, "mlflow_model"),
        ({"inputs": {"training_data": {"jobInputType": "uri_file", "uri": "https://x/y.csv"}}}, "azureml://datastores"),
    ],
)
def test_invalid_jobs_are_user_errors_naming_the_problem(v2, change, message):
    workspace, headers = v2
    response = requests.put(f"{workspace}/jobs/bad", params=API, headers=headers, json=command_job(**change), timeout=5)
    assert response.status_code == 400 and response.json()["error"]["code"] == "UserError"
    assert message in response.json()["error"]["message"]
