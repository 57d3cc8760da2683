"""Event receivers for the autopilot's notifications: an Event Grid custom topic (CloudEvents batch;
``aeg-sas-key`` or an Entra token for ``https://eventgrid.azure.net``) and a webhook that checks the
``X-Autopilot-Signature`` HMAC. Both record what arrived (``GET /_emulator/received``); faults per route
(``receiver.eventgrid``, ``receiver.webhook``) stand in for a receiver that is down."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from emulator.server import Emulator, HttpError, Request, Response

EVENTGRID_AUDIENCE = "https://eventgrid.azure.net"
REQUIRED = ("specversion", "id", "source", "type")


class Receivers:
    def __init__(self, emulator: Emulator, identity) -> None:
        self.emulator, self.identity = emulator, identity
        self.received: list[dict] = []
        self.topic_key: str | None = None
        self.webhook_secret: str | None = None
        emulator.route("POST", r"/eventgrid/(?P<topic>[^/]+)/api/events", "receiver.eventgrid", self.eventgrid)
        emulator.route("POST", r"/webhook/(?P<hook>[^/]+)", "receiver.webhook", self.webhook)
        emulator.admin("GET", "received", lambda r: Response(200, list(self.received)))
        emulator.admin("POST", "receivers", self._configure)
        emulator.on_reset(self.received.clear)

    def _configure(self, request: Request) -> Response:
        spec = request.json() or {}
        self.topic_key = spec.get("topic_key", self.topic_key)
        self.webhook_secret = spec.get("webhook_secret", self.webhook_secret)
        return Response(200, {"configured": sorted(spec)})

    def eventgrid(self, request: Request) -> Response:
        if request.arg("api-version") != "2018-01-01":
            raise HttpError(400, "BadRequest", "api-version=2018-01-01 is required.")
        key = request.headers.get("aeg-sas-key")
        if key is not None:
            if not self.topic_key or not hmac.compare_digest(key, self.topic_key):
                raise HttpError(401, "Unauthorized", "The request authorization key is not authorized.")
        else:
            self.identity.require(request, EVENTGRID_AUDIENCE)
        if not (request.headers.get("Content-Type") or "").startswith("application/cloudevents-batch+json"):
            raise HttpError(400, "BadRequest", "Content-Type must be application/cloudevents-batch+json.")
        events = _json(request)
        if not isinstance(events, list) or not events:
            raise HttpError(400, "BadRequest", "The body must be a non-empty JSON array of CloudEvents.")
        for event in events:
            _check_event(event)
            self.received.append({"receiver": "eventgrid", "topic": request.params["topic"], "event": event})
        return Response(200)

    def webhook(self, request: Request) -> Response:
        header = request.headers.get("X-Autopilot-Signature") or ""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if not self.webhook_secret or "t" not in parts or "v1" not in parts:
            raise HttpError(401, "Unauthorized", "missing or unusable X-Autopilot-Signature")
        expected = hmac.new(
            self.webhook_secret.encode(), f"{parts['t']}.".encode() + request.body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, parts["v1"]) or abs(time.time() - int(parts["t"])) > 300:
            raise HttpError(401, "Unauthorized", "the signature does not match, or is too old")
        if not (request.headers.get("Content-Type") or "").startswith("application/cloudevents+json"):
            raise HttpError(400, "BadRequest", "Content-Type must be application/cloudevents+json.")
        event = _json(request)
        _check_event(event)
        self.received.append({"receiver": "webhook", "hook": request.params["hook"], "event": event})
        return Response(200)


def _json(request: Request):
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "BadRequest", "The body is not JSON.") from None


def _check_event(event: object) -> None:
    if not isinstance(event, dict) or any(not isinstance(event.get(k), str) for k in REQUIRED):
        raise HttpError(400, "BadRequest", f"A CloudEvent needs string {', '.join(REQUIRED)}.")
    if event["specversion"] != "1.0":
        raise HttpError(400, "BadRequest", "specversion must be 1.0.")
