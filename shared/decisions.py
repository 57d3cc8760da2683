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


# --- staged rollouts (shared/rollout.py) -------------------------------------------------------------


def live_deployment(traffic: dict[str, int]) -> str | None:
    """The deployment with the most traffic (the one a new model replaces); ties go to the first name."""
    shares = {name: share for name, share in traffic.items() if share > 0}
    return min(shares, key=lambda name: (-shares[name], name)) if shares else None


def split(traffic: dict[str, int], new: str, share: int) -> dict[str, int]:
    """``share`` percent to ``new``; the rest of 100 over the deployments live now, in proportion,
    rounded so the map sums to exactly 100 (largest remainders first, then names)."""
    live = {name: v for name, v in traffic.items() if v > 0 and name != new}
    rest, total = 100 - share, sum(live.values())
    if not live or total <= 0:
        return {new: 100}
    exact = {name: v * rest / total for name, v in live.items()}
    result = {name: int(value) for name, value in exact.items()}
    order = sorted(exact, key=lambda name: (-(exact[name] - result[name]), name))
    for name in order[: rest - sum(result.values())]:
        result[name] += 1
    return {**{name: v for name, v in result.items() if v > 0}, new: share}


def stage_maps(
    stage: str, previous: dict[str, dict[str, int]], new: str, mirror_percent: int, canary_percent: int
) -> tuple[dict[str, int], dict[str, int]]:
    """The traffic and mirror maps an endpoint gets on entering ``stage`` (``previous``: the maps read
    before the rollout changed anything). A mirrored deployment gets no live traffic and vice versa."""
    if stage == "shadow":
        return dict(previous["traffic"]), {new: mirror_percent}
    if stage == "canary":
        return split(previous["traffic"], new, canary_percent), {}
    if stage == "promote":
        return {new: 100}, {}
    if stage == "rollback":
        return dict(previous["traffic"]), dict(previous["mirror"])
    raise ValueError(f"stage {stage!r} does not change traffic")


def after(stage: str, *, kind: str, has_live: bool, mirror_percent: int, canary_percent: int) -> str:
    """The stage that follows ``stage`` (create → probe → shadow → canary → promote → retire), skipping
    what the rollout does not use: no shadow without a mirror share, no canary without a canary share,
    neither without a live deployment (a first deploy gets all traffic once healthy: there is no live
    traffic to mirror or split); a rollback goes straight from create to promote."""
    order = ["create", "probe", "shadow", "canary", "promote", "retire"]
    if kind == "rollback":
        order = ["create", "promote", "retire"]
    skipped = {"shadow"} if mirror_percent <= 0 or not has_live else set()
    if canary_percent <= 0 or not has_live:
        skipped.add("canary")
    following = [s for s in order[order.index(stage) + 1 :] if s not in skipped]
    return following[0] if following else "done"


def probe_verdict(errors: int, rows: int, max_error_rate: float) -> tuple[float, bool]:
    """A probe's error rate and whether it passes (no rows probed passes: probing is off)."""
    rate = errors / rows if rows else 0.0
    return rate, rate <= max_error_rate


def retire(deployments: list[tuple[str, str]], keep: int, protected: set[str]) -> list[str]:
    """Which deployments to delete so at most ``keep`` remain (every deployment counts, the live one
    too): the oldest first (``(name, created)`` pairs), never a protected one (the live deployment,
    the one a rollback returns to)."""
    excess = len(deployments) - keep
    if excess <= 0:
        return []
    candidates = sorted(
        (d for d in deployments if d[0].lower() not in {p.lower() for p in protected}), key=lambda d: (d[1], d[0])
    )
    return [name for name, _ in candidates[:excess]]
