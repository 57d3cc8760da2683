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
import datetime as dt
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

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

log = logging.getLogger("localdev.runner")
ROOT = Path(__file__).resolve().parent.parent
_EXPRESSION = re.compile(r"%([^%]+)%")
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


def index(app: Any) -> list[Any]:
    """The app's functions, built once: ``FunctionApp.get_functions()`` may run only once per app
    (a second call fails its unique-name check), just as the worker indexes once."""
    if not hasattr(app, "_localdev_index"):
        app._localdev_index = app.get_functions()
    return app._localdev_index


def _seconds(timespan: str) -> float:
    """``hh:mm:ss`` (host.json TimeSpan) to seconds."""
    hours, minutes, seconds = (float(part) for part in timespan.split(":"))
    return hours * 3600 + minutes * 60 + seconds


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
    def __init__(
        self,
        app: Any,
        settings: Mapping[str, str],
        host_json: Path = ROOT / "host.json",
        visibility_timeout: float | None = None,
    ) -> None:
        # The host hands app settings to the worker as environment variables; do the same.
        os.environ.update(settings)
        self.functions = {f.get_function_name(): f for f in index(app)}
        host = json.loads(Path(host_json).read_text())
        extensions = host.get("extensions", {})
        self.poison_threshold = int(extensions.get("blobs", {}).get("poisonBlobThreshold", 5))
        queues = extensions.get("queues", {})
        self.max_dequeue_count = int(queues.get("maxDequeueCount", 5))
        # host.json's visibilityTimeout (hh:mm:ss) unless a caller wants retries sooner (tests, demo).
        self.visibility_timeout = (
            visibility_timeout
            if visibility_timeout is not None
            else _seconds(queues.get("visibilityTimeout", "00:00:00"))
        )
        self.http_route_prefix = extensions.get("http", {}).get("routePrefix", "api")
        self.receipts: set[tuple[str, str, str, str]] = set()
        self.failures: Counter = Counter()
        self._next_due: dict[str, dt.datetime] = {}
        self._warned: set = set()
        self._http_servers: list = []

    def _warn_once(self, key, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

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
        # No SDK retries (its default spends ~84 s on a failing call): the next scan is the retry.
        return BlobServiceClient.from_connection_string(value, retry_total=0)

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
            try:
                blobs = list(container_client.list_blobs())
            except HttpResponseError as exc:
                # Azurite answers 500 to a listing that holds a name with a control character (Azure
                # itself returns such names Encoded="true"): say so once, keep scanning the others.
                self._warn_once(
                    (container, exc.status_code),
                    "cannot list container %s (HTTP %s): a blob name with a control character? Azurite cannot list "
                    "those; rename or delete it (the other containers are still scanned)",
                    container,
                    exc.status_code,
                )
                continue
            for blob in blobs:
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

    # --- HTTP ----------------------------------------------------------------------------------------

    def serve_http(self, function_key: str, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the HTTP-triggered functions as the host would: ``/<routePrefix>/<route>``, methods as
        declared, and for ``authLevel`` FUNCTION/ADMIN a key in ``?code=`` or ``x-functions-key``."""
        import hmac
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qsl, urlsplit

        import azure.functions as func

        prefix = self.http_route_prefix
        routes = []
        for name, function, trigger in self._bindings("httpTrigger"):
            pattern = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"(?P<\1>[^/]+)", trigger.get("route") or name)
            routes.append(
                (re.compile(f"^/{prefix}/{pattern}$" if prefix else f"^/{pattern}$"), name, function, trigger)
            )
        local = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else the client's delayed ACK adds ~40 ms per keep-alive request

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                status, headers, body = 404, {"Content-Type": "text/plain"}, b"Not Found"
                if parts.path == "/runtime/webhooks/eventgrid":
                    key = params.get("code") or self.headers.get("x-functions-key") or ""
                    length = int(self.headers.get("Content-Length") or 0)
                    payload = self.rfile.read(length) if length else b""
                    if self.command == "OPTIONS":  # the CloudEvents webhook handshake
                        status, headers, body = 200, {"WebHook-Allowed-Origin": "eventgrid.azure.net"}, b""
                    elif self.command != "POST":
                        status, body = 405, b"Method Not Allowed"
                    elif not hmac.compare_digest(key, function_key):
                        status, body = 401, b""
                    else:
                        status, headers, body = local._webhook(params, self.headers, payload)
                    routes_to_try = []
                else:
                    routes_to_try = routes
                for pattern, name, function, trigger in routes_to_try:
                    match = pattern.fullmatch(parts.path)
                    if not match:
                        continue
                    methods = [m.upper() for m in trigger.get("methods") or ["GET", "POST"]]
                    key = params.get("code") or self.headers.get("x-functions-key") or ""
                    if self.command not in methods:
                        status, body = 405, b"Method Not Allowed"
                    elif str(trigger.get("authLevel", "FUNCTION")).upper() != "ANONYMOUS" and not hmac.compare_digest(
                        key, function_key
                    ):
                        status, body = 401, b""
                    else:
                        length = int(self.headers.get("Content-Length") or 0)
                        request = func.HttpRequest(
                            self.command,
                            f"http://{self.headers.get('Host')}{self.path}",
                            headers=dict(self.headers),
                            params=params,
                            route_params=match.groupdict(),
                            body=self.rfile.read(length) if length else b"",
                        )
                        status, headers, body = local._call_http(name, function, trigger, request)
                    break
                self.send_response(status)
                for header, value in headers.items():
                    self.send_header(header, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._http_servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True, name="localhost-http").start()
        return f"http://{host}:{server.server_address[1]}"

    def _call_http(self, name: str, function: Any, trigger: dict, request: Any) -> tuple[int, dict, bytes]:
        user_function = function.get_user_function()
        arguments = {trigger["name"]: request}
        if "context" in inspect.signature(user_function).parameters:
            arguments["context"] = LocalContext(function_name=name)
        try:
            response = user_function(**arguments)
        except Exception as exc:
            log.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
            return 500, {"Content-Type": "text/plain"}, b"Internal Server Error"
        headers = dict(response.headers)
        headers["Content-Type"] = f"{response.mimetype}; charset={response.charset}"
        return response.status_code, headers, response.get_body()

    def stop(self) -> None:
        for server in self._http_servers:
            server.shutdown()
            server.server_close()
        self._http_servers.clear()

    # --- timers ------------------------------------------------------------------------------------

    def tick_timers(self, now: dt.datetime | None = None) -> list[Invocation]:
        """Fire every timer function whose NCRONTAB schedule has come due since the last tick."""
        from croniter import croniter

        now = now or dt.datetime.now(dt.timezone.utc)
        invocations = []
        for name, _function, trigger in self._bindings("timerTrigger"):
            fields = self.resolve(trigger["schedule"]).split()
            # NCRONTAB puts seconds first; croniter takes them as a sixth field at the end.
            cron = " ".join(fields[1:] + fields[:1])
            due = self._next_due.get(name)
            if due is None:
                self._next_due[name] = croniter(cron, now).get_next(dt.datetime)
                continue
            if now >= due:
                self._next_due[name] = croniter(cron, now).get_next(dt.datetime)
                invocations.append(self.fire_timer(name, past_due=(now - due).total_seconds() > 60))
        return invocations

    def fire_timer(self, name: str, past_due: bool = False) -> Invocation:
        """Invoke a timer function now, as a schedule occurrence would."""
        from azure.functions.timer import TimerRequest

        function = self.functions[name]
        trigger = json.loads(function.get_function_json())["bindings"][0]
        return self._invoke(name, function, "timerTrigger", {trigger["name"]: TimerRequest(past_due=past_due)})

    # --- Event Grid ----------------------------------------------------------------------------------

    def post_event(self, event: dict, function_name: str | None = None) -> list[Invocation]:
        """Deliver one Event Grid event (either schema) to the Event Grid-triggered functions (or the one
        named), decoded by the library's own converter as the host's binding does."""
        from azure.functions import meta
        from azure.functions.eventgrid import EventGridEventInConverter

        decoded = EventGridEventInConverter.decode(meta.Datum(json.dumps(event), "json"), trigger_metadata=None)
        return [
            self._invoke(name, function, "eventGridTrigger", {trigger["name"]: decoded})
            for name, function, trigger in self._bindings("eventGridTrigger")
            if function_name in (None, name)
        ]

    def _webhook(self, params: dict, headers, body: bytes) -> tuple[int, dict, bytes]:
        """``POST /runtime/webhooks/eventgrid?functionName=<f>``, as Event Grid delivers to a function:
        a JSON array of events or one CloudEvent; the Event Grid schema's subscription validation is
        answered with its code. Every event of the batch is delivered; a failed one makes it a 500."""
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return 400, {"Content-Type": "text/plain"}, b"not JSON"
        events = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(e, dict) for e in events) or not events:
            return 400, {"Content-Type": "text/plain"}, b"expected an event or an array of events"
        validation = next((e for e in events if e.get("eventType") == VALIDATION_EVENT), None)
        if validation is not None:
            answer = {"validationResponse": (validation.get("data") or {}).get("validationCode")}
            return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()
        name = params.get("functionName", "").removeprefix("Host.Functions.")
        if name not in {n for n, _, _ in self._bindings("eventGridTrigger")}:
            return 404, {"Content-Type": "text/plain"}, b"no such Event Grid function"
        failed = [i for e in events for i in self.post_event(e, name) if not i.ok]
        return (500 if failed else 202), {"Content-Type": "text/plain"}, b""

    # --- queues ------------------------------------------------------------------------------------

    def pump_queues(self, max_messages: int = 32) -> list[Invocation]:
        """Deliver the visible messages of every queue-triggered function's queue, once each.

        Like the host: the body is base64-decoded (an undecodable message goes straight to poison),
        success deletes the message, failure makes it visible again after ``visibilityTimeout``, and a
        message that failed ``maxDequeueCount`` deliveries moves to ``<queue>-poison``.
        """
        import base64
        import binascii

        from azure.functions.queue import QueueMessage
        from azure.storage.queue import QueueClient

        invocations = []
        for name, function, trigger in self._bindings("queueTrigger"):
            queue_name = self.resolve(trigger["queueName"])
            connection = os.environ[trigger["connection"]]
            queue = QueueClient.from_connection_string(connection, queue_name)
            with contextlib.suppress(Exception):
                queue.create_queue()
            for message in queue.receive_messages(
                messages_per_page=max_messages, visibility_timeout=600, max_messages=max_messages
            ):
                try:
                    body = base64.b64decode(message.content, validate=True)
                except (binascii.Error, ValueError):
                    self._poison_message(connection, queue, message, "The input is not a valid Base-64 string.")
                    invocations.append(Invocation(name, "queueTrigger", ok=False, error="not base64"))
                    continue
                argument = QueueMessage(
                    id=message.id,
                    body=body,
                    dequeue_count=message.dequeue_count,
                    insertion_time=message.inserted_on,
                    expiration_time=message.expires_on,
                    pop_receipt=message.pop_receipt,
                )
                invocation = self._invoke(name, function, "queueTrigger", {trigger["name"]: argument})
                invocations.append(invocation)
                if invocation.ok:
                    queue.delete_message(message)
                elif message.dequeue_count >= self.max_dequeue_count:
                    self._poison_message(connection, queue, message, invocation.error)
                else:
                    queue.update_message(message, visibility_timeout=int(self.visibility_timeout))
        return invocations

    def _poison_message(self, connection: str, queue: Any, message: Any, error: str | None) -> None:
        from azure.storage.queue import QueueClient

        poison = QueueClient.from_connection_string(connection, f"{queue.queue_name}-poison")
        with contextlib.suppress(Exception):
            poison.create_queue()
        poison.send_message(message.content)
        queue.delete_message(message)
        log.error(
            "queue %s: message %s moved to %s-poison after %s deliveries: %s",
            queue.queue_name,
            message.id,
            queue.queue_name,
            message.dequeue_count,
            error,
        )

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


if __name__ == "__main__":
    raise SystemExit("localdev.runner is the local host's library, not a command: to run the app locally, ./dev.sh up")
