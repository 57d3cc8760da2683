"""The run's decisions, as pure functions: no storage, no service, no clock of their own.

What the workflow does with a job's state at a given time, and whether an upload takes its pipeline's
training slot, waits for it or is superseded. (What the gate decides is :func:`shared.gate.decide`.)
The callers read state, call these, and write the outcome ETag-conditionally.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from shared.training import CANCELLED, FAILED, FINISHED, JobState

# What a poll does with a run's job.
WAIT = "wait"  # still queued or running, within its allowed time
TIME_OUT = "time_out"  # past its allowed time: cancel it and end the run TimedOut
ENDED_OUTSIDE = "cancelled"  # cancelled by someone else: end the run Cancelled
RESUBMIT = "resubmit"  # failed, and another attempt is allowed: a new job on the same data
FAIL = "fail"  # failed for good: end the run Failed with the job's details
JUDGE = "judge"  # finished: read its evaluation and apply the gate
RETRY = "retry"  # the status could not be read, for a reason that may pass: count it, try next tick
UNREACHABLE = "unreachable"  # the status cannot be read for good (job unknown, key rejected): end Failed


@dataclass(frozen=True)
class JobVerdict:
    action: str
    why: str


def job_verdict(
    state: JobState | None,
    *,
    now: dt.datetime,
    deadline: dt.datetime,
    check_transient: bool = True,
    attempts: int = 1,
    max_attempts: int = 1,
    resubmit: bool = False,
) -> JobVerdict:
    """What a job's state means for its run at ``now``. ``state`` is ``None`` when the status call
    failed (``check_transient`` says whether that may pass); the deadline holds whatever it answered."""
    late = now >= deadline
    if state is None:
        if not check_transient:
            return JobVerdict(UNREACHABLE, "the job's status cannot be read")
        return JobVerdict(TIME_OUT, "unchecked past its deadline") if late else JobVerdict(RETRY, "status unknown")
    if state.active:
        return JobVerdict(TIME_OUT, f"still {state.status}") if late else JobVerdict(WAIT, state.status)
    if state.status == CANCELLED:
        return JobVerdict(ENDED_OUTSIDE, "cancelled outside this app")
    if state.status == FAILED:
        if resubmit and attempts < max_attempts:
            return JobVerdict(RESUBMIT, f"attempt {attempts} of {max_attempts} failed")
        return JobVerdict(FAIL, "failed")
    if state.status == FINISHED:
        return JobVerdict(JUDGE, "finished")
    raise ValueError(f"not a job state: {state.status!r}")


def retry_cancel(*, transient: bool, now: dt.datetime, deadline: dt.datetime, grace: dt.timedelta) -> bool:
    """Whether a cancel that failed at the deadline is tried again at the next tick: while the job may
    still do something (until ``grace`` after its deadline, when its access to our data lapses)."""
    return transient and now < deadline + grace


# Whether an upload gets its pipeline's slot.
ACTIVE, WAITING, SUPERSEDED = "active", "waiting", "superseded"


@dataclass(frozen=True)
class Admission:
    """The decision, the other run it concerns (the waiter it displaces, or the run that supersedes it),
    and the slot to write (``active_run``, ``waiting_run``, ``waiting_key``), or ``None`` to write nothing."""

    decision: str
    other: str | None = None
    write: tuple[str | None, str | None, str | None] | None = None


def admission(
    *,
    run_id: str,
    key: str,
    active: str | None,
    active_key: str | None,
    waiting: str | None,
    waiting_key: str | None,
    hold: bool = False,
) -> Admission:
    """Whether the run ``run_id`` (its data's order ``key``) takes the slot, waits for it (only the
    newest waits: it displaces an older waiter) or is superseded by newer data.

    ``active``/``active_key``: the run holding the slot and its order key. ``hold``: wait even for a
    free slot (a quiet period: the poll starts the newest waiter once no upload came for a while).
    """
    if active == run_id:
        return Admission(ACTIVE)
    if active is not None and active_key is not None and key < active_key:
        return Admission(SUPERSEDED, active)  # the data in training already is newer
    if active is None and not hold:
        return Admission(ACTIVE, write=(run_id, waiting, waiting_key))
    if waiting == run_id:
        return Admission(WAITING)
    if waiting is None or key > (waiting_key or ""):
        return Admission(WAITING, waiting, write=(active, run_id, key))
    return Admission(SUPERSEDED, waiting)
