"""The run: one attempt to produce and ship a model from one dataset. Pure: no I/O here.

A run moves through the states below; every move is recorded in its append-only history with who
moved it, when and why, and the store persists each move ETag-conditionally.

    Requested ──▶ Submitted ──▶ Running ──▶ Approved ──▶ Deploying ──▶ Deployed
        │  ▲          │            │  │           (gate)                   PartiallyDeployed / Failed
        ▼  │          ▼            │  └──▶ Rejected (gate: not better than what is live)
      Waiting       Failed         │  └──▶ Finished (trained; no deploy target configured)
        │                          ▼
        ▼            Failed / TimedOut / Cancelled (or back to Requested: resubmitted)
    Superseded

A run holds its pipeline's single training slot from Requested until it leaves Approved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from shared.redact import redact, redact_tree
from shared.storage import BlobRef

REQUESTED = "Requested"
WAITING = "Waiting"
SUBMITTED = "Submitted"
RUNNING = "Running"
FINISHED = "Finished"
APPROVED = "Approved"
REJECTED = "Rejected"
DEPLOYING = "Deploying"
DEPLOYED = "Deployed"
PARTIALLY_DEPLOYED = "PartiallyDeployed"
FAILED = "Failed"
TIMED_OUT = "TimedOut"
CANCELLED = "Cancelled"
SUPERSEDED = "Superseded"
INVALID = "Invalid"  # the upload failed its pipeline's pre-flight checks: no job was spent on it
AWAITING_APPROVAL = "AwaitingApproval"  # deployed where it could be; a target with manual approval waits

TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({WAITING, SUBMITTED, SUPERSEDED, FAILED, CANCELLED, INVALID}),
    WAITING: frozenset({REQUESTED, SUPERSEDED, CANCELLED}),
    SUBMITTED: frozenset({RUNNING, FAILED, CANCELLED, TIMED_OUT}),
    RUNNING: frozenset({APPROVED, REJECTED, FINISHED, FAILED, CANCELLED, TIMED_OUT, REQUESTED}),
    APPROVED: frozenset({DEPLOYING, CANCELLED}),
    DEPLOYING: frozenset({DEPLOYED, PARTIALLY_DEPLOYED, FAILED, AWAITING_APPROVAL, REJECTED}),
    AWAITING_APPROVAL: frozenset({DEPLOYED, PARTIALLY_DEPLOYED, FAILED, REJECTED}),
    **{
        end: frozenset()
        for end in (FINISHED, REJECTED, DEPLOYED, PARTIALLY_DEPLOYED, FAILED, TIMED_OUT, CANCELLED, SUPERSEDED, INVALID)
    },
}
# States in which the run named by its pipeline's slot holds it: from its promotion (it is Waiting for
# a moment after the slot names it) until it is handed off for deployment or ends.
HOLDS_SLOT = frozenset({WAITING, REQUESTED, SUBMITTED, RUNNING, APPROVED})
ENDED = frozenset(status for status, moves in TRANSITIONS.items() if not moves)

# Table Storage strings hold at most 32,768 characters; keep the history well inside that.
HISTORY_LIMIT_CHARS = 30_000
# How long one invocation may hold a run (while it submits it, or hands it off) before another may.
LEASE = dt.timedelta(minutes=10)


class InvalidTransition(ValueError):
    pass


@dataclass(frozen=True)
class Outcome:
    """What one invocation did with a run: for the log line and for tests."""

    run_id: str
    status: str
    action: str  # started | waiting | superseded | rejected | failed | duplicate | in_progress | retry | ...


class RetryLater(Exception):
    """A transient failure was recorded on the run; raising lets the trigger deliver again."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def run_id_for(pipeline: str, blob: BlobRef, salt: str = "") -> str:
    """A deterministic id for training ``pipeline`` on one version of a blob.

    The same blob delivered twice yields the same id (so one run); a new ETag yields a new id. The
    upload time comes first so an operator's listing sorts by when the data arrived. ``salt`` makes a
    deliberate retraining of the same data a new run (a schedule's occurrence, say).
    """
    key = f"{pipeline}\n{blob.container}\n{blob.name}\n{blob.etag}" + (f"\n{salt}" if salt else "")
    digest = hashlib.sha256(key.encode()).hexdigest()
    stamp = blob.last_modified.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}Z-{digest[:16]}"


def lease_lapsed(until: dt.datetime | None, written_at: dt.datetime | None, length: dt.timedelta, now) -> bool:
    """Whether a lease recorded as ``until`` has lapsed at ``now``.

    A lease never outlasts its ``length`` past ``written_at``, when storage received it (the entity's
    server-side ``Timestamp``): a holder whose clock runs five hours fast writes a lease five hours too
    long, and would otherwise block everyone else for those five hours.
    """
    if until is None:
        return True
    if written_at is not None:
        until = min(until, written_at + length)
    return until <= now


