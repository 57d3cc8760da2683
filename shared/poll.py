"""The timer's poll: move every pipeline's active run on, from its job's state to a judged, handed-off
model.

Cost grows with active work, not with history: the poll reads the pipelines' slots (one small
partition: the index of what is active) and then only the runs they name, pipelines concurrently
(``POLL_CONCURRENCY``). A pipeline whose poll fails has the error recorded on its slot; the others go
on. Overlapping polls are safe: every move is an ETag-conditional update of a run read just before,
so of two polls seeing the same finished job exactly one records it and hands it on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from shared import decisions, gate, telemetry
from shared import runs as R
from shared.http import ServiceError
from shared.redact import redact
from shared.runs import LEASE, Outcome, RetryLater, Run, utcnow
from shared.store import PipelineSlot
from shared.submission import admit_and_submit, advance_pipeline, promote, start_quiet_waiter, submit, take_over
from shared.training import JobState

log = logging.getLogger(__name__)
COMMAND_VERSION = 1


def poll(svc, *, actor: str, now: dt.datetime | None = None) -> list[Outcome]:
    """Check every pipeline's active run once (and start a held upload once quiet); what happened."""
    now = now or utcnow()
    configured = {p.name for p in svc.settings.pipelines}
    work = [s for s in svc.store.slots() if s.pipeline in configured and (s.active_run or s.waiting_run)]
    if svc.settings.approvals:  # waits for a person's approval that ran out end here, recorded
        try:
            from shared import deploy

            deploy.expire_approvals(svc, actor)
        except Exception:  # never in the way of the runs' own polling; the next tick tries again
            log.exception("expiring approvals failed")
    if any(getattr(t, "staged", False) for t in svc.settings.targets):  # rollouts in progress: one step each
        try:
            from shared import rollout

            rollout.advance_all(svc, actor=actor, now=now)
        except Exception:  # never in the way of the runs' own polling; the next tick tries again
            log.exception("advancing rollouts failed")
    if len(work) <= 1:
        outcomes = [poll_pipeline(svc, slot, actor, now) for slot in work]
    else:
        with ThreadPoolExecutor(min(len(work), svc.settings.poll_concurrency), thread_name_prefix="poll") as pool:
            outcomes = list(pool.map(lambda slot: poll_pipeline(svc, slot, actor, now), work))
    return [o for o in outcomes if o is not None]


def poll_pipeline(svc, slot: PipelineSlot, actor: str, now: dt.datetime) -> Outcome | None:
    """One pipeline's turn. Whatever fails is recorded — on the run if it concerns its job (so the
    deadline still holds), on the pipeline's slot otherwise — and never stops the other pipelines."""
    with telemetry.bind(pipeline=slot.pipeline, run_id=slot.active_run):
        try:
            if slot.active_run:
                outcome = poll_run(
                    svc, slot.pipeline, slot.active_run, actor=actor, now=now, slot_since=slot.updated_at
                )
            else:  # only a held upload (DEBOUNCE_SECONDS) waits while the slot is free: start it once quiet
                outcome = start_quiet_waiter(svc, slot.pipeline, actor, now)
        except Exception as exc:
            if isinstance(exc, (ServiceError, RetryLater)):
                log.warning("pipeline %s: poll will retry: %s", slot.pipeline, exc)
            else:  # a bug or an answer nobody foresaw
                log.exception("pipeline %s: unexpected error while polling", slot.pipeline)
            return _record_failure(svc, slot, actor, now, exc)
        if slot.last_error:
            _note_pipeline(svc, slot.pipeline, None)
        return outcome


def _record_failure(svc, slot: PipelineSlot, actor: str, now: dt.datetime, exc: Exception) -> Outcome:
    error = {
        "code": getattr(exc, "code", None) or type(exc).__name__,
        "message": redact(f"{type(exc).__name__}: {exc}")[:1000],
        "at": R.iso(now),
        "transient": getattr(exc, "transient", True),
    }
    try:
        _note_pipeline(svc, slot.pipeline, error)
        run = svc.store.get(slot.pipeline, slot.active_run) if slot.active_run else None
        if (
            run is not None
            and run.status == R.RUNNING
            and run.job_id
            and not isinstance(exc, (ServiceError, RetryLater))
        ):
            return _check_failed(svc, run, actor, now, {**error, "code": "Unexpected"})
    except Exception:  # storage itself is failing: nothing can be recorded now; the next tick retries
        log.exception("pipeline %s: could not record the failure", slot.pipeline)
    return Outcome(slot.active_run or "-", "?", "retry")


