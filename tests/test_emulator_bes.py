"""The emulator is strict where the protocol is: raw HTTP requests, checked against the reference."""

import copy
import time

import pytest
import requests

from emulator import sample_data, training
from tests.conftest import API_KEY
from tests.test_bes_client import client, request_for, wait_for

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def post(emulator, body, *, params=None, headers=HEADERS, path=""):
    params = {"api-version": "2.0"} if params is None else params
    return requests.post(emulator.bes_jobs_url + path, json=body, params=params, headers=headers, timeout=10)


def detail(response):
    return response.json()["error"]["details"][0]["code"]


def test_submit_answers_the_job_id_as_a_quoted_json_string(svc, fresh_emulator):
    response = post(fresh_emulator, request_for(svc)[0])
    assert response.status_code == 200
    assert response.text.startswith('"') and response.text.endswith('"')
    assert len(response.json()) == 32


@pytest.mark.parametrize("params", [{}, {"api-version": "1.0"}])
def test_api_version_2_0_is_required(svc, fresh_emulator, params):
    response = post(fresh_emulator, request_for(svc)[0], params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadArgument"
    assert detail(response) == "BadVersionCall"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_compared_case_insensitively(svc, fresh_emulator, scheme):
    response = post(fresh_emulator, request_for(svc)[0], headers={"Authorization": f"{scheme} {API_KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize("auth", [None, f"Basic {API_KEY}", "Bearer not-the-key"])
def test_missing_or_wrong_credentials_are_401(svc, fresh_emulator, auth):
    headers = {} if auth is None else {"Authorization": auth}
    response = post(fresh_emulator, request_for(svc)[0], headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "Unauthorized"
    assert detail(response) == "ScoreRequestUnauthorized"


def mutate(request, change):
    body = copy.deepcopy(request)
    change(body)
    return body


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda b: b.update(Input=b["Inputs"]["input1"]), "DuplicateInputInBatchCall"),
        (lambda b: b.pop("Inputs"), "BatchJobInputsNotSpecified"),
        (lambda b: b.update(Inputs={"Input1": b["Inputs"]["input1"]}), "InvalidInputNames"),
        (lambda b: b.update(Outputs={"output1": b["Outputs"]["output1"]}), "MissingRequiredOutputOverrides"),
        (lambda b: b.update(Outputs={}), "MissingOutputOverrideSpecification"),  # overrides of nothing
        (lambda b: b["Outputs"].update(output3=b["Outputs"]["output2"]), "InvalidOutputOverrideName"),
        (lambda b: b.update(inputs=b.pop("Inputs")), "RequestBodyInvalid"),  # camelCase is not the protocol
        (lambda b: b.update(GolbalParameters={}), "RequestBodyInvalid"),  # the typo from a public README
        (lambda b: b["Inputs"]["input1"].pop("SasBlobToken"), "MissingInputBlobInformation"),
        (lambda b: b["Inputs"]["input1"].update(RelativeLocation="nocontainer"), "InputBlobRelativeLocationInvalid"),
        (lambda b: b["Outputs"]["output2"].update(RelativeLocation="models/x/eval.txt"), "InvalidBlobExtension"),
        (
            lambda b: b["Inputs"]["input1"].update(
                RelativeLocation=b["Inputs"]["input1"]["RelativeLocation"] + ".gone"
            ),
            "InvalidBlobExtension",
        ),
        (
            lambda b: b["Inputs"]["input1"].update(
                SasBlobToken=b["Inputs"]["input1"]["SasBlobToken"].split("&se=")[0] + "&se=2001-01-01T00%3A00%3A00Z"
            ),
            "ExpiryTimeInThePast",
        ),
    ],
)
def test_invalid_requests_get_the_documented_detail_code(svc, fresh_emulator, change, code):
    response = post(fresh_emulator, mutate(request_for(svc)[0], change))
    assert response.status_code == 400, response.text
    assert detail(response) == code


def test_a_missing_input_blob_is_blob_not_found(svc, fresh_emulator):
    request, _ = request_for(svc)
    svc.storage.blobs.get_blob_client(svc.settings.training_container, "data.csv").delete_blob()
    response = post(fresh_emulator, request)
    assert response.status_code == 400 and detail(response) == "BlobNotFound"


def test_unknown_global_parameters_are_rejected_and_known_ones_accepted(svc, fresh_emulator):
    request, _ = request_for(svc)
    response = post(fresh_emulator, mutate(request, lambda b: b.update(GlobalParameters={"random seed": 1})))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadUserArgument" and detail(response) == "UnexpectedParameter"
    assert post(fresh_emulator, mutate(request, lambda b: b.update(GlobalParameters={"Random seed": 1}))).ok


def test_empty_and_non_json_bodies_are_rejected(fresh_emulator):
    empty = requests.post(fresh_emulator.bes_jobs_url, params={"api-version": "2.0"}, headers=HEADERS, timeout=5)
    assert detail(empty) == "RequestIsEmpty"
    garbage = requests.post(
        fresh_emulator.bes_jobs_url, params={"api-version": "2.0"}, headers=HEADERS, data=b"{nope", timeout=5
    )
    assert detail(garbage) == "RequestBodyInvalid"


def test_status_body_has_exactly_the_documented_keys(svc, fresh_emulator):
    job_id = post(fresh_emulator, request_for(svc)[0]).json()
    body = requests.get(
        f"{fresh_emulator.bes_jobs_url}/{job_id}", params={"api-version": "2.0"}, headers=HEADERS, timeout=5
    ).json()
    assert body == {"StatusCode": "NotStarted", "Results": None, "Details": None}


def test_a_noisier_dataset_trains_a_worse_model(svc, fresh_emulator):
    # GIVEN a clean and a heavily mislabelled dataset of the same shape
    bes = client(fresh_emulator)
    aucs = {}
    for name, noise in (("clean.csv", 0.02), ("noisy.csv", 0.4)):
        data = sample_data.generate(600, seed=11, label_noise=noise).encode()
        request, outputs = request_for(svc, name, data)
        job_id = bes.submit(request)
        bes.start(job_id)
        assert wait_for(bes, job_id).status == "Finished"
        # THEN the evaluation CSV written through the output reference carries the documented columns
        csv_text = svc.storage.blobs.get_blob_client(*outputs["evaluation"].split("/", 1)).download_blob().readall()
        header, row = csv_text.decode().strip().splitlines()
        assert header.split(",") == list(training.EVALUATION_COLUMNS)
        aucs[name] = float(row.split(",")[4])
        model = training.load_model(
            svc.storage.blobs.get_blob_client(*outputs["model"].split("/", 1)).download_blob().readall()
        )
        assert model["features"] == list(sample_data.FEATURES)
    assert aucs["clean.csv"] > aucs["noisy.csv"] + 0.1, aucs


def test_data_without_the_label_column_fails_the_job_with_details(svc, fresh_emulator):
    bes = client(fresh_emulator)
    job_id = bes.submit(request_for(svc, "nolabel.csv", b"a,b\n" + b"1,2\n" * 50)[0])
    bes.start(job_id)
    status = wait_for(bes, job_id)
    assert status.status == "Failed" and status.results is None
    assert 'Column with name or index "label" not found' in status.details


def test_an_injected_job_failure_fails_the_next_job_only(svc, fresh_emulator):
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": "Out of memory in Train Model.", "times": 1})
    bes = client(fresh_emulator)
    first = bes.submit(request_for(svc, "one.csv")[0])
    second = bes.submit(request_for(svc, "two.csv")[0])
    bes.start(first)
    time.sleep(0.05)
    bes.start(second)
    assert "Out of memory" in wait_for(bes, first).details
    assert wait_for(bes, second).status == "Finished"


@pytest.mark.parametrize("absent", [lambda b: b.pop("Outputs"), lambda b: b.update(Outputs=None)])
def test_without_outputs_they_go_to_the_workspace_storage_under_names_of_its_choosing(svc, fresh_emulator, absent):
    """The reference: Outputs are optional; without them the outputs go to the workspace's default
    storage under a random name (and ``null`` is allowed for absent parts, as the v1 sample sends)."""
    bes = client(fresh_emulator)
    job_id = bes.submit(mutate(request_for(svc)[0], absent))
    bes.start(job_id)
    assert wait_for(bes, job_id).status == "Finished"
    status = requests.get(f"{fresh_emulator.bes_jobs_url}/{job_id}", params={"api-version": "2.0"}, headers=HEADERS)
    results = status.json()["Results"]
    assert sorted(results) == ["output1", "output2"]
    for name, extension in (("output1", ".ilearner"), ("output2", ".csv")):
        ref = results[name]
        assert ref["RelativeLocation"] == f"experimentoutput/{job_id}/{name}{extension}"
        blob = requests.get(ref["BaseLocation"] + ref["RelativeLocation"] + ref["SasBlobToken"], timeout=10)
        assert blob.status_code == 200 and blob.content
    assert (
        "AUC"
        in requests.get(
            results["output2"]["BaseLocation"]
            + results["output2"]["RelativeLocation"]
            + results["output2"]["SasBlobToken"],
            timeout=10,
        ).text
    )


def test_an_input_on_storage_the_emulator_cannot_reach_fails_the_job_with_details_not_a_500(svc, fresh_emulator):
    far = "DefaultEndpointsProtocol=https;AccountName=faraway;AccountKey=" + "A" * 86 + "=="
    body = mutate(
        request_for(svc)[0],
        lambda b: b["Inputs"].update(input1={"ConnectionString": far, "RelativeLocation": "training/data.csv"}),
    )
    bes = client(fresh_emulator)
    job_id = bes.submit(body)  # accepted: BES reads its inputs when the job runs
    bes.start(job_id)
    status = wait_for(bes, job_id, timeout=15)
    assert status.status == "Failed"
    assert "storage host faraway.blob.core.windows.net cannot be reached from this emulator" in status.details
