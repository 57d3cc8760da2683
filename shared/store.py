"""Run state in Azure Table Storage. Every write is an insert-if-absent or an ETag-conditional update.

Layout of the runs table (one table, so an operator finds everything in one place):

* a run: ``PartitionKey`` = pipeline name, ``RowKey`` = upload time counted down + run id (newest first);
* a pipeline's slot: ``PartitionKey`` = ``_pipelines``, ``RowKey`` = pipeline name, holding the one
  ``active_run`` and the newest ``waiting_run``. Triggers read this small entity, never the history.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableClient, TableServiceClient, UpdateMode

from shared.redact import redact
from shared.runs import HISTORY_LIMIT_CHARS, Run, lease_lapsed, row_key, utcnow

PIPELINES_PARTITION = "_pipelines"
UNROUTED_PARTITION = "_unrouted"
# A bounded number of optimistic-concurrency retries; past it, something is hot-looping.
MAX_CONFLICT_RETRIES = 20
T = TypeVar("T")


def retry_on_conflict(attempt: Callable[[], T], what: str) -> T:
    """``attempt()`` — read, decide, write ETag-conditionally — again until no one else wrote in between.

    The one retry loop of every optimistic update: ``attempt`` raises :class:`StaleError` when its
    conditional write met a newer version, and is then run again on a fresh read.
    """
    for _ in range(MAX_CONFLICT_RETRIES):
        try:
            return attempt()
        except StaleError:
            continue
    raise StaleError(f"{what}: gave up after {MAX_CONFLICT_RETRIES} conflicting updates")


# --- runs as Table entities ---------------------------------------------------------------------------


def run_entity(run: Run) -> dict[str, Any]:
    """A run as one entity (``PartitionKey`` = pipeline, ``RowKey`` = :func:`row_key` of its id)."""
    return {
        "PartitionKey": run.pipeline,
        "RowKey": row_key(run.run_id),
        "run_id": run.run_id,
        "kind": "run",
        "status": run.status,
        "source": run.source,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "blob_container": run.blob_container,
        "blob_name": run.blob_name,
        "blob_etag": run.blob_etag,
        "blob_size": EntityProperty(run.blob_size, EdmType.INT64),
        "blob_last_modified": run.blob_last_modified,
        "job_id": run.job_id,
        "attempts": run.attempts,
        "resubmissions": run.resubmissions,
        "check_failures": run.check_failures,
        "last_check_error": json.dumps(run.last_check_error) if run.last_check_error else None,
        "lease_owner": run.lease_owner,
        "lease_until": run.lease_until,
        "ended_at": run.ended_at,
        "superseded_by": run.superseded_by,
        "model": json.dumps(run.model) if run.model else None,
        "submitted_at": run.submitted_at,
        "error": json.dumps(run.error) if run.error else None,
        "outputs": json.dumps(run.outputs),
        "metrics": json.dumps(run.metrics),
        "gate": json.dumps(run.gate),
        "targets": json.dumps(run.targets),
        "history": _history_json(run.history),
        "recorded_at": run.recorded_at,
    }


def run_from_entity(entity: Any) -> Run:
    def get(name: str, default: Any = None) -> Any:
        value = entity.get(name, default)
        return getattr(value, "value", value) if value is not None else default

    def loaded(name: str, default: Any) -> Any:
        return json.loads(get(name)) if get(name) else default

    metadata = getattr(entity, "metadata", None) or {}
    return Run(
        pipeline=entity["PartitionKey"],
        run_id=entity.get("run_id") or entity["RowKey"].split("-", 1)[1],
        status=get("status"),
        source=get("source", ""),
        created_at=_dt(get("created_at")),
        updated_at=_dt(get("updated_at")),
        blob_container=get("blob_container", ""),
        blob_name=get("blob_name", ""),
        blob_etag=get("blob_etag", ""),
        blob_size=int(get("blob_size", 0)),
        blob_last_modified=_dt(get("blob_last_modified")),
        job_id=get("job_id"),
        attempts=int(get("attempts", 0)),
        resubmissions=int(get("resubmissions", 0)),
        check_failures=int(get("check_failures", 0)),
        last_check_error=loaded("last_check_error", None),
        lease_owner=get("lease_owner"),
        lease_until=_dt(get("lease_until")),
        ended_at=_dt(get("ended_at")),
        superseded_by=get("superseded_by"),
        model=loaded("model", None),
        submitted_at=_dt(get("submitted_at")),
        error=loaded("error", None),
        outputs=loaded("outputs", {}),
        metrics=loaded("metrics", {}),
        gate=loaded("gate", {}),
        targets=loaded("targets", {}),
        history=loaded("history", []),
        # Never saved since its insert: the entity's Timestamp is when storage recorded it.
        recorded_at=_dt(get("recorded_at")) or _dt(metadata.get("timestamp")),
        etag=metadata.get("etag"),
        read_status=get("status"),
        written_at=_dt(metadata.get("timestamp")),
    )


def _dt(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _history_json(history: list[dict[str, Any]]) -> str:
    """Serialise the history; if it outgrows a Table string, keep the first and latest entries."""
    text = json.dumps(history, separators=(",", ":"))
    if len(text) <= HISTORY_LIMIT_CHARS:
        return text
    head, tail = history[:1], list(history[1:])
    while tail:
        tail.pop(0)
        marker = {"event": f"{len(history) - 1 - len(tail)} older entries dropped (size limit)"}
        text = json.dumps([*head, marker, *tail], separators=(",", ":"))
        if len(text) <= HISTORY_LIMIT_CHARS:
            return text
    return json.dumps(head, separators=(",", ":"))


def server_time(meta: dict) -> dt.datetime | None:
    """When storage made the write that answered ``meta``: the entity's ``Timestamp`` if the service
    returned the entity (it does for an insert), else the response's ``Date`` (whole seconds)."""
    stamp = (meta.get("content") or {}).get("Timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            # Seven fractional digits; Python reads at most six.
            head, _, fraction = stamp.rstrip("Z").partition(".")
            return dt.datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00")
    return meta.get("date")


def written_at(entity) -> dt.datetime | None:
    """The server-side ``Timestamp`` of an entity as read: when storage received its last write."""
    return (getattr(entity, "metadata", None) or {}).get("timestamp")


def _encode_cursor(token: dict | None) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token, sort_keys=True).encode()).decode().rstrip("=")


