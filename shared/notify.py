"""Notifications: a CloudEvent for each run that ends notably, to an Event Grid topic and/or a webhook.

At least once, and never in a run's way:

* **Announced before the state is written.** When the store is about to write a run into a notable
  status (``EVENT_STATUSES``), one message per receiver goes onto the events queue first, a few
  seconds invisible. A crash after the write cannot lose an event, and a write that then fails
  announces nothing real: the sender reads the run and sends only what its history holds.
* **Sent from a queue of its own.** A slow or failing receiver only delays its own message, which the
  host retries with its visibility timeout and, after ``maxDequeueCount``, moves to the poison queue.
  Every event is recorded in the ``_events`` partition (Delivered, Dropped, Failed on its last delivery).
* **Idempotent by event id.** The id is ``<run id>.<status>``: a duplicate announcement or delivery
  sends nothing twice from here, and receivers can deduplicate by the CloudEvent ``id``.
* **Nothing secret in an event.** The data is the run's public summary (redacted like the API), and
  the webhook's HMAC secret and the topic key are held by the redactor.

Webhook signature: header ``X-Autopilot-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 with the shared secret over ``"<t>." + body``. A receiver recomputes it, compares in
constant time, and refuses a ``t`` more than a few minutes old (see the README).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared import hosts
from shared import runs as R
from shared.http import ServiceError, bearer_token, send
from shared.redact import redact_tree

log = logging.getLogger(__name__)

EVENT_STATUSES = frozenset(
    {R.DEPLOYED, R.PARTIALLY_DEPLOYED, R.REJECTED, R.FAILED, R.TIMED_OUT, R.INVALID, R.AWAITING_APPROVAL}
)
EVENTS_PARTITION = "_events"
EVENTGRID_SCOPE = "https://eventgrid.azure.net/.default"
ANNOUNCE_DELAY_SECONDS = 3  # the state write normally lands before the message becomes visible
SIGNATURE_HEADER = "X-Autopilot-Signature"


class NotifyError(ServiceError):
    service = "notification"


@dataclass(frozen=True)
class NotifyConfig:
    """Where events go: an Event Grid topic (key or managed identity) and/or a signed webhook."""

    queue: str = "retraining-events"
    eventgrid_topic: str | None = None
    eventgrid_key: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    source: str = "/retraining-autopilot"

    @property
    def receivers(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("eventgrid", self.eventgrid_topic), ("webhook", self.webhook_url)) if on)


def max_dequeue_count() -> int:
    """The events queue's delivery limit: the host's, as for commands (host.json)."""
    from shared.commands import max_dequeue_count as limit

    return limit()


def event_id(run_id: str, status: str) -> str:
    return f"{run_id}.{status}"


def announce(svc, run) -> None:
    """Queue the event of ``run``'s new status for each receiver (called by the store before it writes)."""
    config = svc.settings.notify
    if config is None or run.status not in EVENT_STATUSES:
        return
    queue = svc.storage.queue(config.queue)
    for receiver in config.receivers:
        message = {
            "event_id": event_id(run.run_id, run.status),
            "receiver": receiver,
            "pipeline": run.pipeline,
            "run_id": run.run_id,
            "status": run.status,
        }
        queue.send_message(json.dumps(message), visibility_timeout=ANNOUNCE_DELAY_SECONDS)


ROLLED_BACK = "RolledBack"


def announce_rollback(svc, pipeline: str, target: str, run_id: str) -> None:
    """Queue a ``RolledBack`` event before a rollback of ``target`` to ``run_id`` is carried out; it is
    sent only once the target's history holds that rollback (from now on)."""
    config = svc.settings.notify
    if config is None:
        return
    since = R.iso(R.utcnow())
    queue = svc.storage.queue(config.queue)
    for receiver in config.receivers:
        message = {
            "event_id": f"{target}.{ROLLED_BACK}.{run_id}.{since}",
            "receiver": receiver,
            "pipeline": pipeline,
            "target": target,
            "run_id": run_id,
            "status": ROLLED_BACK,
            "since": since,
        }
        queue.send_message(json.dumps(message), visibility_timeout=ANNOUNCE_DELAY_SECONDS)


def rollback_event(entry: dict, pipeline: str, target: str, event_id: str, source: str) -> dict[str, Any]:
    """The CloudEvent of a target rolled back: which run's model is live again, what it replaced, who."""
    at = entry["at"]
    return {
        "specversion": "1.0",
        "type": f"Autopilot.Target.{ROLLED_BACK}",
        "source": source,
        "id": event_id,
        "time": R.iso(at) if isinstance(at, dt.datetime) else str(at),
        "subject": f"pipelines/{pipeline}/targets/{target}",
        "datacontenttype": "application/json",
        "data": redact_tree(
            {
                "pipeline": pipeline,
                "target": target,
                "live_run": entry.get("run"),
                "live_model": entry.get("model"),
                "replaced_run": entry.get("replaced_run"),
                "by": entry.get("by"),
                "links": {"targets": f"/api/targets?pipeline={pipeline}"},
            }
        ),
    }


