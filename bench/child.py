"""What the benchmarks measure in a fresh interpreter (cold start, memory). Prints one JSON object.

    python -m bench.child app BLOB        import function_app, run the blob trigger on BLOB
    python -m bench.child baseline BLOB   the same service calls, written directly with the SDKs
    python -m bench.child host -          only the imports the Functions host needs (azure-functions, blob binding)
    python -m bench.child memory BLOB     the blob trigger on BLOB, with its peak memory

Settings come from the environment, as the Functions host gives them to the worker.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

STARTED = time.perf_counter()
STORAGE = "AzureWebJobsStorage"  # the Functions host's own spelling


def _context():
    return type("Context", (), {"invocation_id": "bench"})()


def app(blob_name: str) -> dict:
    import function_app

    imported = time.perf_counter()
    from azure.storage.blob import BlobClient

    client = BlobClient.from_connection_string(os.environ[STORAGE], os.environ["TRAINING_CONTAINER"], blob_name)
    function_app.retrain_on_upload.build().get_user_function()(blob=client, context=_context())
    done = time.perf_counter()
    return {"import_s": imported - STARTED, "first_invocation_s": done - imported, "total_s": done - STARTED}


def host(blob_name: str) -> dict:
    """The floor no Python function app avoids: the Functions library and the blob binding extension."""
    import azure.functions  # noqa: F401
    import azurefunctions.extensions.bindings.blob  # noqa: F401

    return {"import_s": time.perf_counter() - STARTED}


def baseline(blob_name: str) -> dict:
    """The blob trigger's service calls with nothing of the app: read the blob's properties, record a run,
    claim the slot, make sure the output container exists, sign the SAS, submit and start the BES job,
    record it. No validation, no history, no lease, no conditional slot."""
    import contextlib
    import datetime as dt
    import uuid

    import requests
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables import TableServiceClient, UpdateMode
    from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

    imported = time.perf_counter()
    env = os.environ
    connection = env[STORAGE]
    parts = dict(p.split("=", 1) for p in connection.split(";") if "=" in p)
    blob = BlobClient.from_connection_string(connection, env["TRAINING_CONTAINER"], blob_name)
    props = blob.get_blob_properties()
    table = TableServiceClient.from_connection_string(connection).create_table_if_not_exists(env["RUNS_TABLE"])
    # BES writes the model and the evaluation into the models container: it must exist before the job
    # runs (the app makes sure once per process; a direct script must too, or its job fails).
    with contextlib.suppress(ResourceExistsError):
        BlobServiceClient.from_connection_string(connection).create_container(env["MODELS_CONTAINER"])
    run_id = uuid.uuid4().hex
    table.create_entity({"PartitionKey": "default", "RowKey": run_id, "etag": props.etag, "status": "Requested"})
    slot = {"PartitionKey": "_pipelines", "RowKey": "default", "active_run": run_id}
    table.upsert_entity(slot)
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)

    base = blob.url[: blob.url.index(f"/{env['TRAINING_CONTAINER']}/") + 1]

    def reference(container: str, name: str, permission: BlobSasPermissions) -> dict:
        key = parts["AccountKey"]
        sas = generate_blob_sas(
            parts["AccountName"], container, name, account_key=key, permission=permission, expiry=expiry
        )
        return {
            "ConnectionString": None,
            "RelativeLocation": f"{container}/{name}",
            "BaseLocation": base,
            "SasBlobToken": "?" + sas,
        }

    out = BlobSasPermissions(create=True, write=True)
    body = {
        "Inputs": {"input1": reference(env["TRAINING_CONTAINER"], blob_name, BlobSasPermissions(read=True))},
        "Outputs": {
            "output1": reference(env["MODELS_CONTAINER"], f"b/{run_id}/model.ilearner", out),
            "output2": reference(env["MODELS_CONTAINER"], f"b/{run_id}/evaluation.csv", out),
        },
        "GlobalParameters": {},
    }
    headers = {"Authorization": f"Bearer {env['BES_API_KEY']}"}
    with requests.Session() as session:
        jobs = env["BES_JOBS_URL"]
        job_id = session.post(f"{jobs}?api-version=2.0", json=body, headers=headers, timeout=30).json()
        session.post(f"{jobs}/{job_id}/start?api-version=2.0", headers=headers, timeout=30).raise_for_status()
    entity = table.get_entity("default", run_id)
    entity.update(status="Running", job_id=job_id)
    table.update_entity(
        entity, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified
    )
    done = time.perf_counter()
    return {"import_s": imported - STARTED, "first_invocation_s": done - imported, "total_s": done - STARTED}


def _peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it does not carry the parent's peak
    across fork and exec)."""
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory(blob_name: str) -> dict:
    import tracemalloc

    from azure.storage.blob import BlobClient

    import function_app

    client = BlobClient.from_connection_string(os.environ[STORAGE], os.environ["TRAINING_CONTAINER"], blob_name)
    handler = function_app.retrain_on_upload.build().get_user_function()
    before = _peak_rss_bytes()
    tracemalloc.start()
    handler(blob=client, context=_context())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = _peak_rss_bytes()
    return {
        "handler_peak_python_bytes": peak,
        "process_peak_rss_bytes": after,
        "peak_rss_growth_in_handler_bytes": after - before,
    }


if __name__ == "__main__":
    mode, blob_name = sys.argv[1], sys.argv[2]
    print(json.dumps({"app": app, "baseline": baseline, "host": host, "memory": memory}[mode](blob_name)))