# A continuation token is the next PartitionKey and RowKey, each base64 as the SDK keeps them; ours
# are short (a pipeline name, a run's RowKey), so anything longer or else-shaped is not one of ours.
_TOKEN_KEYS = frozenset({"PartitionKey", "RowKey"})
_TOKEN_VALUE = re.compile(r"[A-Za-z0-9+/]{1,400}={0,2}")
MAX_CURSOR_CHARS = 1024


def _decode_cursor(cursor: str | None) -> dict | None:
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError(f"not a cursor this API issued ({len(cursor)} characters)")
    try:
        token = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor this API issued") from None
    if (
        not isinstance(token, dict)
        or not set(token) <= _TOKEN_KEYS
        or not all(isinstance(v, str) and _TOKEN_VALUE.fullmatch(v) for v in token.values())
    ):
        raise ValueError("not a cursor this API issued")
    return token


class StaleError(Exception):
    """Someone else changed the entity since it was read (HTTP 412)."""


class RunExists(Exception):
    """A run with this id is already recorded (HTTP 409 on insert)."""


@dataclass
class PipelineSlot:
    """Which run holds a pipeline's single training slot, and which newest upload waits for it."""

    pipeline: str
    active_run: str | None = None
    waiting_run: str | None = None
    waiting_key: str | None = None  # the waiting run's order key, so newer/older needs no extra read
    updated_at: dt.datetime | None = None
    last_error: dict | None = None  # the last poll of this pipeline that failed, until one succeeds
    etag: str | None = None


