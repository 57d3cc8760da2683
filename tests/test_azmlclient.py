"""The emulator held to a client nobody here wrote: ``azmlclient`` 2.6.0, a published BES/RRS client
(PyPI ``azmlclient``, smarie/python-azureml-client). Its parsers refuse what real services never send:
an RRS table not typed ``"table"``, a job id that is not a quoted string, a status without
``StatusCode``/``Results``. It sends ``"Outputs": null`` when the caller names no outputs, and a start
without a body."""

import importlib
import importlib.util
import io
import sys
import time
import types

import pytest
import requests

from tests.conftest import API_KEY, upload

ROWS = [
    {"age": 0.5, "income": -1.0, "tenure": 1.2, "visits": 0.1, "balance": -0.3},
    {"age": -1.5, "income": 1.1, "tenure": -0.8, "visits": 0.0, "balance": 0.4},
]


@pytest.fixture(scope="module")
def azml():
    """``azmlclient.base`` without running the package's ``__init__``: that imports ``clients_config``,
    whose ``autoclass.autodict`` decorator fails on Python 3.11 (it assigns ``__bases__``, then falls
    back to Python 2's ``im_func``). The modules used here never need it."""
    spec = importlib.util.find_spec("azmlclient")
    assert spec is not None, "azmlclient is in requirements-dev.txt: run ./dev.sh test to install it"
    if "azmlclient" not in sys.modules:
        package = types.ModuleType("azmlclient")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["azmlclient"] = package
    import pandas

    for kind in (pandas.Series, pandas.DataFrame):  # pandas 2 dropped the alias azmlclient still calls
        if not hasattr(kind, "iteritems"):
            kind.iteritems = kind.items
    return importlib.import_module("azmlclient.base")


def batch_client(azml):
    """A ``BatchClient`` without its constructor's check for the legacy ``azure-storage==0.33`` SDK:
    that is only for its own blob upload helpers; these tests pass blob references themselves."""
    client = azml.BatchClient.__new__(azml.BatchClient)
    azml.BaseHttpClient.__init__(client)
    return client


def frame(rows):
    import pandas

    return pandas.DataFrame(rows)


def test_rrs_of_a_classic_endpoint_reads_with_azmlclient(azml, fresh_emulator):
    endpoint = requests.get(
        fresh_emulator.info["classic_endpoint_url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    ).json()
    outputs = azml.execute_rr(API_KEY, endpoint["ApiLocation"], inputs={"input1": frame(ROWS)})
    scored = outputs["output1"]
    assert list(scored.columns[-2:]) == ["Scored Labels", "Scored Probabilities"]
    assert len(scored) == 2 and all(0 <= float(p) <= 1 for p in scored["Scored Probabilities"])


def test_rrs_of_a_new_web_service_in_swagger_format_reads_with_azmlclient(azml, fresh_emulator):
    from tests.test_emulator_predictive import arm

    swagger = arm(fresh_emulator, "GET").json()["properties"]["swaggerLocation"]
    base_url = swagger.removesuffix("/swagger.json")
    swaggered = azml.execute_rr(API_KEY, base_url, inputs={"input1": frame(ROWS)}, use_swagger_format=True)
    tabled = azml.execute_rr(API_KEY, base_url, inputs={"input1": frame(ROWS)})
    assert list(swaggered["output1"]["Scored Probabilities"]) == list(tabled["output1"]["Scored Probabilities"])


def test_a_bes_job_without_outputs_runs_with_azmlclient(azml, svc, fresh_emulator, azurite):
    blob = upload(svc, "azmlclient.csv")
    client = batch_client(azml)
    body = client.create_request_body(
        input_refs={
            "input1": {
                "ConnectionString": azurite.connection_string,
                "RelativeLocation": f"{blob.container}/{blob.name}",
            }
        }
    )
    assert '"Outputs": null' in body  # what azmlclient sends when no outputs are named
    base_url = fresh_emulator.bes_jobs_url.removesuffix("/jobs")
    job_id = client.execute_batch_createJob(base_url, API_KEY, body)
    client.execute_batch_startJob(base_url, API_KEY, job_id)
    results, deadline = None, time.monotonic() + 20
    while results is None and time.monotonic() < deadline:
        results = client.read_status_or_result(client.execute_batch_getJobStatusOrResult(base_url, API_KEY, job_id))
        time.sleep(0.1)
    assert results is not None, "the job did not finish"
    evaluation = results["output2"]
    text = requests.get(
        evaluation["BaseLocation"] + evaluation["RelativeLocation"] + evaluation["SasBlobToken"], timeout=10
    ).text
    import pandas

    assert 0.5 < float(pandas.read_csv(io.StringIO(text))["AUC"][0]) <= 1
    client.execute_batch_deleteJob(base_url, API_KEY, job_id)


def test_a_failed_bes_job_is_read_as_failed_by_azmlclient(azml, svc, fresh_emulator):
    """The status body's shape is what azmlclient's reader expects, failures included."""
    upload(svc, "nolabel.csv", b"a,b\n" + b"1,2\n" * 50)
    client = batch_client(azml)
    body = client.create_request_body(
        input_refs={
            "input1": {
                "ConnectionString": svc.settings.storage_connection,
                "RelativeLocation": f"{svc.settings.training_container}/nolabel.csv",
            }
        }
    )
    base_url = fresh_emulator.bes_jobs_url.removesuffix("/jobs")
    job_id = client.execute_batch_createJob(base_url, API_KEY, body)
    client.execute_batch_startJob(base_url, API_KEY, job_id)
    deadline = time.monotonic() + 20
    with pytest.raises(azml.JobExecutionException, match='Column with name or index "label" not found'):
        while time.monotonic() < deadline:
            client.read_status_or_result(client.execute_batch_getJobStatusOrResult(base_url, API_KEY, job_id))
            time.sleep(0.1)
