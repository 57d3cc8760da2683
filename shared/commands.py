"""Commands on the queue: what other systems (and the poll) ask this app to do.

``{"type": "deploy", "version": 1, "pipeline": "default", "run_id": "...", "targets": ["a"]}``
``{"type": "rollback", "version": 1, "target": "a", "to_run": "..."}`` (``to_run`` optional)

A command that can never succeed is consumed with a clear log line (retrying it would not help); a
transient failure raises so the queue redelivers it, and after ``maxDequeueCount`` deliveries the host
moves it to the poison queue — with the reason already recorded on the run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from shared import deploy
from shared.deploy import CommandRejected

log = logging.getLogger(__name__)
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
MAX_MESSAGE_BYTES = 48 * 1024


def max_dequeue_count() -> int:
    """The queue's delivery limit, from host.json (the host's default is 5)."""
    try:
        return int(json.loads(HOST_JSON.read_text())["extensions"]["queues"]["maxDequeueCount"])
    except (OSError, KeyError, ValueError, TypeError):
        return 5


@dataclass(frozen=True)
class Command:
    type: str
    body: dict


def parse(raw: bytes) -> Command:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise CommandRejected(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandRejected(f"message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandRejected("message is not a JSON object")
    if body.get("version") != 1:
        raise CommandRejected(f"unsupported command version {body.get('version')!r} (expected 1)")
    kind = body.get("type")
    if kind == "deploy":
        targets = body.get("targets")
        if not isinstance(body.get("run_id"), str) or not (
            targets is None or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
        ):
            raise CommandRejected("deploy needs run_id (string) and optional targets (list of strings)")
    elif kind == "rollback":
        if not isinstance(body.get("target"), str) or not isinstance(body.get("to_run", ""), str):
            raise CommandRejected("rollback needs target (string) and optional to_run (string)")
    else:
        raise CommandRejected(f"unknown command type {kind!r}")
    return Command(kind, body)


def handle(svc, raw: bytes, *, message_id: str, dequeue_count: int, actor: str) -> str:
    """Carry out one queue message. Returns what was done; raises only for what a retry may fix."""
    try:
        command = parse(raw)
        if command.type == "deploy":
            if command.body.get("pipeline", svc.settings.pipeline) != svc.settings.pipeline:
                raise CommandRejected(f"unknown pipeline {command.body.get('pipeline')!r}")
            run = deploy.deploy_run(
                svc,
                command.body["run_id"],
                command.body.get("targets"),
                actor=actor,
                attempt=dequeue_count,
                max_attempts=max_dequeue_count(),
            )
            return f"deploy {run.run_id}: {run.status}"
        result = deploy.rollback(svc, command.body["target"], command.body.get("to_run"), actor=actor)
        return f"rollback {command.body['target']}: {result.action} ({result.reason})"
    except CommandRejected as exc:
        log.error("command %s rejected (not retried): %s", message_id, exc)
        return f"rejected: {exc}"
