"""Commands on the queue: what other systems, operators and the poll ask this app to do.

The contract is ``shared/schemas/command.v1.schema.json`` (JSON Schema 2020-12): ``retrain``,
``deploy`` and ``rollback``, version 1, unknown fields refused. Targets and blobs are named, never
addressed, so nothing in a message can choose where credentials go.

Every message is accounted for in the command log (``_commands`` partition of the runs table), keyed
by the sender's ``request_id`` (or the queue message id): the same id is carried out once. A command
that can never succeed is recorded as Rejected with the reason and the (truncated, redacted) message,
logged once, and consumed. A transient failure raises, so the queue redelivers; on the last delivery
(``maxDequeueCount``) it is recorded as Failed first, then the host moves it to the poison queue.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import re
from pathlib import Path

from azure.core.exceptions import AzureError

from shared import deploy, telemetry
from shared.deploy import CommandRejected
from shared.http import ServiceError
from shared.redact import redact, shown
from shared.runs import utcnow
from shared.store import DONE, FAILED, REJECTED, Claim, StaleError

log = logging.getLogger(__name__)
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "command.v1.schema.json"
# A queue message holds 64 KiB once base64-encoded: 48 KiB of payload.
MAX_MESSAGE_BYTES = 48 * 1024
RAW_EXCERPT_CHARS = 1000
LEASE = dt.timedelta(minutes=10)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class RetryLater(Exception):
    """Another delivery of the same request is being carried out right now."""


def max_dequeue_count() -> int:
    """The queue's delivery limit, from host.json (the host's default is 5)."""
    try:
        return int(json.loads(HOST_JSON.read_text())["extensions"]["queues"]["maxDequeueCount"])
    except (OSError, KeyError, ValueError, TypeError):
        return 5


@functools.cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@functools.cache
def ecma_pattern(pattern: str) -> str:
    """A JSON Schema pattern (ECMA-262) for Python's ``re``: there ``$`` also matches before a final
    newline, so ``^[a-z]+$`` would accept ``"abc\\n"``; ECMA's ``$`` is the end of the string (``\\Z``)."""
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return "".join(out)


COMMAND_TYPES = ("retrain", "deploy", "rollback", "approve", "reject")