class RedactingTable:
    """A ``TableClient`` whose writes carry no secret: every string property but the keys is redacted
    (``shared/redact.py``) on its way in. The one gate all state passes through, whatever wrote it."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def __getattr__(self, name: str):
        return getattr(self._table, name)

    def create_entity(self, entity, **kwargs):
        return self._table.create_entity(_redacted(entity), **kwargs)

    def update_entity(self, entity, **kwargs):
        return self._table.update_entity(_redacted(entity), **kwargs)

    def upsert_entity(self, entity, **kwargs):
        return self._table.upsert_entity(_redacted(entity), **kwargs)


def _redacted(entity) -> dict:
    out = {}
    for name, value in entity.items():
        if name not in ("PartitionKey", "RowKey"):
            if isinstance(value, str):
                value = redact(value)
            elif isinstance(value, EntityProperty) and isinstance(value.value, str):
                value = EntityProperty(redact(value.value), value.edm_type)
        out[name] = value
    return out


class RunStore:
    def __init__(self, table: TableClient) -> None:
        self.table = table if isinstance(table, RedactingTable) else RedactingTable(table)
        # Called with a run about to be written into a new status, before the write (notifications).
        self.announce: Callable[[Run], None] | None = None

    def _announce(self, run: Run) -> None:
        if self.announce is not None and run.status != run.read_status:
            self.announce(run)

    @classmethod
    def open(cls, service: TableServiceClient, table_name: str, *, create: bool = True) -> RunStore:
        """Open the runs table, creating it unless ``create`` is false (read-only callers)."""
        if not create:
            return cls(service.get_table_client(table_name))
        return cls(service.create_table_if_not_exists(table_name))

    # --- runs -----------------------------------------------------------------------------------

    def create(self, run: Run) -> Run:
        self._announce(run)
        try:
            meta = self.table.create_entity(run_entity(run))
        except ResourceExistsError:
            raise RunExists(run.run_id) from None
        run.etag, run.read_status = meta["etag"], run.status
        run.recorded_at = run.written_at = server_time(meta)
        return run

    def get(self, pipeline: str, run_id: str) -> Run | None:
        try:
            return run_from_entity(self.table.get_entity(pipeline, row_key(run_id)))
        except (ResourceNotFoundError, ValueError):  # ValueError: not a run id at all
            return None

    def save(self, run: Run) -> Run:
        """Replace the run if nobody changed it since it was read; else raise :class:`StaleError`."""
        if run.etag is None:
            raise ValueError("save() needs a run that was read or created (no ETag)")
        self._announce(run)
        try:
            meta = self.table.update_entity(
                run_entity(run), mode=UpdateMode.REPLACE, etag=run.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StaleError(run.run_id) from None
        run.etag, run.written_at, run.read_status = meta["etag"], server_time(meta), run.status
        return run

    def update(self, pipeline: str, run_id: str, change: Callable[[Run], bool], held: Run | None = None) -> Run | None:
        """Read-modify-write until it sticks: ``change`` edits a fresh copy and returns whether to save.

        ``held``: a copy the caller just read or saved. It is tried first, saving a read; its save is
        ETag-conditional, so it sticks only if it was still the latest. If ``change`` declines it, the
        decision is taken again on a fresh read. Returns the run as stored afterwards (``None`` if none).
        """
        if held is not None and held.etag is not None:
            attempt = copy.deepcopy(held)
            if change(attempt):
                with contextlib.suppress(StaleError):
                    return self.save(attempt)

        def attempt() -> Run | None:
            run = self.get(pipeline, run_id)
            return run if run is None or not change(run) else self.save(run)

        return retry_on_conflict(attempt, run_id)

    def list_runs(self, pipeline: str) -> Iterator[Run]:
        """Every run of ``pipeline``, newest first."""
        query = "PartitionKey eq @pk"
        for entity in self.table.query_entities(query, parameters={"pk": pipeline}):
            yield run_from_entity(entity)

    def page_runs(
        self, pipeline: str, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Run], str | None]:
        """One page of runs, newest first, optionally of one status; the cursor continues it."""
        query = "PartitionKey eq @pk" + (" and status eq @status" if status else "")
        token = _decode_cursor(cursor)
        pages = self.table.query_entities(
            query, parameters={"pk": pipeline, "status": status}, results_per_page=limit
        ).by_page(continuation_token=token)
        runs: list[Run] = []
        try:
            for page in pages:  # a filtered page may come back empty with a continuation: skip those
                runs = [run_from_entity(e) for e in page]
                if runs or pages.continuation_token is None:
                    break
        except ResourceNotFoundError:
            return [], None  # the table does not exist yet: no runs yet
        except HttpResponseError as exc:
            if token is not None and exc.status_code is not None and 400 <= exc.status_code < 500:
                raise ValueError("storage refused the cursor") from None  # an outage stays an outage
            raise
        return runs, _encode_cursor(pages.continuation_token)

    # --- pipeline slot --------------------------------------------------------------------------

    def get_slot(self, pipeline: str) -> PipelineSlot:
        """Read a pipeline's slot; a pipeline that never had one gets an empty slot, not yet stored
        (its first :meth:`save_slot` inserts it: insert-if-absent is the condition for a new entity)."""
        try:
            return _slot(self.table.get_entity(PIPELINES_PARTITION, pipeline))
        except ResourceNotFoundError:
            return PipelineSlot(pipeline)

    def slots(self) -> list[PipelineSlot]:
        """Every pipeline's slot: the poll's index of active work (one small partition, never history)."""
        query = "PartitionKey eq @pk"
        return [_slot(e) for e in rows(self.table.query_entities(query, parameters={"pk": PIPELINES_PARTITION}))]

    def update_slot(self, pipeline: str, change: Callable[[PipelineSlot], bool]) -> PipelineSlot:
        """Read-modify-write a slot until it sticks; ``change`` returns whether to save."""

        def attempt() -> PipelineSlot:
            slot = self.get_slot(pipeline)
            return self.save_slot(slot) if change(slot) else slot

        return retry_on_conflict(attempt, f"pipeline {pipeline}")

    def save_slot(self, slot: PipelineSlot) -> PipelineSlot:
        entity = {
            "PartitionKey": PIPELINES_PARTITION,
            "RowKey": slot.pipeline,
            "kind": "pipeline",
            "active_run": slot.active_run,
            "waiting_run": slot.waiting_run,
            "waiting_key": slot.waiting_key,
            "updated_at": utcnow(),
            "last_error": json.dumps(slot.last_error) if slot.last_error else None,
        }
        try:
            if slot.etag is None:  # never stored: insert it, unless someone else did first
                meta = self.table.create_entity(entity)
            else:
                meta = self.table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=slot.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
            raise StaleError(slot.pipeline) from None
        slot.etag = meta["etag"]
        return slot

    # --- uploads no pipeline claims ---------------------------------------------------------------

    def record_unrouted(self, blob, reason: str, now: dt.datetime) -> bool:
        """Record an upload that belongs to no pipeline (once per blob version); False if it was already."""
        digest = hashlib.sha256(f"{blob.container}\n{blob.name}\n{blob.etag}".encode()).hexdigest()[:16]
        stamp = (blob.last_modified or now).astimezone(dt.timezone.utc)
        entity = {
            "PartitionKey": UNROUTED_PARTITION,
            "RowKey": f"{99999999999999 - int(stamp.strftime('%Y%m%d%H%M%S')):014d}-{digest}",
            "kind": "unrouted",
            "blob_container": blob.container,
            "blob_name": blob.name,
            "blob_etag": blob.etag,
            "blob_size": EntityProperty(blob.size, EdmType.INT64),
            "blob_last_modified": blob.last_modified,
            "reason": reason,
            "recorded_at": now,
        }
        try:
            self.table.create_entity(entity)
            return True
        except ResourceExistsError:
            return False

    def list_unrouted(self, limit: int = 50) -> list[dict]:
        """Uploads no pipeline claimed, newest first."""
        query = "PartitionKey eq @pk"
        pages = self.table.query_entities(query, parameters={"pk": UNROUTED_PARTITION}, results_per_page=limit)
        return [dict(e) for e in rows(e for page in itertools.islice(pages.by_page(), 1) for e in page)]


def rows(entities) -> list:
    """A query's entities; none before the table exists (a query's only 404), so that reading tools and
    the page on a fresh account say "no runs yet" rather than fail. Writers create the table first."""
    try:
        return list(entities)
    except ResourceNotFoundError:
        return []


def _slot(entity) -> PipelineSlot:
    error = entity.get("last_error")
    return PipelineSlot(
        pipeline=entity["RowKey"],
        active_run=entity.get("active_run") or None,
        waiting_run=entity.get("waiting_run") or None,
        waiting_key=entity.get("waiting_key") or None,
        updated_at=written_at(entity) or entity.get("updated_at"),  # the server's clock, not a writer's
        last_error=json.loads(error) if error else None,
        etag=entity.metadata["etag"],
    )


TARGETS_PARTITION = "_targets"


@dataclass
class TargetState:
    """What is live on one deploy target, what it replaced, and who is deploying to it right now."""

    name: str
    live_run: str | None = None
    live_model: str | None = None
    live_metrics: dict | None = None
    since: dt.datetime | None = None
    previous_run: str | None = None
    previous_model: str | None = None
    deploying_run: str | None = None
    lease_until: dt.datetime | None = None
    awaiting_run: str | None = None  # a run waiting for a person's approval here (manual approval)
    awaiting_until: dt.datetime | None = None  # when that approval expires
    rollout: dict | None = None  # a staged target's rollout: in progress, or the last one (shared/rollout.py)
    queued_run: str | None = None  # the newest approved run waiting for that rollout to end
    etag: str | None = None
    written_at: dt.datetime | None = None  # server Timestamp of the version read (caps a skewed lease)

    def to_entity(self) -> dict:
        return {
            "PartitionKey": TARGETS_PARTITION,
            "RowKey": self.name,
            "kind": "target",
            "live_run": self.live_run,
            "live_model": self.live_model,
            "live_metrics": json.dumps(self.live_metrics) if self.live_metrics is not None else None,
            "since": self.since,
            "previous_run": self.previous_run,
            "previous_model": self.previous_model,
            "deploying_run": self.deploying_run,
            "lease_until": self.lease_until,
            "awaiting_run": self.awaiting_run,
            "awaiting_until": self.awaiting_until,
            "rollout": json.dumps(self.rollout, sort_keys=True) if self.rollout is not None else None,
            "queued_run": self.queued_run,
        }

    @classmethod
    def from_entity(cls, entity) -> TargetState:
        metrics = entity.get("live_metrics")
        return cls(
            name=entity["RowKey"],
            live_run=entity.get("live_run"),
            live_model=entity.get("live_model"),
            live_metrics=json.loads(metrics) if metrics else None,
            since=entity.get("since"),
            previous_run=entity.get("previous_run"),
            previous_model=entity.get("previous_model"),
            deploying_run=entity.get("deploying_run"),
            lease_until=entity.get("lease_until"),
            awaiting_run=entity.get("awaiting_run"),
            awaiting_until=entity.get("awaiting_until"),
            rollout=json.loads(entity["rollout"]) if entity.get("rollout") else None,
            queued_run=entity.get("queued_run"),
            etag=entity.metadata["etag"],
            written_at=written_at(entity),
        )


class TargetStore:
    """Deploy targets' live state (``_targets`` partition) and their deployment history
    (``_history-<target>`` partitions, one entity per change, newest first)."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def get(self, name: str) -> TargetState:
        """A target's state; one never deployed to gets an empty state, stored on its first save."""
        return self.peek(name) or TargetState(name)

    def peek(self, name: str) -> TargetState | None:
        """The target's state if recorded, without creating anything (for read-only callers)."""
        try:
            return TargetState.from_entity(self.table.get_entity(TARGETS_PARTITION, name))
        except ResourceNotFoundError:
            return None

    def recorded(self) -> list[TargetState]:
        """Every target with a recorded state (one partition query; none before the table exists)."""
        query = "PartitionKey eq @pk"
        return [
            TargetState.from_entity(e)
            for e in rows(self.table.query_entities(query, parameters={"pk": TARGETS_PARTITION}))
        ]

    def save(self, state: TargetState) -> TargetState:
        """Replace the state if nobody changed it since it was read (insert it if it was never stored)."""
        try:
            if state.etag is None:
                meta = self.table.create_entity(state.to_entity())
            else:
                meta = self.table.update_entity(
                    state.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=state.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceModifiedError, ResourceNotFoundError, ResourceExistsError):
            raise StaleError(state.name) from None
        state.etag, state.written_at = meta["etag"], server_time(meta)
        return state

    def record(self, name: str, at: dt.datetime, entry: dict) -> None:
        """Append one history entry; RowKeys count down so a partition query lists newest first."""
        inverted = f"{(dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc) - at).total_seconds():016.6f}"
        entity = {
            "PartitionKey": f"_history-{name}",
            "RowKey": f"{inverted}-{entry['run']}",
            "kind": "deployment",
            "at": at,
            **{k: v for k, v in entry.items() if v is not None},
        }
        with contextlib.suppress(ResourceExistsError):  # the same change recorded twice is one change
            self.table.create_entity(entity)

    def history(self, name: str) -> list[dict]:
        query = "PartitionKey eq @pk"
        return [dict(e) for e in self.table.query_entities(query, parameters={"pk": f"_history-{name}"})]


