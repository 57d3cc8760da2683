"""The emulator's managed online endpoints are strict where the protocol is (§5 of
``../shared/reference/azure-ml-v2-protocol.md``): raw HTTP, each rule asserted by the reason given."""

import time

import pytest
import requests

from tests.conftest import upload
from tests.test_emulator_predictive import token
from tests.test_emulator_v2 import API, command_job, wait_status


@pytest.fixture
def online(fresh_emulator, svc):
    """The seeded workspace's Key endpoint, an ARM token, and one registered model version."""
    fresh_emulator.admin("POST", "v2/datastores", {"name": "training", "container": svc.settings.training_container})
    workspace = fresh_emulator.url + fresh_emulator.info["v2_workspace"]
    headers = {"Authorization": f"Bearer {token(fresh_emulator)}"}
    upload(svc, "data.csv")
    requests.put(f"{workspace}/jobs/job-o", params=API, headers=headers, json=command_job(), timeout=5)
    wait_status(workspace, headers, "job-o")
    model = {"properties": {"modelType": "mlflow_model", "modelUri": "azureml://jobs/job-o/outputs/model/paths/"}}
    url = f"{workspace}/models/census/versions/1"
    assert requests.put(url, params=API, headers=headers, json=model, timeout=5).status_code == 201
    return workspace, headers, fresh_emulator.info["v2_workspace"] + "/models/census/versions/1"


