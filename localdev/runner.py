"""A small local stand-in for the Functions host (Core Tools cannot be installed here).

It drives the functions registered in ``function_app.app`` by their binding metadata — container
path, connection setting, ``%SETTING%`` expressions — against Azurite, calling the same handlers the
host would. Like the host it keeps blob receipts (name + ETag), retries a failing blob up to
``poisonBlobThreshold`` from ``host.json`` and then writes the ``webjobs-blobtrigger-poison`` message.
Receipts live in memory: a restarted runner re-delivers every blob, which the handlers must (and do)
tolerate — the same at-least-once delivery the real trigger has.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from azure.storage.blob import BlobServiceClient

log = logging.getLogger("localdev.runner")
ROOT = Path(__file__).resolve().parent.parent
_EXPRESSION = re.compile(r"%([^%]+)%")


_INDEXED: dict[int, list[Any]] = {}


def index(app: Any) -> list[Any]:
    """The app's functions, built once: ``FunctionApp.get_functions()`` may run only once per app
    (a second call fails its unique-name check), just as the worker indexes once."""
    if id(app) not in _INDEXED:
        _INDEXED[id(app)] = app.get_functions()
    return _INDEXED[id(app)]


@dataclass
class LocalContext:
    """What ``func.Context`` offers a handler: enough for logs and actor names."""

    function_name: str
    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_directory: str = str(ROOT)
    trace_context: Any = None
    retry_context: Any = None
    thread_local_storage: Any = field(default_factory=SimpleNamespace)


@dataclass
class Invocation:
    function: str
    trigger: str
    ok: bool
    error: str | None = None


class LocalHost:
    def __init__(self, app: Any, settings: Mapping[str, str], host_json: Path = ROOT / "host.json") -> None:
        # The host hands app settings to the worker as environment variables; do the same.
        os.environ.update(settings)
        self.functions = {f.get_function_name(): f for f in index(app)}
        host = json.loads(Path(host_json).read_text())
        self.poison_threshold = int(host.get("extensions", {}).get("blobs", {}).get("poisonBlobThreshold", 5))
        self.receipts: set[tuple[str, str, str, str]] = set()
        self.failures: Counter = Counter()

    @staticmethod
    def resolve(value: str) -> str:
        """Resolve ``%NAME%`` binding expressions from app settings, failing as the host does."""

        def lookup(match: re.Match) -> str:
            name = match.group(1)
            if not os.environ.get(name):
                raise LookupError(f"'%{name}%' does not resolve to a value.")
            return os.environ[name]

        return _EXPRESSION.sub(lookup, value)

    def _blob_service(self, connection: str) -> BlobServiceClient:
        value = os.environ.get(connection)
        if not value:
            raise LookupError(f"connection setting {connection!r} is not set")
        return BlobServiceClient.from_connection_string(value)

    def _bindings(self, trigger_type: str):
        for name, function in self.functions.items():
            trigger = json.loads(function.get_function_json())["bindings"][0]
            if trigger["type"] == trigger_type:
                yield name, function, trigger

    def scan_blobs(self) -> list[Invocation]:
        """One scan of every blob-triggered function's container: invoke for each new blob version."""
        from azurefunctions.extensions.base import Datum
        from azurefunctions.extensions.bindings.blob import BlobClient, BlobClientConverter

        invocations = []
        for name, function, trigger in self._bindings("blobTrigger"):
            container, _, pattern = self.resolve(trigger["path"]).partition("/")
            if pattern not in ("{name}", ""):
                raise NotImplementedError(f"{name}: the local runner supports only '<container>/{{name}}' paths")
            service = self._blob_service(trigger["connection"])
            container_client = service.get_container_client(container)
            if not container_client.exists():
                continue
            for blob in container_client.list_blobs():
                key = (name, container, blob.name, blob.etag)
                if key in self.receipts:
                    continue
                # The same model-binding data the host sends for an SDK-type binding.
                content = json.dumps(
                    {"Connection": trigger["connection"], "ContainerName": container, "BlobName": blob.name}
                )
                datum = Datum(
                    type="model_binding_data",
                    value=SimpleNamespace(
                        version="1.0", source="AzureStorageBlobs", content_type="application/json", content=content
                    ),
                )
                client = BlobClientConverter.decode(datum, trigger_metadata=None, pytype=BlobClient)
                invocation = self._invoke(name, function, "blobTrigger", {trigger["name"]: client})
                invocations.append(invocation)
                if invocation.ok:
                    self.receipts.add(key)
                    continue
                self.failures[key] += 1
                if self.failures[key] >= self.poison_threshold:
                    self._poison_blob(trigger["connection"], name, container, blob)
                    self.receipts.add(key)
        return invocations

    def _poison_blob(self, connection: str, function: str, container: str, blob: Any) -> None:
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        queue = QueueClient.from_connection_string(
            os.environ[connection], "webjobs-blobtrigger-poison", message_encode_policy=TextBase64EncodePolicy()
        )
        with contextlib.suppress(Exception):
            queue.create_queue()
        queue.send_message(
            json.dumps(
                {
                    "Type": "BlobTrigger",
                    "FunctionId": f"Host.Functions.{function}",
                    "BlobType": "BlockBlob",
                    "ContainerName": container,
                    "BlobName": blob.name,
                    "ETag": blob.etag,
                }
            )
        )
        log.error("%s: blob %s/%s poisoned after %d failures", function, container, blob.name, self.poison_threshold)

    def _invoke(self, name: str, function: Any, trigger: str, arguments: dict[str, Any]) -> Invocation:
        user_function = function.get_user_function()
        if "context" in inspect.signature(user_function).parameters:
            arguments = {**arguments, "context": LocalContext(function_name=name)}
        try:
            user_function(**arguments)
        except Exception as exc:
            log.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
            return Invocation(name, trigger, ok=False, error=f"{type(exc).__name__}: {exc}")
        return Invocation(name, trigger, ok=True)