COMMANDS_PARTITION = "_commands"
DONE, REJECTED, FAILED, IN_PROGRESS = "Done", "Rejected", "Failed", "InProgress"


class Claim(NamedTuple):
    """The outcome of claiming a request: ``claimed`` (carry it out), ``done`` (finished before: a
    duplicate) or ``busy`` (another delivery is carrying it out); ``record`` is its log entry."""

    state: str
    key: str
    record: dict


class CommandLog:
    """Every command received, keyed by the sender's ``request_id`` (or the queue message id): the
    idempotency record (the same id is carried out once) and the list an operator reads to see what
    was rejected or gave up, and why."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def claim(self, key: str, fields: dict, lease: dt.timedelta, now: dt.datetime, dequeue_count: int = 1) -> Claim:
        """Claim request ``key`` for this delivery: ``claimed``, ``done`` (finished before) or ``busy``
        (another delivery is carrying it out right now).

        A later delivery of the *same* message takes over at once: the queue hands a message out again
        only once its earlier delivery stopped holding it (the host renews a running one's visibility),
        so that delivery died mid-way and its lease would only make the retries run out."""
        entity = {
            "PartitionKey": COMMANDS_PARTITION,
            "RowKey": key,
            "kind": "command",
            "status": IN_PROGRESS,
            "received_at": now,
            "updated_at": now,
            "lease_until": now + lease,
            "deliveries": 1,
            "duplicates": 0,
            "dequeue_count": dequeue_count,
            **{k: v for k, v in fields.items() if v is not None},
        }

        def attempt() -> Claim:
            try:
                meta = self.table.create_entity(entity)
                return Claim("claimed", key, {**entity, "etag": meta["etag"]})
            except ResourceExistsError:
                pass
            try:
                current = self.table.get_entity(COMMANDS_PARTITION, key)
            except ResourceNotFoundError:
                raise StaleError(key) from None  # deleted in between: start over
            etag = current.metadata["etag"]
            record = dict(current)
            if record["status"] == REJECTED and record.get("message_id") != fields.get("message_id"):
                # A rejection carried nothing out: a new message with this id is judged anew (the blob
                # it names may exist now). A redelivery of the rejected message itself stays a duplicate.
                record.update(
                    {k: v for k, v in fields.items() if v is not None},
                    status=IN_PROGRESS,
                    previous_reason=record.pop("reason", None),
                    resends=int(record.get("resends") or 0) + 1,
                    received_at=now,
                )
            elif record["status"] != IN_PROGRESS:
                record["duplicates"] = int(record.get("duplicates") or 0) + 1
                record["updated_at"] = now
                with contextlib.suppress(ResourceModifiedError):
                    self.table.update_entity(
                        record, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                return Claim("done", key, record)
            else:
                redelivered = record.get("message_id") == fields.get("message_id") and dequeue_count > int(
                    record.get("dequeue_count") or 0
                )
                if not lease_lapsed(record.get("lease_until"), written_at(current), lease, now) and not redelivered:
                    return Claim("busy", key, record)
            record.update(
                lease_until=now + lease,
                updated_at=now,
                deliveries=int(record.get("deliveries") or 0) + 1,
                message_id=fields.get("message_id"),
                dequeue_count=dequeue_count,
            )
            try:
                meta = self.table.update_entity(
                    record, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
                return Claim("claimed", key, {**record, "etag": meta["etag"]})
            except ResourceModifiedError:
                raise StaleError(key) from None

        return retry_on_conflict(attempt, f"command {key}")

    def finish(self, key: str, status: str, now: dt.datetime, **fields) -> None:
        """Record the outcome. Unconditional: only the claim's holder (or a rejection, which never
        claimed) gets here."""
        try:
            record = dict(self.table.get_entity(COMMANDS_PARTITION, key))
        except ResourceNotFoundError:
            record = {
                "PartitionKey": COMMANDS_PARTITION,
                "RowKey": key,
                "kind": "command",
                "received_at": now,
                "deliveries": 1,
                "duplicates": 0,
            }
        record.update(status=status, updated_at=now, **fields)
        record.pop("lease_until", None)
        self.table.upsert_entity({k: v for k, v in record.items() if v is not None}, mode=UpdateMode.REPLACE)

    def release(self, key: str, now: dt.datetime, last_error: str) -> None:
        """Give up the claim after a transient failure so the redelivery may claim it at once."""
        with contextlib.suppress(ResourceNotFoundError):
            current = self.table.get_entity(COMMANDS_PARTITION, key)
            current.update(lease_until=now, updated_at=now, last_error=last_error)
            self.table.update_entity(current, mode=UpdateMode.REPLACE)

    def get(self, key: str) -> dict | None:
        try:
            return dict(self.table.get_entity(COMMANDS_PARTITION, key))
        except ResourceNotFoundError:
            return None

    def list(self, status: str | None = None) -> list[dict]:
        query = "PartitionKey eq @pk" + (" and status eq @status" if status else "")
        entities = rows(self.table.query_entities(query, parameters={"pk": COMMANDS_PARTITION, "status": status}))
        return sorted((dict(e) for e in entities), key=lambda e: e.get("received_at") or dt.datetime.min)