def cloud_event(run, status: str, source: str, metric: str) -> dict[str, Any]:
    """The CloudEvent 1.0 for ``run`` having reached ``status`` (its time: when the history says so)."""
    from shared import status as views

    at = next((h["at"] for h in reversed(run.history) if h.get("to") == status), None)
    summary = views.run_summary(run, metric)
    return {
        "specversion": "1.0",
        "type": f"Autopilot.Run.{status}",
        "source": source,
        "id": event_id(run.run_id, status),
        "time": at,
        "subject": f"pipelines/{run.pipeline}/runs/{run.run_id}",
        "datacontenttype": "application/json",
        "data": redact_tree(
            {
                **summary,
                "links": {
                    "run": f"/api/runs/{run.run_id}?pipeline={run.pipeline}",
                    "page": f"/api/status/runs/{run.run_id}?pipeline={run.pipeline}",
                },
            }
        ),
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The webhook signature header's value: ``t=<timestamp>,v1=<HMAC-SHA256 hex of "t." + body>``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def deliver(svc, raw: bytes, *, dequeue_count: int, max_dequeue_count: int, actor: str) -> str:
    """Send one queued event to its receiver, once; what happened (for the log)."""
    config = svc.settings.notify
    try:
        message = json.loads(raw)
        key = f"{message['event_id']}.{message['receiver']}"
        receiver = message["receiver"]
        event, pending, never = _event_for(svc, config, message)
    except (ValueError, KeyError, TypeError):
        return "dropped: not an event message"
    log_entry = _logged(svc, key)
    if log_entry is not None and log_entry.get("status") == "Delivered":
        return f"{key}: delivered already"
    if config is None or receiver not in config.receivers:
        _record(svc, key, "Dropped", f"receiver {receiver} is no longer configured")
        return f"{key}: dropped (receiver not configured)"
    if event is None:  # announced before its write, which has not landed (yet, or ever)
        if dequeue_count < max_dequeue_count:
            from shared.runs import RetryLater

            raise RetryLater(f"{key}: {pending} (yet)")
        _record(svc, key, "Dropped", f"{never}: nothing happened to announce")
        return f"{key}: dropped (never happened)"
    try:
        _send(svc, config, receiver, event)
    except ServiceError as exc:
        last = dequeue_count >= max_dequeue_count
        _record(svc, key, "Failed" if last else "Retrying", str(exc), deliveries=dequeue_count)
        raise
    _record(svc, key, "Delivered", f"{receiver}: {event['type']}", deliveries=dequeue_count)
    return f"{key}: delivered to {receiver}"


def _event_for(svc, config, message: dict) -> tuple[dict | None, str, str]:
    """The CloudEvent of what ``message`` announces, built from the history that records it (``None``
    while the history does not), and how to say it has not, or never, happened."""
    source = config.source if config else ""
    pipeline, run_id, status = message["pipeline"], message["run_id"], message["status"]
    if status == ROLLED_BACK:
        target, since = str(message["target"]), str(message.get("since") or "")
        done = [
            e
            for e in svc.targets.history(target)
            if e.get("kind") == "rollback" and e.get("run") == run_id and R.iso(e["at"]) >= since
        ]
        first = min(done, key=lambda e: R.iso(e["at"])) if done else None
        event = rollback_event(first, pipeline, target, message["event_id"], source) if first else None
        return (
            event,
            f"{target} has not been rolled back to {run_id}",
            f"{target} was never rolled back to {run_id} after {since}",
        )
    run = svc.store.get(pipeline, run_id)
    if run is None or not any(h.get("to") == status for h in run.history):
        return None, f"run {run_id} has not reached {status}", f"run {run_id} never reached {status}"
    from shared import status as views

    return cloud_event(run, status, source, views.metric_of(svc, run.pipeline)), "", ""


def _send(svc, config: NotifyConfig, receiver: str, event: dict) -> None:
    session, timeout = svc.session(), (5.0, svc.settings.http_timeout_seconds)
    extra = svc.settings.extra_allowed_hosts
    if receiver == "eventgrid":
        url = config.eventgrid_topic
        _check_host(url, "eventgrid", extra)
        headers = {"Content-Type": "application/cloudevents-batch+json; charset=utf-8"}
        if config.eventgrid_key:
            headers["aeg-sas-key"] = config.eventgrid_key
        else:
            headers["Authorization"] = f"Bearer {bearer_token(svc.azure_credential(), EVENTGRID_SCOPE, NotifyError)}"
        body = json.dumps([event]).encode()
    else:
        url = config.webhook_url
        _check_host(url, "webhook", extra)
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/cloudevents+json; charset=utf-8",
            SIGNATURE_HEADER: signature(config.webhook_secret, int(time.time()), body),
        }
    params = {"api-version": "2018-01-01"} if receiver == "eventgrid" else None
    send(
        session,
        NotifyError,
        f"send to {receiver}",
        "POST",
        url,
        headers=headers,
        timeout=timeout,
        body=body,
        params=params,
    )


def _check_host(url: str, kind: str, extra) -> None:
    try:
        hosts.check(urlsplit(url).hostname, kind, extra)
    except hosts.HostRefused as exc:
        raise NotifyError(f"refusing to send to {url[:100]}: {exc}", operation="send", code="UntrustedHost") from None


def _logged(svc, key: str) -> dict | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return dict(svc.commands.table.get_entity(EVENTS_PARTITION, key))
    except ResourceNotFoundError:
        return None


def _record(svc, key: str, status: str, detail: str, deliveries: int | None = None) -> None:
    from azure.data.tables import UpdateMode

    entity = {
        "PartitionKey": EVENTS_PARTITION,
        "RowKey": key,
        "status": status,
        "detail": detail[:2000],
        "updated_at": dt.datetime.now(dt.timezone.utc),
    }
    if deliveries is not None:
        entity["deliveries"] = deliveries
    svc.commands.table.upsert_entity(entity, mode=UpdateMode.MERGE)


def events(svc) -> list[dict]:
    """The event log: every event with its receiver and what became of it."""
    from shared.store import rows

    query = "PartitionKey eq @pk"
    return [dict(e) for e in rows(svc.commands.table.query_entities(query, parameters={"pk": EVENTS_PARTITION}))]