def _note_pipeline(svc, pipeline: str, error: dict | None) -> None:
    """Record (or clear) the last failed poll of a pipeline on its slot, for the status page and API."""

    def change(slot: PipelineSlot) -> bool:
        if slot.last_error == error:
            return False
        slot.last_error = error
        return True

    svc.store.update_slot(pipeline, change)


def poll_run(
    svc, pipeline: str, run_id: str, *, actor: str, now: dt.datetime, slot_since: dt.datetime | None = None
) -> Outcome:
    """One active run: resume what was interrupted, check its job, or hand it off for deployment.
    ``slot_since`` is when the run got the slot (storage's clock)."""
    run = svc.store.get(pipeline, run_id)
    if run is None or not run.holds_slot:
        advance_pipeline(svc, pipeline, run_id, actor)  # the slot outlived its run: move it on
        return Outcome(run_id, run.status if run else "missing", "advanced")
    if run.status == R.WAITING:
        # Moved into the slot, not yet started: a promotion in flight, or one cut short (then finish it).
        if slot_since is not None and slot_since + LEASE > now:
            return Outcome(run_id, run.status, "in_progress")
        return promote(svc, pipeline, run_id, actor, "promoted: resuming an interrupted promotion") or Outcome(
            run_id, run.status, "in_progress"
        )
    if run.status in (R.REQUESTED, R.SUBMITTED):
        if not run.lease_free(now):
            return Outcome(run_id, run.status, "in_progress")
        resumed = take_over(svc, pipeline, run_id, actor, now)  # an interrupted submission: finish it
        return resumed if isinstance(resumed, Outcome) else admit_and_submit(svc, resumed, actor)
    if run.status == R.APPROVED:
        return hand_off(svc, run, actor)
    with telemetry.bind(job_id=run.job_id):
        return check_job(svc, run, actor, now)


def deadline_of(svc, run: Run) -> dt.datetime:
    """When the run's job has had its allowed time (``JOB_TIMEOUT_MINUTES`` from its submission)."""
    return (run.submitted_at or run.created_at) + dt.timedelta(minutes=svc.settings.job_timeout_minutes)


def check_job(svc, run: Run, actor: str, now: dt.datetime) -> Outcome:
    """Read the run's job state and do what it means (:func:`shared.decisions.job_verdict`)."""
    state, failure = None, None
    try:
        state = svc.trainer(run.pipeline).status(run.job_id)
    except ServiceError as exc:
        failure = exc
    verdict = decisions.job_verdict(
        state,
        now=now,
        deadline=deadline_of(svc, run),
        check_transient=failure is None or failure.transient,
        attempts=run.attempts,
        max_attempts=svc.settings.max_attempts,
        resubmit=svc.settings.resubmit_failed_jobs,
    )
    action = verdict.action
    if action == decisions.WAIT:
        if state is not None and state.details:  # a running job that needs attention: noted once per change
            _note_once(svc, run, actor, f"the job reports: {redact(state.details)[:300]}")
        return Outcome(run.run_id, run.status, "running")
    if action == decisions.UNREACHABLE:  # the job is unknown (404), or our key no longer opens it (401/403)
        return _end(
            svc, run, actor, R.FAILED, f"job {run.job_id} cannot be checked: {failure}", error=failure.as_record()
        )
    if action == decisions.RETRY:
        return _check_failed(svc, run, actor, now, failure.as_record())
    if action == decisions.TIME_OUT:
        if failure is not None:
            return _check_failed(svc, run, actor, now, failure.as_record())  # counts it, then times out
        return _time_out(svc, run, actor, now, verdict.why)
    if action == decisions.ENDED_OUTSIDE:
        return _end(svc, run, actor, R.CANCELLED, f"job {run.job_id} was cancelled outside this app")
    if action in (decisions.RESUBMIT, decisions.FAIL):
        details = redact(state.details or "no details")[:4000]  # redacted whole, then cut
        if action == decisions.RESUBMIT:
            return _resubmit(svc, run, actor, details)
        error = {"code": "JobFailed", "message": details}
        return _end(svc, run, actor, R.FAILED, f"job {run.job_id} failed: {details[:300]}", error=error)
    return _judge(svc, run, actor, state)


def _note_once(svc, run: Run, actor: str, text: str) -> None:
    """Add ``text`` to the run's history unless it is already the latest entry (one write per change)."""

    def change(current: Run) -> bool:
        if current.status != run.status or (current.history and current.history[-1].get("event") == text):
            return False
        current.note(by=actor, reason=text)
        return True

    svc.store.update(run.pipeline, run.run_id, change, held=run)


