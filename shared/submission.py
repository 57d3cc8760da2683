"""Creating and starting a run's training job, through its pipeline's trainer; and moving the pipeline on.

Safe to repeat: a run holds a short lease while one invocation submits it; the job id is recorded
before the job is started, so a retry starts that job rather than creating another; a job is never
started unless its id is recorded (one whose answer was lost never runs).
"""

from __future__ import annotations

import datetime as dt
import logging

from shared import runs as R
from shared import slot, telemetry
from shared.http import ServiceError
from shared.redact import redact
from shared.runs import LEASE, Outcome, RetryLater, Run, utcnow
from shared.store import StaleError

log = logging.getLogger(__name__)


def take_over(svc, pipeline: str, run_id: str, actor: str, now: dt.datetime) -> Run | Outcome:
    """A delivery found its run already recorded: resume it only if it is stuck before Running."""
    existing = svc.store.get(pipeline, run_id)
    if existing.status not in (R.REQUESTED, R.SUBMITTED):
        log.info("run %s: duplicate delivery ignored (status %s)", run_id, existing.status)
        return Outcome(run_id, existing.status, "duplicate")
    if not existing.lease_free(now):
        log.info("run %s: another invocation (%s) is submitting it", run_id, existing.lease_owner)
        return Outcome(run_id, existing.status, "in_progress")
    if existing.attempts >= svc.settings.max_attempts:
        return fail(svc, existing, actor, f"gave up after {existing.attempts} attempts", existing.error)
    existing.note(
        by=actor,
        reason=f"attempt {existing.attempts + 1}: resuming",
        now=now,
        attempts=existing.attempts + 1,
        lease_owner=actor,
        lease_until=now + LEASE,
    )
    try:
        return svc.store.save(existing)
    except StaleError:
        return Outcome(run_id, existing.status, "in_progress")


def admit_and_submit(svc, run: Run, actor: str, *, hold: bool = False) -> Outcome:
    """Claim the pipeline's slot for a run this invocation holds; submit it, or let it wait, or record
    that newer data supersedes it."""
    decision, other = slot.admit(svc, run, actor, hold=hold)
    if decision == "active":
        return submit(svc, run, actor)
    if decision == "waiting":
        why = "waiting for the quiet period to pass" if hold else "waiting for the active run to end"
        outcome = slot.settle(svc, run, actor, R.WAITING, why, attempts=0)
        if other:
            slot.supersede(svc, run.pipeline, other, by_run=run.run_id, actor=actor)
        return outcome
    return slot.settle(svc, run, actor, R.SUPERSEDED, f"newer data is already queued ({other})", superseded_by=other)


def submit(svc, run: Run, actor: str) -> Outcome:
    """Create and start the run's job. The job id is recorded before starting, so a retry starts the
    same job instead of creating another."""
    trainer = svc.trainer(run.pipeline)
    try:
        if run.job_id is None:
            job = trainer.submit(run, utcnow())
            run.transition(
                R.SUBMITTED,
                by=actor,
                reason=f"{trainer.kind.upper()} job {job.job_id} created",
                job_id=job.job_id,
                outputs=job.outputs,
                error=None,
                submitted_at=utcnow(),
            )
            try:
                run = svc.store.save(run)
            except StaleError:
                # Someone else moved the run (e.g. an operator cancelled it): our job must not run.
                cancel_quietly(svc, run.pipeline, job.job_id)
                current = svc.store.get(run.pipeline, run.run_id)
                return Outcome(run.run_id, current.status, "duplicate")
        trainer.start(run.job_id)
    except ServiceError as exc:
        return _submit_failed(svc, run, exc, actor)

    def change(current: Run) -> bool:
        if current.status != R.SUBMITTED:
            return False
        current.transition(
            R.RUNNING,
            by=actor,
            reason=f"{trainer.kind.upper()} job {current.job_id} started",
            lease_owner=None,
            lease_until=None,
        )
        return True

    current = svc.store.update(run.pipeline, run.run_id, change, held=run)
    with telemetry.bind(job_id=run.job_id):
        log.info("run %s: job %s started", run.run_id, run.job_id)
    telemetry.count("runs.started", pipeline=run.pipeline, source=run.source)
    return Outcome(run.run_id, current.status, "started")


