"""The emulated predictive services are strict: classic management API, ARM web services, identity."""

import pytest
import requests

from shared.arm import ArmError, ArmWebServiceClient
from tests.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def token(emulator, resource="https://management.azure.com"):
    return requests.get(
        emulator.info["identity_endpoint"],
        params={"api-version": "2019-08-01", "resource": resource},
        headers={"X-IDENTITY-HEADER": emulator.info["identity_header"]},
        timeout=5,
    ).json()["access_token"]


def detail(response):
    return response.json()["error"]["details"][0]["code"]


def model_location(svc, path="models/none/model.ilearner"):
    import datetime as dt

    container, blob = path.split("/", 1)
    sas = svc.storage.blob_sas(container, blob, "r", dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return {"BaseLocation": svc.storage.blob_base_location, "RelativeLocation": path, "SasBlobToken": sas}


def test_classic_endpoint_json_has_the_documented_members(fresh_emulator):
    endpoint = requests.get(fresh_emulator.info["classic_endpoint_url"], headers=AUTH, timeout=5).json()
    for key in ("Name", "WorkspaceId", "WebServiceId", "PrimaryKey", "SecondaryKey", "ApiLocation", "Resources"):
        assert key in endpoint
    assert endpoint["Resources"][0]["Name"] == fresh_emulator.info["classic_resource_name"]


def test_classic_patch_needs_a_key(fresh_emulator):
    response = requests.patch(
        fresh_emulator.info["classic_endpoint_url"],
        json={"Resources": []},
        headers={"Authorization": "Bearer nope"},
        timeout=5,
    )
    assert response.status_code == 401 and detail(response) == "ManagementRequestUnauthorized"


@pytest.mark.parametrize(
    ("url_key", "resource", "status", "code"),
    [
        ("classic_default_endpoint_url", None, 400, "UpdateDefaultEndpointNotAllowed"),
        ("classic_endpoint_url", "Unknown [trained model]", 400, "InvalidResourceName"),
        ("classic_endpoint_url", None, 400, "BlobNotFound"),
    ],
)
def test_classic_patch_errors(svc, fresh_emulator, url_key, resource, status, code):
    name = resource or fresh_emulator.info["classic_resource_name"]
    response = requests.patch(
        fresh_emulator.info[url_key],
        headers=AUTH,
        timeout=5,
        json={"Resources": [{"Name": name, "Location": model_location(svc)}]},
    )
    assert response.status_code == status and detail(response) == code


def test_a_classic_patch_with_something_that_is_not_a_model_is_refused(svc, fresh_emulator):
    svc.storage.ensure_container("models")
    svc.storage.blobs.get_blob_client("models", "junk/model.ilearner").upload_blob(b"not a model", overwrite=True)
    response = requests.patch(
        fresh_emulator.info["classic_endpoint_url"],
        headers=AUTH,
        timeout=5,
        json={
            "Resources": [
                {
                    "Name": fresh_emulator.info["classic_resource_name"],
                    "Location": model_location(svc, "models/junk/model.ilearner"),
                }
            ]
        },
    )
    assert response.status_code == 400 and detail(response) == "IncompatibleModel"


def test_arm_needs_a_management_token_and_an_api_version(fresh_emulator):
    url = fresh_emulator.url + fresh_emulator.info["arm_resource_id"]
    assert requests.get(url, params={"api-version": "2017-01-01"}, timeout=5).status_code == 401
    wrong = requests.get(
        url,
        params={"api-version": "2017-01-01"},
        timeout=5,
        headers={"Authorization": f"Bearer {token(fresh_emulator, 'https://storage.azure.com')}"},
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "InvalidAuthenticationToken"
    bad_version = requests.get(
        url,
        params={"api-version": "2015-01-01"},
        timeout=5,
        headers={"Authorization": f"Bearer {token(fresh_emulator)}"},
    )
    assert bad_version.status_code == 400


def test_an_unknown_arm_web_service_answers_the_recorded_404(fresh_emulator):
    url = fresh_emulator.url + fresh_emulator.info["arm_resource_id"].replace("census-predictive", "amlws2463")
    response = requests.get(
        url,
        params={"api-version": "2017-01-01"},
        timeout=5,
        headers={"Authorization": f"Bearer {token(fresh_emulator)}"},
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "NotFound",
            "message": "The specified resource was not found.",
            "details": [
                {
                    "code": "WebServiceNotFound",
                    "message": "No Web Service could be found with the provided name: amlws2463.",
                }
            ],
        }
    }


@pytest.mark.parametrize(
    ("properties", "code"),
    [
        ({"description": "x"}, "MissingPackageType"),
        ({"packageType": "Graph", "storageAccount": {"name": "someoneelse"}}, "CannotChangeStorageAccount"),
    ],
)
def test_arm_patch_validation(fresh_emulator, properties, code):
    response = requests.patch(
        fresh_emulator.url + fresh_emulator.info["arm_resource_id"],
        params={"api-version": "2017-01-01"},
        json={"properties": properties},
        timeout=5,
        headers={"Authorization": f"Bearer {token(fresh_emulator)}"},
    )
    assert response.status_code == 400 and detail(response) == code


def test_arm_patch_runs_a_long_running_operation_that_ends_failed_for_a_missing_model(fresh_emulator):
    import time

    headers = {"Authorization": f"Bearer {token(fresh_emulator)}"}
    url = fresh_emulator.url + fresh_emulator.info["arm_resource_id"]
    definition = requests.get(url, params={"api-version": "2017-01-01"}, headers=headers, timeout=5).json()
    assets = definition["properties"]["assets"]
    assets["asset3"]["locationInfo"]["uri"] = "http://127.0.0.1:1/devstoreaccount1/models/missing.ilearner"
    response = requests.patch(
        url,
        params={"api-version": "2017-01-01"},
        headers=headers,
        timeout=5,
        json={"properties": {"packageType": "Graph", "assets": assets}},
    )
    assert response.status_code == 200
    assert response.json()["properties"] == {"provisioningState": "Provisioning"}
    operation_url = response.headers["Azure-AsyncOperation"]
    statuses = []
    for _ in range(50):
        body = requests.get(operation_url, headers=headers, timeout=5).json()
        statuses.append(body["status"])
        if body["status"] != "Provisioning":
            break
        time.sleep(0.05)
    assert statuses[0] == "Provisioning" and statuses[-1] == "Failed"
    assert body["error"]["code"] and body["percentComplete"] == 1.0
    after = requests.get(url, params={"api-version": "2017-01-01"}, headers=headers, timeout=5).json()
    assert after["properties"]["assets"]["asset3"]["locationInfo"]["uri"].startswith("https://mltestaccount")


def test_the_identity_endpoint_needs_its_header(fresh_emulator):
    response = requests.get(
        fresh_emulator.info["identity_endpoint"],
        timeout=5,
        params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
    )
    assert response.status_code == 401


def test_the_arm_client_never_sends_its_token_to_a_foreign_operation_url():
    class NoToken:
        def get_token(self, scope):
            raise AssertionError("no token may be requested for a foreign URL")

    client = ArmWebServiceClient("https://management.azure.com", NoToken())
    with pytest.raises(ArmError) as caught:
        client._wait("https://collector.example.com/operationsStatus/1?api-version=2017-01-01")
    assert caught.value.code == "UntrustedOperationUrl"


# --- faithful to the spec and to real responses (issue: emulator fidelity) -------------------------------


def arm(emulator, method, path="", **kwargs):
    headers = {"Authorization": f"Bearer {token(emulator)}"}
    return requests.request(
        method,
        emulator.url + emulator.info["arm_resource_id"] + path,
        params={"api-version": "2017-01-01"},
        headers=headers,
        timeout=5,
        **kwargs,
    )


def wait_operation(emulator, response):
    import time

    headers = {"Authorization": f"Bearer {token(emulator)}"}
    for _ in range(100):
        body = requests.get(response.headers["Azure-AsyncOperation"], headers=headers, timeout=5).json()
        if body["status"] != "Provisioning":
            return body
        time.sleep(0.05)
    raise AssertionError("the operation did not end")


def test_list_keys_is_a_get_as_in_the_spec(fresh_emulator):
    keys = arm(fresh_emulator, "GET", "/listKeys")
    assert keys.status_code == 200 and keys.json()["primary"] == API_KEY and keys.json()["secondary"]
    assert arm(fresh_emulator, "POST", "/listKeys").status_code in (404, 405)


def test_a_get_during_an_update_shows_provisioning_and_never_the_storage_key(fresh_emulator):
    fresh_emulator.admin("POST", "config", {"lro_seconds": 1.0})
    definition = arm(fresh_emulator, "GET").json()
    properties = {**definition["properties"], "title": "Retitled"}
    properties["storageAccount"] = {**properties["storageAccount"], "key": "the-storage-key-xyz"}
    response = arm(fresh_emulator, "PUT", json={"location": definition["location"], "properties": properties})
    assert response.status_code == 200
    during = arm(fresh_emulator, "GET").json()
    assert during["properties"]["provisioningState"] == "Provisioning"
    assert wait_operation(fresh_emulator, response)["status"] == "Succeeded"
    after = arm(fresh_emulator, "GET")
    assert after.json()["properties"]["provisioningState"] == "Succeeded"
    assert after.json()["properties"]["title"] == "Retitled"
    assert "the-storage-key-xyz" not in after.text and "key" not in after.json()["properties"]["storageAccount"]
    # read-only members survive a PUT that leaves them out
    stripped = {k: v for k, v in properties.items() if k not in ("createdOn", "swaggerLocation")}
    wait_operation(fresh_emulator, arm(fresh_emulator, "PUT", json={"location": "West US", "properties": stripped}))
    again = arm(fresh_emulator, "GET").json()["properties"]
    assert again["createdOn"] == definition["properties"]["createdOn"]
    assert again["swaggerLocation"] == definition["properties"]["swaggerLocation"]


def test_a_freshly_seeded_service_accepts_a_patch_that_leaves_its_assets_alone(fresh_emulator):
    """The seed's trained-model asset points at the public example's foreign account: an update that
    does not change it must not try to load it."""
    definition = arm(fresh_emulator, "GET").json()
    response = arm(
        fresh_emulator,
        "PATCH",
        json={"properties": {"packageType": "Graph", "description": "x", "assets": definition["properties"]["assets"]}},
    )
    assert wait_operation(fresh_emulator, response)["status"] == "Succeeded"
    assert arm(fresh_emulator, "GET").json()["properties"]["description"] == "x"


def test_put_creates_a_web_service_with_201_as_the_spec_example_does(svc, fresh_emulator):
    headers = {"Authorization": f"Bearer {token(fresh_emulator)}"}
    url = fresh_emulator.url + fresh_emulator.info["arm_resource_id"].replace("census-predictive", "created-ws")
    properties = {k: v for k, v in arm(fresh_emulator, "GET").json()["properties"].items() if k != "assets"}
    properties["storageAccount"] = {"name": "devstoreaccount1", "key": "k"}
    params = {"api-version": "2017-01-01"}
    missing = requests.put(url, params=params, headers=headers, json={"properties": properties}, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "LocationRequired"
    body = {"location": "West US", "tags": {"team": "ml"}, "properties": properties}
    created = requests.put(url, params=params, headers=headers, json=body, timeout=5)
    assert created.status_code == 201
    assert created.json()["properties"]["provisioningState"] == "Provisioning"
    assert created.json()["properties"]["storageAccount"] == {"name": "devstoreaccount1"}
    assert wait_operation(fresh_emulator, created)["status"] == "Succeeded"
    got = requests.get(url, params=params, headers=headers, timeout=5).json()
    assert got["properties"]["provisioningState"] == "Succeeded" and got["tags"] == {"team": "ml"}
    assert got["properties"]["createdOn"] and got["properties"]["swaggerLocation"].endswith("/swagger.json")
    assert requests.put(url, params=params, headers=headers, json=body, timeout=5).status_code == 200  # now an update


ROWS = [{"age": 0.5, "income": -1.0, "tenure": 1.2, "visits": 0.1, "balance": -0.3}]


def rrs_urls(emulator):
    endpoint = requests.get(emulator.info["classic_endpoint_url"], headers=AUTH, timeout=5).json()
    swagger = arm(emulator, "GET").json()["properties"]["swaggerLocation"]
    return {"classic": endpoint["ApiLocation"] + "/execute", "arm": swagger.replace("/swagger.json", "/execute")}


@pytest.mark.parametrize("kind", ["classic", "arm"])
def test_rrs_answers_a_table_typed_table_and_records_with_format_swagger_on_both_service_kinds(fresh_emulator, kind):
    url = rrs_urls(fresh_emulator)[kind]
    names = list(ROWS[0])
    table = {"Inputs": {"input1": {"ColumnNames": names, "Values": [[r[n] for n in names] for r in ROWS]}}}
    plain = requests.post(url, params={"api-version": "2.0", "details": "true"}, headers=AUTH, json=table, timeout=5)
    output = plain.json()["Results"]["output1"]
    assert output["type"] == "table" and "Scored Probabilities" in output["value"]["ColumnNames"]
    records = {"Inputs": {"input1": ROWS}, "GlobalParameters": {}}
    swagger = requests.post(
        url, params={"api-version": "2.0", "format": "swagger"}, headers=AUTH, json=records, timeout=5
    )
    [row] = swagger.json()["Results"]["output1"]
    assert float(row["Scored Probabilities"]) == float(output["value"]["Values"][0][-1])
    # each format refuses the other's body, and the version is required
    wrong = requests.post(url, params={"api-version": "2.0"}, headers=AUTH, json=records, timeout=5)
    assert wrong.status_code == 400 and detail(wrong) == "MissingRequestInput"
    assert requests.post(url, headers=AUTH, json=table, timeout=5).status_code == 400


def test_the_arm_client_refuses_an_asset_name_that_names_a_module(svc, fresh_emulator):
    """A Module holds code, not the trained model: "deploying" to it changed nothing yet looked verified."""
    from shared import arm as arm_module

    definition = arm(fresh_emulator, "GET").json()
    with pytest.raises(ArmError) as caught:
        arm_module.find_asset(definition, "Execute R Script")
    assert caught.value.code == "AssetNotTrainedModel" and "is a Module" in str(caught.value)
    assert arm_module.find_asset(definition, "Retrain Sample [trained model]") == "asset3"