def wait_operation(response, headers, timeout=10):
    operation = response.headers["Azure-AsyncOperation"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(operation, headers=headers, timeout=5).json()
        if status["status"] != "InProgress":
            return status
        time.sleep(0.05)
    raise AssertionError("the operation did not end")


def deployment_body(model_id, **properties):
    return {
        "location": "westus",
        "sku": {"name": "Default", "capacity": 1},
        "properties": {"endpointComputeType": "Managed", "model": model_id, **properties},
    }


def put_deployment(workspace, headers, name, model_id, endpoint="census-online"):
    url = f"{workspace}/onlineEndpoints/{endpoint}/deployments/{name}"
    response = requests.put(url, params=API, headers=headers, json=deployment_body(model_id), timeout=5)
    assert response.status_code == 201, response.text
    return wait_operation(response, headers)


def put_endpoint(workspace, headers, traffic, mirror=None, endpoint="census-online", auth="Key"):
    body = {"location": "westus", "properties": {"authMode": auth, "traffic": traffic}}
    if mirror is not None:
        body["properties"]["mirrorTraffic"] = mirror
    return requests.put(f"{workspace}/onlineEndpoints/{endpoint}", params=API, headers=headers, json=body, timeout=5)


def score(endpoint_resource, credential, rows=((0.1, 0.3, -0.2, 0.5, -0.4),), deployment=None):
    columns = ["age", "income", "tenure", "visits", "balance"]
    headers = {"Authorization": f"Bearer {credential}"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    body = {"input_data": {"columns": columns, "index": list(range(len(rows))), "data": [list(r) for r in rows]}}
    return requests.post(endpoint_resource["properties"]["scoringUri"], headers=headers, json=body, timeout=5)


def test_a_deployment_is_a_long_running_put_and_loads_the_registered_model(online):
    workspace, headers, model_id = online
    url = f"{workspace}/onlineEndpoints/census-online/deployments/blue"
    response = requests.put(url, params=API, headers=headers, json=deployment_body(model_id), timeout=5)
    assert response.status_code == 201 and response.json()["properties"]["provisioningState"] == "Creating"
    assert response.headers["x-ms-async-operation-timeout"] == "PT1H"
    assert wait_operation(response, headers)["status"] == "Succeeded"
    got = requests.get(url, params=API, headers=headers, timeout=5).json()
    assert got["properties"]["provisioningState"] == "Succeeded" and got["properties"]["model"] == model_id
    missing = deployment_body(model_id.replace("versions/1", "versions/9"))
    nine = requests.put(url.replace("blue", "green"), params=API, headers=headers, json=missing, timeout=5)
    assert nine.status_code == 404 and "census:9" in nine.json()["error"]["message"]
    bad = requests.put(url.replace("blue", "9green"), params=API, headers=headers, json=deployment_body(model_id))
    assert bad.status_code == 400 and "not valid" in bad.json()["error"]["message"]


def test_traffic_and_mirror_maps_are_checked_as_the_spec_says(online):
    workspace, headers, model_id = online
    put_deployment(workspace, headers, "blue", model_id)
    put_deployment(workspace, headers, "green", model_id)
    cases = [
        ({"blue": 90}, None, "sum to 100"),
        ({"blue": 100, "red": 0}, None, "does not exist"),
        ({"blue": 100}, {"green": 60}, "utmost 50"),
        ({"blue": 50, "green": 50}, {"green": 10}, "both live and mirror"),
        ({"blue": 100}, {"green": 10, "blue": 5}, "Only one deployment"),
        ({"blue": 100.0}, None, "whole percentages"),
    ]
    for traffic, mirror, reason in cases:
        refused = put_endpoint(workspace, headers, traffic, mirror)
        assert refused.status_code == 400 and reason in refused.json()["error"]["message"], (traffic, mirror)
    accepted = put_endpoint(workspace, headers, {"blue": 100}, {"green": 20})
    assert accepted.status_code == 200 and wait_operation(accepted, headers)["status"] == "Succeeded"
    got = requests.get(f"{workspace}/onlineEndpoints/census-online", params=API, headers=headers).json()
    assert got["properties"]["traffic"] == {"blue": 100} and got["properties"]["mirrorTraffic"] == {"green": 20}
    # The PUT replaces the whole endpoint: one that leaves mirrorTraffic out loses it, as the docs warn.
    wait_operation(put_endpoint(workspace, headers, {"blue": 100}), headers)
    got = requests.get(f"{workspace}/onlineEndpoints/census-online", params=API, headers=headers).json()
    assert got["properties"]["mirrorTraffic"] == {}
    patch = requests.patch(
        f"{workspace}/onlineEndpoints/census-online",
        params=API,
        headers=headers,
        json={"properties": {"traffic": {"green": 100}}},
        timeout=5,
    )
    assert patch.status_code == 400 and "only tags and identity" in patch.json()["error"]["message"]


def test_one_endpoint_operation_at_a_time_and_no_deleting_a_deployment_with_traffic(online, fresh_emulator):
    workspace, headers, model_id = online
    put_deployment(workspace, headers, "blue", model_id)
    fresh_emulator.admin("POST", "config", {"lro_seconds": 1.0})
    first = put_endpoint(workspace, headers, {"blue": 100})
    second = put_endpoint(workspace, headers, {"blue": 100})
    assert second.status_code == 409 and "in progress" in second.json()["error"]["message"]
    wait_operation(first, headers)
    fresh_emulator.admin("POST", "config", {"lro_seconds": 0.2})
    url = f"{workspace}/onlineEndpoints/census-online/deployments/blue"
    refused = requests.delete(url, params=API, headers=headers, timeout=5)
    assert refused.status_code == 400 and "has traffic" in refused.json()["error"]["message"]
    put_deployment(workspace, headers, "green", model_id)
    gone = requests.delete(url.replace("blue", "green"), params=API, headers=headers, timeout=5)
    assert gone.status_code == 202 and "Location" in gone.headers
    deadline = time.monotonic() + 10
    while requests.get(gone.headers["Location"], headers=headers, timeout=5).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    listed = requests.get(f"{workspace}/onlineEndpoints/census-online/deployments", params=API, headers=headers)
    assert [d["name"] for d in listed.json()["value"]] == ["blue"]


def test_scoring_takes_the_credential_of_the_auth_mode_and_routes_by_traffic_or_header(online, fresh_emulator):
    workspace, headers, model_id = online
    for endpoint, auth in (
        ("census-online", "Key"),
        ("census-online-aml", "AMLToken"),
        ("census-online-aad", "AADToken"),
    ):
        put_deployment(workspace, headers, "blue", model_id, endpoint)
        resource = requests.get(f"{workspace}/onlineEndpoints/{endpoint}", params=API, headers=headers).json()
        assert score(resource, "nope", deployment="blue").status_code == 401
        none_live = score(resource, "nope")
        assert none_live.status_code == 401  # authorization comes before routing
        if auth == "Key":
            keys = requests.post(f"{workspace}/onlineEndpoints/{endpoint}/listKeys", params=API, headers=headers)
            credential = keys.json()["primaryKey"]
        elif auth == "AMLToken":
            answer = requests.post(f"{workspace}/onlineEndpoints/{endpoint}/token", params=API, headers=headers)
            credential = answer.json()["accessToken"]
            assert answer.json()["tokenType"] == "Bearer" and isinstance(answer.json()["expiryTimeUtc"], int)
        else:
            credential = token(fresh_emulator, "https://ml.azure.com")
            assert score(resource, token(fresh_emulator)).status_code == 401  # an ARM token is refused
        unrouted = score(resource, credential)
        assert unrouted.status_code == 404 and "No valid deployments" in unrouted.json()["error"]["message"]
        two = [(0.1, 0.3, -0.2, 0.5, -0.4), (-0.9, 0.1, 1.3, -0.5, -0.6)]
        direct = score(resource, credential, rows=two, deployment="blue")
        assert direct.status_code == 200 and len(direct.json()) == 2 and all(0 < p < 1 for p in direct.json())
        wait_operation(put_endpoint(workspace, headers, {"blue": 100}, endpoint=endpoint, auth=auth), headers)
        assert score(resource, credential).json() == direct.json()[:1]
    wrong_mode = requests.post(f"{workspace}/onlineEndpoints/census-online-aml/listKeys", params=API, headers=headers)
    assert wrong_mode.status_code == 400 and "not keys" in wrong_mode.json()["error"]["message"]
    short = score(resource, credential, rows=[(0.1, 0.3, -0.2)])
    assert short.status_code == 400 and "one value per column" in short.json()["error"]["message"]


def test_faults_fail_a_provisioning_and_degrade_a_deployment_once_it_is_live(online, fresh_emulator):
    workspace, headers, model_id = online
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.provision", "fail": "image build failed", "times": 1})
    assert put_deployment(workspace, headers, "blue", model_id)["error"]["message"] == "image build failed"
    url = f"{workspace}/onlineEndpoints/census-online"
    got = requests.get(url + "/deployments/blue", params=API, headers=headers).json()
    assert got["properties"]["provisioningState"] == "Failed"
    refused = put_endpoint(workspace, headers, {"blue": 100})
    assert refused.status_code == 400 and "Failed: it cannot take traffic" in refused.json()["error"]["message"]
    fresh_emulator.admin("POST", "faults", {"route": "v2.online.degrade", "fail": "out of memory", "path": "green"})
    put_deployment(workspace, headers, "green", model_id)
    resource = requests.get(url, params=API, headers=headers).json()
    key = requests.post(url + "/listKeys", params=API, headers=headers).json()["primaryKey"]
    assert score(resource, key, deployment="green").status_code == 200  # healthy until it is live
    wait_operation(put_endpoint(workspace, headers, {"green": 100}), headers)
    degraded = score(resource, key, deployment="green")
    assert degraded.status_code == 500 and degraded.json()["error"]["message"] == "out of memory"
    summary = next(e for e in fresh_emulator.admin("GET", "v2/online") if e["endpoint"] == "census-online")
    assert summary["deployments"]["green"]["failed"] == 1 and summary["traffic"] == {"green": 100}
