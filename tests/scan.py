"""The secret scan: every secret a test world used, looked for in everything the app wrote.

Secrets: the API key, the Azurite account key, the identity header, every managed-identity token the
emulator issued, and every SAS signature the app handed a service (the BES jobs' inputs and outputs,
each classic endpoint's model), raw and URL-encoded. Places: every table entity, every message of
every queue (base64-decoded too), the log records, and any page or API body a test passes in.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from urllib.parse import parse_qs, quote

from azure.data.tables import TableClient
from azure.storage.queue import QueueServiceClient

from localdev.services import AZURITE_KEY
from tests.conftest import API_KEY

SAS_SIGNATURE = re.compile(r"sig=(?!REDACTED)[A-Za-z0-9%+/=]{8,}")
BEARER = re.compile(r"Bearer\s+(?!REDACTED)[A-Za-z0-9\-._~+/=]{8,}")


def _signature(token: str | None) -> list[str]:
    values = parse_qs((token or "").lstrip("?")).get("sig") or []
    return [form for sig in values for form in (sig, quote(sig, safe=""))]


def secrets_used(emulator, svc=None) -> list[str]:
    found = [API_KEY, AZURITE_KEY, emulator.info["identity_header"], *emulator.admin("GET", "tokens")]
    for job in emulator.admin("GET", "jobs"):
        request = job["request"] or {}
        for ref in [*(request.get("Inputs") or {}).values(), *(request.get("Outputs") or {}).values()]:
            found += _signature(ref.get("SasBlobToken"))
    for target in svc.settings.targets if svc else ():
        if target.kind == "classic":
            location = svc.deployer(target).client.resource_location(target.resource_name) or {}
            found += _signature(location.get("SasBlobToken"))
        if target.kind == "azureml-online":  # the endpoint's scoring key (or AML token) the probes used
            deployer = svc.deployer(target)
            found.append(deployer.scoring_credential("Key"))
    return [s for s in found if s]


def written(connection_string: str, table: str, logs: str, **pages: str) -> dict[str, str]:
    """What the app wrote: table entities, queue messages (as stored and base64-decoded), logs, pages."""
    entities = list(TableClient.from_connection_string(connection_string, table).list_entities())
    queues = QueueServiceClient.from_connection_string(connection_string)
    messages = []
    for queue in queues.list_queues():
        for message in queues.get_queue_client(queue.name).peek_messages(32):
            messages.append(message.content)
            with contextlib.suppress(binascii.Error, ValueError):
                messages.append(base64.b64decode(message.content, validate=True).decode("utf-8", "replace"))
    return {
        "table": json.dumps(entities, default=str),
        "queues": json.dumps(messages),
        "log": logs,
        **pages,
    }


def assert_no_secret(places: dict[str, str], secrets: list[str]) -> None:
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:4]}…) in the {where}"
        assert not SAS_SIGNATURE.search(text), f"a SAS signature in the {where}: {SAS_SIGNATURE.search(text)}"
        assert not BEARER.search(text), f"a bearer token in the {where}"
        assert "AccountKey=" not in text.replace("AccountKey=REDACTED", ""), f"an account key in the {where}"


def log_text(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
