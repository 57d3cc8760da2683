"""No secret — API key, account key, identity header, token, SAS signature — in any log line, table
entity, queue message or page, whether it came labelled or not: redaction is by value as well as by
pattern (``shared/redact.py``), and the scans below look for the values the world actually used."""

import json
import logging

import pytest
import requests

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from localdev.services import AZURITE_KEY
from shared import redact
from tests.conftest import API_KEY
from tests.scan import assert_no_secret, log_text, secrets_used, written
from tests.test_function_app import put_blob, runs_of, wait_for_job_end

GOOD = sample_data.generate(800, seed=3, label_noise=0.1).encode()
RUN = "20261125T101500Z-1a2b3c4d5e6f7a8b"


@pytest.fixture
def logs(caplog):
    """Logging as deployed: the app's loggers at DEBUG, the Azure SDKs at WARNING."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("azure").setLevel(logging.WARNING)
    return caplog


@pytest.fixture
def host(loop_env):
    instance = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    yield instance
    instance.stop()


def send(loop_env, text: str) -> None:
    from shared.workflow import get_services

    get_services().storage.queue(loop_env["COMMANDS_QUEUE"]).send_message(text)


def scan(loop_env, emulator, logs, **pages) -> None:
    from shared.workflow import get_services

    places = written(loop_env["AzureWebJobsStorage"], loop_env["RUNS_TABLE"], log_text(logs), **pages)
    assert_no_secret(places, secrets_used(emulator, get_services()))


def test_a_whole_loop_with_failures_leaves_no_secret_anywhere(loop_env, fresh_emulator, host, logs):
    # GIVEN a BES error whose text carries a SAS, as a real service error may echo a URL
    fresh_emulator.admin(
        "POST",
        "faults",
        {
            "route": "bes.submit",
            "status": 400,
            "times": 1,
            "body": {
                "error": {
                    "code": "BadArgument",
                    "message": "Invalid argument provided.",
                    "details": [
                        {
                            "code": "InvalidBlob",
                            "message": "https://acct.blob.core.windows.net/c/b.csv?sv=2020&sig=SECRETSIG123456",
                        }
                    ],
                }
            },
        },
    )
    put_blob(loop_env, "rejected-by-bes.csv")
    host.scan_blobs()
    # WHEN the whole loop runs, including a deploy that keeps failing and a bad command
    put_blob(loop_env, "good.csv", GOOD)
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": "classic.patch", "no_effect": True})
    host.fire_timer("poll_runs")
    for _ in range(host.max_dequeue_count + 1):
        host.pump_queues()
    send(
        loop_env,
        json.dumps({"type": "deploy", "version": 1, "run_id": "x", "api_key": API_KEY, "sas": "?sig=abcdefghijk"}),
    )
    host.pump_queues()
    # THEN nothing written anywhere carries a secret (and the scan saw real material)
    places = written(loop_env["AzureWebJobsStorage"], loop_env["RUNS_TABLE"], log_text(logs))
    assert "SECRETSIG" not in places["table"] and "sig=REDACTED" in places["table"]
    assert "poison" in places["queues"] or host.max_dequeue_count
    scan(loop_env, fresh_emulator, logs)


def test_a_sas_quoted_in_failed_job_details_is_redacted_in_the_run_the_log_and_the_api(
    loop_env, fresh_emulator, host, logs, monkeypatch
):
    # GIVEN jobs that fail quoting their own input: the URL with its SAS, and the bare signature
    monkeypatch.setenv("RESUBMIT_FAILED_JOBS", "true")
    monkeypatch.setenv("MAX_ATTEMPTS", "2")
    quoted = "Error reading {input_url} (the signature {input_signature} was refused)."
    fresh_emulator.admin("POST", "faults", {"route": "bes.job", "fail": quoted, "times": 2})
    put_blob(loop_env, "data.csv", GOOD)
    # WHEN the first job fails and is resubmitted, and the second fails for good
    host.scan_blobs()
    for _ in range(2):
        wait_for_job_end(fresh_emulator)
        host.fire_timer("poll_runs")
    [run] = runs_of(loop_env)
    assert run.status == "Failed" and run.attempts == 2
    assert "Error reading" in run.error["message"] and "sig=REDACTED" in run.error["message"]
    resubmitted = next(h for h in run.history if h.get("to") == "Requested" and h.get("from") == "Running")
    assert "failed; resubmitting: Module execution encountered an error. Error reading" in resubmitted["reason"]
    # THEN neither the SAS nor its signature is in the run, the history, a log line or the status API
    key = "status-key-for-the-scan"
    base = host.serve_http(key)
    api = requests.get(f"{base}/api/runs/{run.run_id}", params={"code": key}, timeout=10).text
    runs = requests.get(f"{base}/api/runs", params={"code": key}, timeout=10).text
    page = requests.get(f"{base}/api/status", params={"code": key}, timeout=10).text
    assert "Error reading" in api
    scan(loop_env, fresh_emulator, logs, api=api, runs=runs, page=page.replace(key, ""))


def test_a_key_echoed_without_any_label_is_redacted_by_value(loop_env, fresh_emulator, host, logs):
    # GIVEN a BES 400 whose message repeats the API key with nothing around it to match a pattern
    body = {"error": {"code": "BadArgument", "message": f"Credential {API_KEY} is not valid here", "details": 7}}
    fresh_emulator.admin("POST", "faults", {"route": "bes.submit", "status": 400, "times": 1, "body": body})
    put_blob(loop_env, "data.csv", GOOD)
    # WHEN the upload is delivered (and its error, whose details are not even a list, recorded)
    [invocation] = host.scan_blobs()
    # THEN the run records the service's error without the key
    [run] = runs_of(loop_env)
    assert invocation.ok and run.status == "Failed"
    assert run.error["code"] == "BadArgument" and run.error["message"] == "Credential REDACTED is not valid here"
    scan(loop_env, fresh_emulator, logs)


def test_a_secret_under_a_field_nobody_expected_never_reaches_the_command_log(loop_env, fresh_emulator, host, logs):
    # GIVEN a sender who put the keys under fields the contract does not have
    body = {"type": "deploy", "version": 1, "run_id": RUN, "note": API_KEY, "x": AZURITE_KEY, "request_id": "r-1"}
    send(loop_env, json.dumps(body))
    # WHEN it is delivered
    [invocation] = host.pump_queues()
    # THEN it is rejected for the unknown fields, and its excerpt keeps neither key
    from shared.workflow import get_services

    entry = get_services().commands.get("req:r-1")
    assert invocation.ok and entry["status"] == "Rejected" and "Additional properties" in entry["reason"]
    assert entry["raw"].count("REDACTED") == 2
    scan(loop_env, fresh_emulator, logs)


def test_a_secret_cut_by_the_excerpt_leaves_no_prefix_behind(loop_env, fresh_emulator, host, logs):
    # GIVEN a message whose key starts a few characters before the 1,000-character excerpt ends
    prefix = '{"type": "retrain", "version": 1, "reason": "'
    text = prefix + "a" * (995 - len(prefix)) + API_KEY + '"}'
    send(loop_env, text)
    host.pump_queues()
    from shared.workflow import get_services

    [entry] = get_services().commands.list()
    # THEN the excerpt ends in (part of) the mask, never in the first characters of the key
    assert entry["raw"].startswith(prefix) and len(entry["raw"]) == 1000
    assert API_KEY[:5] not in entry["raw"] and entry["raw"].endswith("REDAC")


def test_every_form_of_a_held_secret_is_redacted():
    # a secret the app holds, as text may carry it: raw, URL-encoded, JSON-escaped, inside a longer token
    secret = "Zm9v+YmFy/c2VjcmV0=="
    redact.hold(secret)
    for text in (secret, "k%3D" + secret.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"), f"x{secret}y"):
        assert "c2VjcmV0" not in redact.redact(text), text
    assert redact.redact(json.dumps({"k": secret})) == '{"k": "REDACTED"}'
    # short values are never held: they would mask ordinary words
    redact.hold("short")
    assert redact.redact("a short word") == "a short word"


def test_a_sas_the_app_minted_is_redacted_by_value_even_without_its_label(svc):
    token = svc.storage.blob_sas(svc.settings.training_container, "x.csv", "r", redact_expiry())
    signature = next(part[4:] for part in token.lstrip("?").split("&") if part.startswith("sig="))
    from urllib.parse import unquote

    assert redact.redact(f"signature {unquote(signature)} refused") == "signature REDACTED refused"


def redact_expiry():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)


def test_every_table_write_is_redacted_whoever_wrote_it(svc):
    # a write that no other layer redacted (this one bypasses the run model altogether)
    svc.store.table.create_entity({"PartitionKey": "_x", "RowKey": "y", "note": f"key {API_KEY}"})
    svc.store.table.upsert_entity({"PartitionKey": "_x", "RowKey": "z", "note": f"AccountKey={AZURITE_KEY}"})
    assert svc.store.table.get_entity("_x", "y")["note"] == "key REDACTED"
    assert svc.store.table.get_entity("_x", "z")["note"] == "AccountKey=REDACTED"


def test_every_log_record_is_redacted_whoever_logs_it(settings, caplog):
    log = logging.getLogger("somewhere.else")
    log.warning("the key is %s", API_KEY)
    try:
        raise RuntimeError(f"the service said {API_KEY}")
    except RuntimeError:
        log.exception("it failed")
    text = log_text(caplog)
    assert "the key is REDACTED" in text and "RuntimeError: the service said REDACTED" in text
    assert API_KEY not in text and API_KEY not in caplog.text
