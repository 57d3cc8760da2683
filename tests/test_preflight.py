"""Pre-flight checks: an upload that cannot train is a run ended Invalid, before any job is spent on it,
and what is read of the blob is bounded whatever its size."""

from __future__ import annotations

import base64
import json

import pytest

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import preflight
from shared import runs as R
from shared.settings import SettingsError
from tests.conftest import jobs
from tests.test_function_app import put_blob

GOOD = sample_data.generate(200, seed=2).encode()  # columns age, income, tenure, visits, balance, label


# --- the decisions, pure ----------------------------------------------------------------------------


def test_the_header_must_name_every_required_column_exactly():
    assert preflight.header_problem(b"\xef\xbb\xbfage, income,label\r\n1,2,0\n", ["age", "label"], ",") is None
    problem = preflight.header_problem(b"age,income\n1,2\n", ["age", "label", "tenure"], ",")
    assert problem == "its header row lacks label, tenure (it has: age, income)"
    assert preflight.header_problem(b"age\tlabel\n", ["label"], "\t") is None
    assert "longer than 64 KiB" in preflight.header_problem(b"x" * preflight.HEAD_BYTES, ["label"], ",")


def test_rows_are_counted_across_chunk_boundaries_in_constant_memory():
    text = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(1000)) + b"\n\nlast,1"
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]  # lines split anywhere
    assert preflight.count_rows(chunks) == 1001
    assert preflight.count_rows([b"only,a,header\n"]) == 0
    assert preflight.count_rows([b"\xef\xbb", b"\xbfh\n1\n2"]) == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"required": []}, r"has unknown field\(s\) required"),
        ({"required_columns": "label"}, "required_columns: must be a list of column names"),
        ({"min_rows": 0}, "min_rows: must be a whole number of at least 1"),
        ({"max_bytes": True}, "max_bytes: must be a whole number of at least 1"),
    ],
)
def test_rules_are_parsed_exactly(raw, expected):
    with pytest.raises(SettingsError, match=expected):
        preflight.parse_rules(raw, "PIPELINES pipeline 'census' preflight")


# --- through the registered functions ---------------------------------------------------------------


@pytest.fixture
def world(app_env, fresh_emulator, monkeypatch):
    def make(rules: dict):
        monkeypatch.setenv("PREFLIGHT", json.dumps(rules))
        env = {**app_env, "PREFLIGHT": json.dumps(rules)}
        host = LocalHost(function_app.app, env, visibility_timeout=0)
        from shared.workflow import get_services

        return env, host, get_services()

    return make


def test_a_blob_missing_a_required_column_is_invalid_with_no_job_sent_and_no_slot_taken(world, fresh_emulator):
    env, host, svc = world({"required_columns": ["age", "label"]})
    put_blob(env, "no-label.csv", b"age,income\n" + b"1,2\n" * 100)
    host.scan_blobs()
    [run] = svc.store.list_runs("default")
    assert run.status == R.INVALID and run.error["code"] == "InvalidTrainingData"
    assert (
        run.error["message"]
        == "'" + env["TRAINING_CONTAINER"] + "/no-label.csv': its header row lacks label (it has: age, income)"
    )
    assert jobs(fresh_emulator) == [] and svc.store.get_slot("default").active_run is None
    host.scan_blobs()  # a redelivery changes nothing
    assert len(list(svc.store.list_runs("default"))) == 1
    # the fixed re-upload is new data, as usual
    put_blob(env, "no-label.csv", GOOD)
    host.scan_blobs()
    fixed = next(r for r in svc.store.list_runs("default") if r.run_id != run.run_id)
    assert fixed.status == R.RUNNING and len(jobs(fresh_emulator)) == 1
    assert any(h.get("event") == "pre-flight: header has age, label" for h in fixed.history)


def test_too_few_rows_and_too_many_bytes_are_invalid(world, fresh_emulator):
    env, host, svc = world({"min_rows": 50, "max_bytes": 10_000})
    put_blob(env, "short.csv", b"age,label\n" + b"1,0\n" * 10)
    put_blob(env, "long.csv", b"age,label\n" + b"1,0\n" * 5000)
    host.scan_blobs()
    runs = {r.blob_name: r for r in svc.store.list_runs("default")}
    assert (
        runs["short.csv"].status == R.INVALID
        and "has 10 data rows, fewer than min_rows 50" in runs["short.csv"].error["message"]
    )
    assert runs["long.csv"].status == R.INVALID and "more than max_bytes 10000" in runs["long.csv"].error["message"]
    assert jobs(fresh_emulator) == []


def huge_blob(env, name: str, header: bytes) -> int:
    """A 1 GiB blob made of one 4 MiB block listed 256 times (cheap for Azurite, real to a reader)."""
    from azure.storage.blob import BlobBlock, BlobClient

    client = BlobClient.from_connection_string(env["AzureWebJobsStorage"], env["TRAINING_CONTAINER"], name)
    block = header + b"1,2,3,4,5,0\n" * ((4 * 1024 * 1024 - len(header)) // 12)
    block_id = base64.b64encode(b"block-0").decode()
    client.stage_block(block_id, block)
    client.commit_block_list([BlobBlock(block_id)] * 256)
    return client.get_blob_properties().size


def test_a_1_gib_blobs_pre_flight_reads_a_bounded_number_of_bytes(world, fresh_emulator):
    env, host, svc = world({"required_columns": ["age", "label"], "min_rows": 10})
    header = b"age,income,tenure,visits,balance,label\n"
    svc.storage.ensure_container(env["TRAINING_CONTAINER"])
    size = huge_blob(env, "huge.csv", header)
    assert size > 1024**3 - 4 * 1024 * 1024
    from shared import workflow

    blob = svc.storage.blob_ref(env["TRAINING_CONTAINER"], "huge.csv")
    finding = workflow.preflight_check(svc, svc.settings.pipelines[0], blob)
    assert finding.problem is None and finding.bytes_read <= preflight.HEAD_BYTES
    assert finding.notes == [
        "header has age, label",
        f"min_rows not checked: {size} bytes is more than the 16 MiB counted",
    ]
    # and through the blob trigger: a 1 GiB upload without a required column is refused as fast
    huge_blob(env, "huge-bad.csv", b"age,income,tenure,visits,balance,target\n")
    host.scan_blobs()
    bad = next(r for r in svc.store.list_runs("default") if r.blob_name == "huge-bad.csv")
    assert bad.status == R.INVALID and "lacks label" in bad.error["message"]


def test_pre_flight_rules_per_pipeline_and_no_flat_preflight_beside_pipelines(app_env, fresh_emulator):
    from shared.settings import Settings

    pipelines = [
        {
            "name": "census",
            "trainer": {"kind": "bes", "jobs_url": app_env["BES_JOBS_URL"], "api_key_setting": "K"},
            "preflight": {"required_columns": ["label"], "min_rows": 100},
        }
    ]
    env = {**app_env, "PIPELINES": json.dumps(pipelines), "K": "key-xyz-123456789"}
    [census] = Settings.from_env(env).pipelines
    assert census.preflight == preflight.Rules(("label",), None, 100)
    with pytest.raises(SettingsError, match="Setting PREFLIGHT: is for the single pipeline"):
        Settings.from_env({**env, "PREFLIGHT": "{}"})
