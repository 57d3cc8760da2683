"""No secret — API key, account key, SAS signature, bearer token — in any log line, table entity or
queue message of a whole loop, including its failures."""

import json
import logging
import re

from azure.data.tables import TableClient
from azure.storage.queue import QueueServiceClient

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from localdev.services import AZURITE_KEY
from tests.conftest import API_KEY
from tests.test_function_app import put_blob, wait_for_job_end

SAS_SIGNATURE = re.compile(r"sig=(?!REDACTED)[A-Za-z0-9%+/=]{8,}")
BEARER = re.compile(r"Bearer\s+(?!REDACTED)[A-Za-z0-9\-._~+/=]{8,}")


def test_a_whole_loop_with_failures_leaves_no_secret_anywhere(loop_env, fresh_emulator, caplog):
    # GIVEN logging as deployed (the app's loggers at DEBUG, the Azure SDKs at WARNING)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("azure").setLevel(logging.WARNING)
    # AND a BES error whose text carries a SAS, as a real service error may echo a URL
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
    host = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    put_blob(loop_env, "rejected-by-bes.csv")
    host.scan_blobs()
    # WHEN the whole loop runs, including a deploy that keeps failing and a bad command
    put_blob(loop_env, "good.csv", sample_data.generate(800, seed=3, label_noise=0.1).encode())
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    fresh_emulator.admin("POST", "faults", {"route": "classic.patch", "no_effect": True})
    host.fire_timer("poll_runs")
    for _ in range(host.max_dequeue_count + 1):
        host.pump_queues()
    bad = json.dumps({"type": "deploy", "version": 1, "run_id": "x", "api_key": API_KEY, "sas": "?sig=abcdefghijk"})
    from shared.workflow import get_services

    get_services().storage.queue(loop_env["COMMANDS_QUEUE"]).send_message(bad)
    host.pump_queues()
    # THEN nothing written anywhere carries a secret
    secrets = [API_KEY, AZURITE_KEY, fresh_emulator.info["identity_header"]]
    conn = loop_env["AzureWebJobsStorage"]
    entities = list(TableClient.from_connection_string(conn, loop_env["RUNS_TABLE"]).list_entities())
    queues = QueueServiceClient.from_connection_string(conn)
    messages = [m.content for q in queues.list_queues() for m in queues.get_queue_client(q.name).peek_messages(32)]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    written = {"log": logged, "table": json.dumps(entities, default=str), "queues": json.dumps(messages)}
    assert (
        len(entities) > 5
        and "SECRETSIG" not in written["table"]
        and "poison" in "".join(q.name for q in queues.list_queues())
    )
    for where, text in written.items():
        for secret in secrets:
            assert secret not in text, f"a secret in the {where}"
        assert not SAS_SIGNATURE.search(text), f"a SAS signature in the {where}: {SAS_SIGNATURE.search(text)}"
        assert not BEARER.search(text), f"a bearer token in the {where}"
        assert "AccountKey=" not in text.replace("AccountKey=REDACTED", ""), f"an account key in the {where}"