def _check_failed(svc, run: Run, actor: str, now: dt.datetime, error: dict, *, enforce: bool = True) -> Outcome:
    """A status check (or judging a finished job) failed for a reason that may pass: count it, keep the
    last error, note it when the error changes — and once the deadline has passed, time the run out."""

    def change(current: Run) -> bool:
        if current.status != R.RUNNING or current.job_id != run.job_id:
            return False
        previous = current.last_check_error or {}
        current.check_failures += 1
        current.last_check_error = {**error, "at": R.iso(now)}
        current.updated_at = now
        if previous.get("code") != error.get("code"):
            current.note(by=actor, reason=f"checking job {run.job_id} failed: {error.get('message', '')[:300]}")
        return True

    current = svc.store.update(run.pipeline, run.run_id, change) or run
    if enforce and current.status == R.RUNNING and now >= deadline_of(svc, current):
        return _time_out(svc, current, actor, now, f"unchecked ({current.check_failures} failed checks)")
    log.warning("run %s: checking job %s failed, will retry: %s", run.run_id, run.job_id, error.get("message"))
    return Outcome(run.run_id, current.status, "retry")


def _time_out(svc, run: Run, actor: str, now: dt.datetime, state: str) -> Outcome:
    """The deadline has passed: cancel the job and end the run. If the cancel fails for a reason that
    may pass, it is tried again at each tick until the job can do no more harm (for BES: until its
    SAS have expired); from then on the run ends regardless."""
    minutes = svc.settings.job_timeout_minutes
    trainer = svc.trainer(run.pipeline)
    try:
        trainer.cancel(run.job_id)
        cancelled = "cancelled"
    except ServiceError as exc:
        grace = trainer.cancel_grace
        if decisions.retry_cancel(transient=exc.transient, now=now, deadline=deadline_of(svc, run), grace=grace):
            return _check_failed(svc, run, actor, now, exc.as_record(), enforce=False)
        cancelled = f"not cancelled ({exc}); its access to the data has expired"
    return _end(
        svc,
        run,
        actor,
        R.TIMED_OUT,
        f"job {run.job_id} {state} after {minutes} minutes: {cancelled}",
        error={
            "code": "JobTimeout",
            "message": f"job was {state} at the deadline",
            "failed_checks": run.check_failures,
        },
    )


def _end(svc, run: Run, actor: str, status: str, reason: str, **changes) -> Outcome:
    ended = []

    def change(current: Run) -> bool:
        ended.clear()
        if current.status != R.RUNNING:
            return False
        current.transition(status, by=actor, reason=reason, **changes)
        ended.append(True)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    if ended:  # this poll ended it (an overlapping one that found it ended already does nothing more)
        log.info("run %s: %s (%s)", run.run_id, status, reason)
        telemetry.count(
            "runs.failed" if status in (R.FAILED, R.TIMED_OUT) else f"runs.{status.lower()}",
            pipeline=run.pipeline,
            stage="job",
        )
        advance_pipeline(svc, run.pipeline, run.run_id, actor)
    return Outcome(run.run_id, current.status, status.lower())


def _resubmit(svc, run: Run, actor: str, details: str) -> Outcome:
    now = utcnow()

    def change(current: Run) -> bool:
        if current.status != R.RUNNING or current.job_id != run.job_id:
            return False
        current.transition(
            R.REQUESTED,
            by=actor,
            reason=f"job {run.job_id} failed; resubmitting: {details[:200]}",
            now=now,
            job_id=None,
            error={"code": "JobFailed", "message": details},
            attempts=current.attempts + 1,
            resubmissions=current.resubmissions + 1,
            lease_owner=actor,
            lease_until=now + LEASE,
        )
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    if current.status != R.REQUESTED or current.lease_owner != actor:
        return Outcome(run.run_id, current.status, "duplicate")
    return submit(svc, current, actor)