def row_key(run_id: str) -> str:
    """The run's RowKey: its upload time counted down, then its id, so a partition lists newest first
    (Table Storage only sorts ascending) and a page of recent runs is one range query."""
    digits = int(run_id[:8] + run_id[9:15])
    return f"{99999999999999 - digits:014d}-{run_id}"


@dataclass
class Run:
    """A run's state as stored in one Table entity (``PartitionKey`` = pipeline, ``RowKey`` =
    :func:`row_key` of its id)."""

    pipeline: str
    run_id: str
    status: str
    source: str
    created_at: dt.datetime
    updated_at: dt.datetime
    blob_container: str = ""
    blob_name: str = ""
    blob_etag: str = ""
    blob_size: int = 0
    blob_last_modified: dt.datetime | None = None
    job_id: str | None = None
    attempts: int = 0
    resubmissions: int = 0  # failed jobs replaced by a new one (RESUBMIT_FAILED_JOBS): names the next job
    check_failures: int = 0  # status checks of the job that failed (any reason), all told
    last_check_error: dict[str, Any] | None = None
    lease_owner: str | None = None
    lease_until: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    superseded_by: str | None = None
    model: dict[str, Any] | None = None  # the registered model version (a trainer with a registry)
    submitted_at: dt.datetime | None = None
    error: dict[str, Any] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)  # per target: decision, value, champion, reason
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # per target: deploy status and details
    history: list[dict[str, Any]] = field(default_factory=list)
    # When storage first recorded the run (its server clock): orders uploads of the same second.
    recorded_at: dt.datetime | None = None
    etag: str | None = None
    written_at: dt.datetime | None = None  # server Timestamp of the version read (not stored)
    read_status: str | None = None  # the status as read from storage (not stored): what a write changes

    @classmethod
    def for_blob(cls, pipeline: str, blob: BlobRef, source: str, actor: str, now: dt.datetime, salt: str = "") -> Run:
        run = cls(
            pipeline=pipeline,
            run_id=run_id_for(pipeline, blob, salt),
            status=REQUESTED,
            source=source,
            created_at=now,
            updated_at=now,
            blob_container=blob.container,
            blob_name=blob.name,
            blob_etag=blob.etag,
            blob_size=blob.size,
            blob_last_modified=blob.last_modified,
        )
        run.history.append({"at": iso(now), "to": REQUESTED, "by": actor, "reason": f"new data from {source}"})
        return run

    @property
    def order_key(self) -> str:
        """Sorts runs by when their data arrived: blob upload time (whole seconds, all storage gives),
        then when storage recorded the run, so two uploads in the same second keep their arrival order.
        Both are the storage service's clock: an instance whose clock is skewed decides nothing."""
        uploaded = (self.blob_last_modified or self.created_at).astimezone(dt.timezone.utc)
        recorded = (self.recorded_at or self.created_at).astimezone(dt.timezone.utc)
        return f"{uploaded:%Y%m%dT%H%M%S}|{recorded:%Y%m%dT%H%M%S.%f}|{self.run_id}"

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def holds_slot(self) -> bool:
        return self.status in HOLDS_SLOT

    def transition(self, to: str, *, by: str, reason: str, now: dt.datetime | None = None, **changes: Any) -> None:
        """Move to ``to`` (if allowed), apply ``changes`` and append the move to the history."""
        if to not in TRANSITIONS[self.status]:
            raise InvalidTransition(f"run {self.run_id}: {self.status} -> {to} is not allowed")
        now = now or utcnow()
        entry = {"at": self._stamp(now), "from": self.status, "to": to, "by": by, "reason": redact(reason)[:500]}
        self.status = to
        self.updated_at = now
        self._apply(changes)
        if to in ENDED:
            self.ended_at = now
            self.lease_owner = self.lease_until = None
        self.history.append(entry)

    def note(self, *, by: str, reason: str, now: dt.datetime | None = None, **changes: Any) -> None:
        """Record an event that changes fields but not the status (e.g. a failed attempt)."""
        now = now or utcnow()
        self._apply(changes)
        self.updated_at = now
        self.history.append({"at": self._stamp(now), "event": redact(reason)[:500], "by": by})

    def _apply(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            # Recorded text is redacted whole, before anything truncates it (a cut secret is a leak).
            recorded = name in ("error", "targets", "gate", "last_check_error")
            setattr(self, name, redact_tree(value) if recorded else value)

    def _stamp(self, now: dt.datetime) -> str:
        """``now`` for a new history entry, never before the last one: a writer whose clock was read
        before another's save (then retried on the ETag conflict) must not record the past."""
        stamp = iso(now)
        last = self.history[-1]["at"] if self.history else ""
        return max(stamp, last)

    def lease_free(self, now: dt.datetime) -> bool:
        return lease_lapsed(self.lease_until, self.written_at, LEASE, now)


def iso(value: dt.datetime) -> str:
    """A UTC timestamp as recorded in histories: ISO 8601, milliseconds, ``Z``."""
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> dt.datetime | None:
    """A timestamp written by :func:`iso` (or any ISO 8601 with ``Z``) read back; ``None`` for none."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