def _submit_failed(svc, run: Run, exc: ServiceError, actor: str) -> Outcome:
    error = exc.as_record()
    if not exc.transient or run.attempts >= svc.settings.max_attempts:
        reason = str(exc) if not exc.transient else f"gave up after {run.attempts} attempts: {exc}"
        return fail(svc, run, actor, reason, error)

    def change(current: Run) -> bool:
        current.note(
            by=actor,
            reason=f"attempt {current.attempts} failed: {exc}",
            error=error,
            lease_owner=None,
            lease_until=None,
        )
        return True

    svc.store.update(run.pipeline, run.run_id, change)
    log.warning("run %s: attempt %d failed, will retry: %s", run.run_id, run.attempts, exc)
    raise RetryLater(f"run {run.run_id}: {exc}") from None


def fail(svc, run: Run, actor: str, reason: str, error: dict | None) -> Outcome:
    """End a run Failed (it never reached Running) and move the pipeline on."""

    def change(current: Run) -> bool:
        if current.ended:
            return False
        current.transition(R.FAILED, by=actor, reason=redact(reason), error=error)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    log.error("run %s failed: %s", run.run_id, redact(reason))
    telemetry.count("runs.failed", pipeline=run.pipeline, stage="submit")
    advance_pipeline(svc, run.pipeline, run.run_id, actor)
    return Outcome(run.run_id, current.status, "failed")


def cancel_quietly(svc, pipeline: str, job_id: str) -> None:
    try:
        svc.trainer(pipeline).cancel(job_id)
    except ServiceError as exc:
        log.warning("could not cancel job %s: %s", job_id, exc)


def advance_pipeline(svc, pipeline: str, ended_run_id: str, actor: str) -> Outcome | None:
    """After ``ended_run_id`` ended (or was handed off), give the slot to the newest waiting upload and
    start it."""
    next_id = slot.pass_slot(svc, pipeline, ended_run_id)
    return promote(svc, pipeline, next_id, actor, f"promoted: run {ended_run_id} ended") if next_id else None


def start_quiet_waiter(svc, pipeline: str, actor: str, now: dt.datetime | None = None) -> Outcome | None:
    """With ``DEBOUNCE_SECONDS``: start the newest waiting upload once no upload came for that long."""
    current = svc.store.get_slot(pipeline)
    if current.active_run or not current.waiting_run:
        return None
    waiter = svc.store.get(pipeline, current.waiting_run)
    now = now or utcnow()
    quiet = svc.settings.debounce_seconds
    if waiter is not None:
        arrived = waiter.recorded_at or waiter.created_at  # storage's clock, not the recorder's
        if arrived + dt.timedelta(seconds=quiet) > now:
            return Outcome(waiter.run_id, waiter.status, "quiet_period")
    next_id = slot.pass_slot(svc, pipeline, None)
    return promote(svc, pipeline, next_id, actor, f"promoted: no newer upload for {quiet}s") if next_id else None


def promote(svc, pipeline: str, run_id: str, actor: str, reason: str) -> Outcome | None:
    """Start the run that was just moved into the slot (also: finish a promotion cut short)."""
    now = utcnow()

    def change(current: Run) -> bool:
        if current.status not in (R.WAITING, R.REQUESTED):
            return False
        if current.status == R.WAITING:
            current.transition(R.REQUESTED, by=actor, reason=reason, now=now)
        else:
            current.note(by=actor, reason=reason, now=now)
        current.attempts += 1
        current.lease_owner, current.lease_until = actor, now + LEASE
        return True

    run = svc.store.update(pipeline, run_id, change)
    if run is None or run.lease_owner != actor or run.status != R.REQUESTED:
        return None
    log.info("run %s: %s", run_id, reason)
    return submit(svc, run, actor)