def _judge(svc, run: Run, actor: str, state: JobState) -> Outcome:
    """The job finished: read its evaluation and apply the pipeline's gate against each target's live model."""
    pipeline = svc.settings.pipeline_named(run.pipeline)
    try:
        metrics = svc.trainer(run.pipeline).evaluation(run)
        value = gate.metric_value(metrics, pipeline.gate.metric)
    except gate.EvaluationError as exc:
        error = {"code": exc.code, "message": str(exc)}
        return _end(svc, run, actor, R.FAILED, f"evaluation cannot be judged: {exc}", error=error)
    except ServiceError as exc:  # the service holding the metrics failed (a v2 workspace's MLflow, say)
        if exc.transient:
            return _check_failed(svc, run, actor, utcnow(), exc.as_record())  # again next tick, until the deadline
        return _end(svc, run, actor, R.FAILED, f"evaluation cannot be read: {exc}", error=exc.as_record())
    champions = {
        name: gate.metric(svc.targets.get(name).live_metrics, pipeline.gate.metric)
        for name in pipeline.targets
        if svc.settings.target(name) is not None
    }
    verdict = gate.decide(pipeline.gate, value, champions)
    model = None
    trainer = svc.trainer(run.pipeline)
    if verdict.status in (R.APPROVED, R.FINISHED) and hasattr(trainer, "register"):
        try:  # idempotent (a version derived from the run): an overlapping poll registers the same one
            model = trainer.register(run, metrics, pipeline.gate.metric, value)
        except ServiceError as exc:
            if exc.transient:
                return _check_failed(svc, run, actor, utcnow(), exc.as_record())
            return _end(svc, run, actor, R.FAILED, f"the model could not be registered: {exc}", error=exc.as_record())
    judged = []

    def change(current: Run) -> bool:
        if current.status != R.RUNNING:
            return False
        # An approved run is claimed by this poll (a lease), so only this poll hands it off.
        lease = (actor, utcnow() + LEASE) if verdict.status == R.APPROVED else (None, None)
        current.transition(
            verdict.status,
            by=actor,
            reason=verdict.reason,
            metrics=metrics,
            gate=verdict.decisions,
            model=model or current.model,
            error=None,
            lease_owner=lease[0],
            lease_until=lease[1],
        )
        current.note(
            by=actor, reason=f"{state.status} job reported: {json.dumps(state.reported, sort_keys=True)[:400]}"
        )
        judged.append(True)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change, held=run)
    if not judged:
        return Outcome(run.run_id, current.status, "duplicate")  # another poll judged it
    log.info("run %s: %s (%s)", run.run_id, verdict.status, verdict.reason)
    telemetry.count("runs.finished", pipeline=run.pipeline)
    if verdict.status == R.REJECTED:
        telemetry.count("runs.rejected", pipeline=run.pipeline)
    if verdict.status == R.APPROVED:
        return hand_off(svc, current, actor)
    advance_pipeline(svc, run.pipeline, run.run_id, actor)
    return Outcome(run.run_id, verdict.status, verdict.status.lower())


def deploy_command(run: Run) -> dict:
    approved = sorted(name for name, d in run.gate.items() if d.get("approved"))
    return {
        "type": "deploy",
        "version": COMMAND_VERSION,
        "pipeline": run.pipeline,
        "run_id": run.run_id,
        "targets": approved,
    }


def hand_off(svc, run: Run, actor: str) -> Outcome:
    """Enqueue the deploy command, then mark the run Deploying and free the training slot.

    Only the poll holding the run's lease hands it off, so overlapping polls queue one command. Enqueue
    comes first: if we stop in between, the lease lapses and a later poll enqueues again — at worst a
    duplicate command, which the deploy handler ignores — never a run that is not deployed.
    """
    now = utcnow()
    claimed = []

    def claim(current: Run) -> bool:
        if current.status != R.APPROVED:
            return False
        if current.lease_owner == actor:
            claimed.append(True)
            return False
        if not current.lease_free(now):
            return False
        current.note(by=actor, reason="handing off for deployment", lease_owner=actor, lease_until=now + LEASE)
        claimed.append(True)
        return True

    if run.lease_owner == actor and not run.lease_free(now):
        current = run  # this poll judged it and holds its lease: claimed already
        claimed.append(True)
    else:
        current = svc.store.update(run.pipeline, run.run_id, claim)
    if not claimed:
        return Outcome(run.run_id, current.status, "in_progress")
    svc.storage.queue(svc.settings.commands_queue).send_message(json.dumps(deploy_command(current)))

    def change(current: Run) -> bool:
        if current.status != R.APPROVED:
            return False
        current.transition(
            R.DEPLOYING,
            by=actor,
            reason=f"deploy command queued on {svc.settings.commands_queue}",
            lease_owner=None,
            lease_until=None,
        )
        return True

    current = svc.store.update(run.pipeline, run.run_id, change, held=current)
    advance_pipeline(svc, run.pipeline, run.run_id, actor)
    return Outcome(run.run_id, current.status, "approved")