@functools.cache
def _validators() -> dict:
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not re.search(ecma_pattern(patrn), instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    Validator = validators.extend(Draft202012Validator, {"pattern": pattern})
    root = Validator(_schema())
    return {name: root.evolve(schema=_schema()["$defs"][name]) for name in COMMAND_TYPES}


def parse(raw: bytes) -> dict:
    """Decode and validate one message body against the schema; raise :class:`CommandRejected`."""
    from jsonschema.exceptions import best_match

    if len(raw) > MAX_MESSAGE_BYTES:
        raise CommandRejected(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CommandRejected("message is nested too deeply") from None
    except ValueError as exc:  # also an integer too long to convert, which is not a JSONDecodeError
        raise CommandRejected(f"message is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandRejected(f"message is a JSON {type(body).__name__}, not an object")
    if body.get("version") != 1:
        raise CommandRejected(f"unsupported command version {body.get('version')!r} (this app speaks version 1)")
    validator = _validators().get(body.get("type")) if isinstance(body.get("type"), str) else None
    if validator is None:
        raise CommandRejected(f"unknown command type {body.get('type')!r} (expected {', '.join(COMMAND_TYPES)})")
    error = best_match(validator.iter_errors(body))
    if error is not None:
        what = error.message
        if error.validator == "not" and error.schema.get("description"):  # say why, not which regex
            what = f"{shown(repr(error.instance))[:200]} is refused: {error.schema['description']}"
        raise CommandRejected(f"{body['type']} command is invalid at {error.json_path}: {what}")
    return body


def request_key(body: object, message_id: str) -> str:
    """The idempotency key: the sender's request_id if it has a usable one, else the message id.
    Either is a valid RowKey (no control character, no ``/\\#?``), whatever the message holds."""
    if isinstance(body, dict) and isinstance(body.get("request_id"), str) and _REQUEST_ID.fullmatch(body["request_id"]):
        return f"req:{body['request_id']}"
    return f"msg:{message_key(message_id)}"


def message_key(message_id: object) -> str:
    """The queue's message id as a RowKey part (the host's are GUIDs; anything else is hashed)."""
    text = str(message_id)
    if _REQUEST_ID.fullmatch(text):
        return text
    return "sha256-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def handle(svc, raw: bytes, *, message_id: str, dequeue_count: int, actor: str) -> str:
    """Carry out one queue message, exactly once per request id. Returns what was done; raises only
    for what a redelivery may fix. Whatever raises where, the message ends in the command log."""
    now = utcnow()
    # Redacted whole, then cut: a secret straddling the cut would otherwise leave its first half.
    excerpt = redact(raw.decode("utf-8", "replace"))[:RAW_EXCERPT_CHARS]
    body, problem = None, None
    try:
        body = parse(raw)
    except CommandRejected as exc:
        problem = exc
    except Exception as exc:  # reading a message is deterministic: whatever fails, it always will
        problem = CommandRejected(f"message cannot be read: {type(exc).__name__}: {exc}")
    # A rejected message is still keyed by its request_id if it has a usable one.
    loose = body if body is not None else _loose_json(raw)
    key, fields = request_key(loose, message_id), _fields(loose, message_id, excerpt, actor)
    run_id = loose.get("run_id") if isinstance(loose, dict) and isinstance(loose.get("run_id"), str) else None
    named = loose.get("pipeline") if isinstance(loose, dict) and isinstance(loose.get("pipeline"), str) else None
    with telemetry.bind(pipeline=named or svc.settings.pipelines[0].name, command=key, run_id=run_id):
        message_id = fields["message_id"]
        claim = _claim(svc, key, fields, now, dequeue_count)
        key, state, record = claim.key, claim.state, claim.record
        if state == "done":
            log.info(
                "command %s: duplicate of an earlier %s request (%s), not carried out again",
                message_id,
                record.get("status"),
                key,
            )
            return f"duplicate: {key} was already {record.get('status')}"
        if state == "busy":
            if dequeue_count >= max_dequeue_count():
                # Another message with this request_id is being carried out: that delivery owns the request
                # (and is retried on its own if it fails), so this duplicate is done, not poisoned.
                log.info("command %s: duplicate of %s, which another delivery is carrying out", message_id, key)
                return f"duplicate: {key} is being carried out by another delivery"
            raise RetryLater(f"{key} is being carried out by another delivery")
        if problem is not None:
            return _reject(svc, key, problem, fields, dequeue_count)
        try:
            result = _execute(svc, body, actor=actor, attempt=dequeue_count, max_attempts=max_dequeue_count())
        except CommandRejected as exc:
            return _reject(svc, key, exc, fields, dequeue_count)
        except Exception as exc:  # a service, our storage (AzureError), or a bug: retried, then recorded
            expected = isinstance(exc, (ServiceError, StaleError, AzureError))
            reason = redact(str(exc) if expected else f"unexpected {type(exc).__name__}: {exc}")
            if not expected:
                log.exception("command %s (%s): unexpected error", message_id, key)
            if dequeue_count >= max_dequeue_count():
                final = f"gave up after {dequeue_count} deliveries: {reason}"
                if body.get("type") == "deploy":  # the run must not stay Deploying: its targets failed
                    try:
                        deploy.give_up(
                            svc,
                            pipeline_of(svc, body).name,
                            body["run_id"],
                            body.get("targets"),
                            final,
                            actor=actor,
                            forced=bool(body.get("force")),
                        )
                    except Exception:  # the command's own record comes first
                        log.exception("command %s: could not record the failure on run %s", message_id, body["run_id"])
                svc.commands.finish(key, FAILED, utcnow(), reason=final, deliveries=dequeue_count)
                log.error("command %s (%s) failed for good, to the poison queue: %s", message_id, key, reason)
            else:
                svc.commands.release(key, utcnow(), reason)
            raise
        svc.commands.finish(key, DONE, utcnow(), result=result[:2000])
        log.info("command %s (%s): %s", message_id, key, result)
        return result


def _claim(svc, key: str, fields: dict, now, dequeue_count: int) -> Claim:
    """Claim ``key``; if storage refuses that key outright (a 4xx, not an outage), fall back to the
    message's own key so the message is still recorded."""
    from azure.core.exceptions import HttpResponseError

    try:
        return svc.commands.claim(key, fields, LEASE, now, dequeue_count)
    except HttpResponseError as exc:
        fallback = f"msg:{message_key(fields['message_id'])}"
        if key == fallback or exc.status_code is None or not 400 <= exc.status_code < 500 or exc.status_code == 429:
            raise
        log.warning("command %s: storage refused key %r (%s); recorded as %s", fields["message_id"], key, exc, fallback)
        return svc.commands.claim(fallback, fields, LEASE, now, dequeue_count)


def _loose_json(raw: bytes) -> object:
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _fields(body: object, message_id: str, excerpt: str, actor: str) -> dict:
    kind = body.get("type") if isinstance(body, dict) and isinstance(body.get("type"), str) else None
    return {"message_id": message_id, "raw": excerpt, "by": actor, "type": kind[:50] if kind else None}


def _reject(svc, key: str, exc: CommandRejected, fields: dict, dequeue_count: int) -> str:
    reason = redact(str(exc))[:2000]
    svc.commands.finish(
        key,
        REJECTED,
        utcnow(),
        reason=reason,
        deliveries=dequeue_count,
        **{k: v for k, v in fields.items() if v is not None},
    )
    log.error("command %s rejected (consumed, not retried): %s", fields["message_id"], reason)
    return f"rejected: {reason}"


def pipeline_of(svc, body: dict):
    """The pipeline a command is for: the one it names, or the only one; naming it is required when
    several are configured (a command must not guess which model it changes)."""
    pipelines = svc.settings.pipelines
    name = body.get("pipeline")
    if name is None:
        if len(pipelines) > 1:
            raise CommandRejected(
                f"pipeline is required: {len(pipelines)} are configured ({', '.join(p.name for p in pipelines)})"
            )
        return pipelines[0]
    pipeline = svc.settings.pipeline_named(name)
    if pipeline is None:
        raise CommandRejected(f"unknown pipeline {name!r} (configured: {', '.join(p.name for p in pipelines)})")
    return pipeline


def _execute(svc, body: dict, *, actor: str, attempt: int, max_attempts: int) -> str:
    pipeline = pipeline_of(svc, body)
    kind = body["type"]
    if kind == "retrain":
        from shared.workflow import NothingToTrain, retrain

        try:
            outcome = retrain(svc, body.get("blob"), source="queue", actor=actor, pipeline=pipeline)
        except NothingToTrain as exc:
            raise CommandRejected(str(exc)) from None
        return f"retrain: run {outcome.run_id} {outcome.action} ({outcome.status})"
    if kind == "deploy":
        force = body.get("reason") if body.get("force") else None
        run = deploy.deploy_run(
            svc,
            pipeline.name,
            body["run_id"],
            body.get("targets"),
            actor=actor,
            attempt=attempt,
            max_attempts=max_attempts,
            force_reason=force,
        )
        states = ", ".join(f"{n}: {t['status']}" for n, t in sorted(run.targets.items()))
        return f"deploy {run.run_id}: {run.status} ({states})"
    if kind in ("approve", "reject"):
        return deploy.decide(
            svc,
            pipeline.name,
            body["run_id"],
            body["target"],
            approve=kind == "approve",
            approver=body["approver"],
            reason=body["reason"],
            actor=actor,
        )
    result = deploy.rollback(svc, pipeline.name, body["target"], body.get("to_run"), actor=actor)
    return f"rollback {body['target']}: {result.action} ({result.reason})"
