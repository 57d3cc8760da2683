"""A small threaded HTTP server with per-route fault injection and an admin API for tests.

Admin API (JSON, under ``/_emulator/``; never subject to faults):

* ``GET  health`` — liveness.
* ``POST reset`` — forget jobs, faults and the request log (services stay).
* ``POST config`` — ``{"job_seconds": 1.0, "lro_seconds": 0.5, "legacy_status_codes": false,
  "v2_metric_children": 1, "online_operation_timeout": "PT1H"}``.
* ``POST faults`` — add a fault: ``{"route": "bes.submit", "status": 503, "retry_after": 1, "times": 2}``,
  ``{"route": "bes.status", "drop": true}`` (close the connection), ``{"route": ..., "delay": 0.5}``,
  ``{"route": ..., "status": 200, "body": "<html>...", "content_type": "text/html"}`` (any answer, any shape),
  ``"after": true`` (the request is carried out first, then its answer is dropped or replaced),
  ``"path": "/services/<id>/"`` (only requests whose path contains it: one service of several),
  ``{"route": "bes.job", "fail": "details text"}`` (the next job fails; ``{input_url}`` and
  ``{input_signature}`` in the text quote the job's input reference, SAS included, as a real error might),
  ``{"route": "arm.lro", "fail": ...}`` (the next ARM update's operation ends Failed), ``{"route": "arm.lro",
  "no_effect": true}`` (it succeeds and changes nothing), ``{"route": "classic.patch", "no_effect": true}``
  (200, nothing changes). ``times`` omitted = always.
* ``DELETE faults`` — clear faults.
* ``GET  requests`` — the request log (route, method, path, status; never headers).
* ``GET  jobs`` — every BES job with its request and state.
* ``GET  tokens`` — every managed-identity token issued (for secret scans).
* ``POST services`` — register a training service ``{"workspace", "service", "api_key", ...}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("emulator")

JSON = "application/json; charset=utf-8"
_DEFAULT_FAULT_ERRORS = {
    429: ("ServiceUnavailable", "RequestThrottled", "Request throttled."),
    500: ("InternalError", "UnknownError", "The server encountered an internal error."),
    503: ("ServiceUnavailable", "RequestThrottled", "Service is temporarily unavailable."),
    504: ("GatewayTimeout", "BackendScoreTimeout", "The request timed out."),
}


def error_body(code: str, message: str, details: list[tuple[str, str]] | None = None) -> dict:
    """The runtime/management error shape: ``{"error": {code, message, details: [{code, message}]}}``."""
    return {
        "error": {"code": code, "message": message, "details": [{"code": c, "message": m} for c, m in (details or [])]}
    }


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(code, message, details), headers or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    route: str
    status: int | None = None
    body: Any = None
    retry_after: float | None = None
    drop: bool = False
    delay: float = 0.0
    fail: str | None = None
    no_effect: bool = False
    after: bool = False  # handle the request first (the work is done), then fault the answer
    path: str | None = None  # only requests whose path contains this (one service of several)
    content_type: str | None = None  # of ``body`` when it is a string (an HTML page, say)
    times: int | None = None
    id: int = 0


class Emulator:
    """Routes, faults and the request log shared by the emulated services."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern, str, Callable[[Request], Response]]] = []
        self.faults: list[Fault] = []
        self.requests: deque[dict] = deque(maxlen=10_000)
        self.config: dict[str, Any] = {
            "job_seconds": 1.0,
            "lro_seconds": 0.5,
            "legacy_status_codes": False,
            "v2_metric_children": 1,  # child runs of a v2 pipeline job that log the evaluation (0, 1, 2...)
            "online_operation_timeout": "PT1H",  # the x-ms-async-operation-timeout of online endpoint operations
        }
        self.base_url = ""
        self._fault_ids = 0
        self._reset_hooks: list[Callable[[], None]] = []
        self._admin: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "health"): lambda r: Response(200, {"status": "ok"}),
            ("POST", "reset"): self._reset,
            ("POST", "config"): self._set_config,
            ("POST", "faults"): self._add_fault,
            ("DELETE", "faults"): self._clear_faults,
            ("GET", "faults"): lambda r: Response(200, [asdict(f) for f in self.faults]),
            ("GET", "requests"): lambda r: Response(200, list(self.requests)),
        }
        self.server: ThreadingHTTPServer | None = None

    # --- registration -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, name: str, handler: Callable[[Request], Response]) -> None:
        """Register ``handler`` for ``method`` on paths matching ``pattern`` (named groups become params)."""
        self.routes.append((method, re.compile(f"^{pattern}$", re.IGNORECASE), name, handler))

    def admin(self, method: str, name: str, handler: Callable[[Request], Response]) -> None:
        self._admin[(method, name)] = handler

    def on_reset(self, hook: Callable[[], None]) -> None:
        self._reset_hooks.append(hook)

    # --- faults -----------------------------------------------------------------------------------

    def take_fault(self, route: str, *, kind: str = "http", path: str = "") -> Fault | None:
        """Consume the first fault for ``route`` (``kind`` "job" selects job-failure faults) whose
        ``path`` scope, if it has one, is part of the request's ``path``."""
        with self.lock:
            for fault in self.faults:
                if fault.route != route or (fault.fail is not None) != (kind == "job"):
                    continue
                if fault.path and fault.path not in path:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def _add_fault(self, request: Request) -> Response:
        spec = request.json() or {}
        try:
            with self.lock:
                self._fault_ids += 1
                fault = Fault(**spec, id=self._fault_ids)
                self.faults.append(fault)
        except TypeError as exc:
            raise HttpError(400, "BadArgument", f"bad fault spec: {exc}") from None
        return Response(200, asdict(fault))

    def _clear_faults(self, request: Request) -> Response:
        with self.lock:
            self.faults.clear()
        return Response(200, {"cleared": True})

    def _reset(self, request: Request) -> Response:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            for hook in self._reset_hooks:
                hook()
        return Response(200, {"reset": True})

    def _set_config(self, request: Request) -> Response:
        spec = request.json() or {}
        unknown = set(spec) - set(self.config)
        if unknown:
            raise HttpError(400, "BadArgument", f"unknown config keys: {sorted(unknown)}")
        with self.lock:
            self.config.update(spec)
        return Response(200, dict(self.config))

    # --- serving ----------------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in a background thread; return the base URL."""
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the client's delayed ACK adds ~40 ms
            # to every keep-alive request.
            disable_nagle_algorithm = True

            def _dispatch(self) -> None:
                emulator.dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="emulator-http", daemon=True).start()
        bound_host, bound_port = self.server.server_address[:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    def shutdown(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(
            handler.command, unquote(parts.path), parse_qs(parts.query, keep_blank_values=True), handler.headers, body
        )
        entry = {
            "at": time.time(),
            "method": request.method,
            "path": request.path,
            "query": parts.query,
            "route": None,
            "status": None,
        }
        try:
            response = self._handle(request, entry, handler)
        except HttpError as exc:
            response = Response(exc.status, exc.body, exc.headers)
        except Exception as exc:
            log.exception("emulator error on %s %s", request.method, request.path)
            response = Response(500, error_body("InternalError", f"emulator error: {exc}"))
        if response is None:  # dropped
            entry["status"] = "dropped"
            self._record(entry)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        entry["status"] = response.status
        self._record(entry)
        self._send(handler, response)

    def _record(self, entry: dict) -> None:
        if entry["route"] != "admin":
            self.requests.append(entry)

    def _handle(self, request: Request, entry: dict, handler: BaseHTTPRequestHandler) -> Response | None:
        if request.path.startswith("/_emulator/"):
            entry["route"] = "admin"
            admin = self._admin.get((request.method, request.path[len("/_emulator/") :].strip("/")))
            if admin is None:
                raise HttpError(404, "NotFound", "unknown admin route")
            return admin(request)
        for method, pattern, name, route_handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                entry["route"] = name
                request.params = match.groupdict()
                fault = self.take_fault(name, path=request.path)
                if fault is not None and fault.after:
                    route_handler(request)  # the service did the work; then its answer is lost or mangled
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.drop:
                        return None
                    if fault.status:
                        return _fault_response(fault)
                    if fault.no_effect:  # "PATCH returned 200 but nothing changed"
                        return Response(200)
                return route_handler(request)
        if any(pattern.fullmatch(request.path) for _, pattern, _, _ in self.routes):
            raise HttpError(
                405, "MethodNotAllowed", f"The requested resource does not support http method '{request.method}'."
            )
        raise HttpError(404, "NotFound", "The requested resource was not found.")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, response: Response) -> None:
        if response.body is None:
            payload = b""
        elif isinstance(response.body, (bytes, str)):
            payload = response.body.encode() if isinstance(response.body, str) else response.body
        else:
            payload = json.dumps(response.body).encode("utf-8")
        handler.send_response(response.status)
        headers = {"Content-Type": JSON, **response.headers} if payload else dict(response.headers)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if payload and handler.command != "HEAD":
            handler.wfile.write(payload)


def _fault_response(fault: Fault) -> Response:
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = (
            str(int(fault.retry_after)) if float(fault.retry_after).is_integer() else str(fault.retry_after)
        )
    body = fault.body
    if body is None:
        code, detail, message = _DEFAULT_FAULT_ERRORS.get(fault.status, ("BadArgument", "UnknownError", "Injected"))
        body = error_body(code, message, [(detail, message)])
    if fault.content_type:
        headers["Content-Type"] = fault.content_type
    return Response(fault.status, body, headers)
