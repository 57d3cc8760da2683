"""The timer's poll: move every active run on, from its BES job's state to a judged, handed-off model.

Cost grows with the number of active runs, not with history: the poll reads the pipeline slots (one
small partition) and then only the runs they name. Runs are polled concurrently (bounded). Overlapping
polls are safe: every move is an ETag-conditional update of a run read just before, so of two polls
seeing the same finished job exactly one records it and hands it on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from shared import gate, telemetry
from shared import runs as R
from shared.bes import BesError
from shared.http import ServiceError
from shared.redact import redact
from shared.runs import Run, utcnow
from shared.workflow import (
    LEASE,
    SAS_MARGIN,
    Outcome,
    RetryLater,
    Services,
    _admit_and_submit,
    _submit,
    _take_over,
    advance_pipeline,
    promote,
    start_quiet_waiter,
)

log = logging.getLogger(__name__)
COMMAND_VERSION = 1


def poll(svc: Services, *, actor: str, now: dt.datetime | None = None) -> list[Outcome]:
    """Check the active run once (and start a held upload once quiet); return what happened."""
    slot = svc.store.get_slot(svc.settings.pipeline)
    if not slot.active_run:
        # Only a held upload (DEBOUNCE_SECONDS) waits while the slot is free: start it once quiet.
        started = start_quiet_waiter(svc, actor, now) if slot.waiting_run else None
        return [started] if started else []
    # One training at a time per pipeline: the slot names the only run to check, so cost does not grow
    # with history (no query over runs at all).
    return [_poll_safely(svc, slot.active_run, actor, now, slot.updated_at)]


def _poll_safely(svc: Services, run_id: str, actor: str, now: dt.datetime | None, since: dt.datetime | None) -> Outcome:
    """A failure is recorded on the run and retried at the next tick, not raised to the host; whatever
    failed, a run past its deadline still ends (TimedOut)."""
    now = now or utcnow()
    with telemetry.bind(pipeline=svc.settings.pipeline, run_id=run_id):
        try:
            return poll_run(svc, run_id, actor=actor, now=now, slot_since=since)
        except (ServiceError, RetryLater) as exc:
            log.warning("run %s: poll will retry: %s", run_id, exc)
            return Outcome(run_id, "?", "retry")
        except Exception as exc:  # a bug or an answer nobody foresaw: the run must still end
            log.exception("run %s: unexpected error while polling", run_id)
            return _record_unexpected(svc, run_id, actor, now, exc)


def _record_unexpected(svc: Services, run_id: str, actor: str, now: dt.datetime, exc: Exception) -> Outcome:
    error = {"code": "Unexpected", "message": f"{type(exc).__name__}: {exc}", "transient": True}
    try:
        run = svc.store.get(svc.settings.pipeline, run_id)
        if run is not None and run.status == R.RUNNING and run.job_id:
            return _check_failed(svc, run, actor, now, error)
    except Exception:  # storage itself is failing: nothing can be recorded now; the next tick retries
        log.exception("run %s: could not record the failure", run_id)
    return Outcome(run_id, "?", "retry")


def poll_run(
    svc: Services, run_id: str, *, actor: str, now: dt.datetime, slot_since: dt.datetime | None = None
) -> Outcome:
    """One active run: resume what was interrupted, check its job, or hand it off for deployment.
    ``slot_since`` is when the run got the slot."""
    run = svc.store.get(svc.settings.pipeline, run_id)
    if run is None or not run.holds_slot:
        advance_pipeline(svc, run_id, actor)  # the slot outlived its run: free it
        return Outcome(run_id, run.status if run else "missing", "advanced")
    if run.status == R.WAITING:
        # Moved into the slot, not yet started: a promotion in flight, or one cut short (then finish it).
        if slot_since is not None and slot_since + LEASE > now:
            return Outcome(run_id, run.status, "in_progress")
        return promote(svc, run_id, actor, "promoted: resuming an interrupted promotion") or Outcome(
            run_id, run.status, "in_progress"
        )
    if run.status in (R.REQUESTED, R.SUBMITTED):
        if not run.lease_free(now):
            return Outcome(run_id, run.status, "in_progress")
        resumed = _take_over(svc, run_id, actor, now)  # an interrupted submission: finish it
        return resumed if isinstance(resumed, Outcome) else _admit_and_submit(svc, resumed, actor)
    if run.status == R.APPROVED:
        return hand_off(svc, run, actor)
    return _check_job(svc, run, actor, now)


def _check_job(svc: Services, run: Run, actor: str, now: dt.datetime) -> Outcome:
    with telemetry.bind(job_id=run.job_id):
        return _check_job_bound(svc, run, actor, now)


def deadline_of(svc: Services, run: Run) -> dt.datetime:
    """When the run's job has had its allowed time (``JOB_TIMEOUT_MINUTES`` from its submission)."""
    return (run.submitted_at or run.created_at) + dt.timedelta(minutes=svc.settings.job_timeout_minutes)


def _check_job_bound(svc: Services, run: Run, actor: str, now: dt.datetime) -> Outcome:
    try:
        status = svc.bes.status(run.job_id)
    except BesError as exc:
        if not exc.transient:  # the job is unknown (404), or our key no longer opens it (401/403)
            return _end(
                svc, run, actor, R.FAILED, f"BES job {run.job_id} cannot be checked: {exc}", error=exc.as_record()
            )
        return _check_failed(svc, run, actor, now, exc.as_record())
    if status.status in ("NotStarted", "Running"):
        if now < deadline_of(svc, run):
            return Outcome(run.run_id, run.status, "running")
        return _time_out(svc, run, actor, now, f"still {status.status}")
    if status.status == "Cancelled":
        return _end(svc, run, actor, R.CANCELLED, f"BES job {run.job_id} was cancelled outside this app")
    if status.status == "Failed":
        details = redact(status.details or "no details")[:4000]  # redacted whole, then cut
        if svc.settings.resubmit_failed_jobs and run.attempts < svc.settings.max_attempts:
            return _resubmit(svc, run, actor, details)
        return _end(
            svc,
            run,
            actor,
            R.FAILED,
            f"BES job {run.job_id} failed: {details[:300]}",
            error={"code": "JobFailed", "message": details},
        )
    return _judge(svc, run, actor, status.results or {})


def _check_failed(
    svc: Services, run: Run, actor: str, now: dt.datetime, error: dict, *, enforce: bool = True
) -> Outcome:
    """A status check (or judging a finished job) failed for a reason that may pass: count it, keep the
    last error, note it when the error changes — and once the deadline has passed, time the run out."""

    def change(current: Run) -> bool:
        if current.status != R.RUNNING or current.job_id != run.job_id:
            return False
        previous = current.last_check_error or {}
        current.check_failures += 1
        current.last_check_error = {**error, "at": R._iso(now)}
        current.updated_at = now
        if previous.get("code") != error.get("code"):
            current.note(by=actor, reason=f"checking BES job {run.job_id} failed: {error.get('message', '')[:300]}")
        return True

    current = svc.store.update(run.pipeline, run.run_id, change) or run
    if enforce and current.status == R.RUNNING and now >= deadline_of(svc, current):
        return _time_out(svc, current, actor, now, f"unchecked ({current.check_failures} failed checks)")
    log.warning("run %s: checking BES job %s failed, will retry: %s", run.run_id, run.job_id, error.get("message"))
    return Outcome(run.run_id, current.status, "retry")


def _time_out(svc: Services, run: Run, actor: str, now: dt.datetime, state: str) -> Outcome:
    """The deadline has passed: cancel the job and end the run. If the cancel fails for a reason that
    may pass, it is tried again at each tick until the job's SAS have expired (deadline + margin):
    from then on the job can neither read the data nor write a model, and the run ends regardless."""
    minutes = svc.settings.job_timeout_minutes
    try:
        svc.bes.cancel(run.job_id)
        cancelled = "cancelled"
    except BesError as exc:
        if exc.transient and now < deadline_of(svc, run) + SAS_MARGIN:
            return _check_failed(svc, run, actor, now, {**exc.as_record(), "operation": "BES cancel"}, enforce=False)
        cancelled = "gone" if exc.http_status == 404 else f"not cancelled ({exc}); its SAS have expired"
    return _end(
        svc,
        run,
        actor,
        R.TIMED_OUT,
        f"BES job {run.job_id} {state} after {minutes} minutes: {cancelled}",
        error={
            "code": "JobTimeout",
            "message": f"job was {state} at the deadline",
            "failed_checks": run.check_failures,
        },
    )


def _end(svc: Services, run: Run, actor: str, status: str, reason: str, **changes) -> Outcome:
    def change(current: Run) -> bool:
        if current.status != R.RUNNING:
            return False
        current.transition(status, by=actor, reason=reason, **changes)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    if current.status == status:
        log.info("run %s: %s (%s)", run.run_id, status, reason)
        telemetry.count(
            "runs.failed" if status in (R.FAILED, R.TIMED_OUT) else f"runs.{status.lower()}",
            pipeline=run.pipeline,
            stage="job",
        )
        advance_pipeline(svc, run.run_id, actor)
    return Outcome(run.run_id, current.status, status.lower())


def _resubmit(svc: Services, run: Run, actor: str, details: str) -> Outcome:
    now = utcnow()

    def change(current: Run) -> bool:
        if current.status != R.RUNNING or current.job_id != run.job_id:
            return False
        current.transition(
            R.REQUESTED,
            by=actor,
            reason=f"BES job {run.job_id} failed; resubmitting: {details[:200]}",
            now=now,
            job_id=None,
            error={"code": "JobFailed", "message": details},
            attempts=current.attempts + 1,
            lease_owner=actor,
            lease_until=now + LEASE,
        )
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    if current.status != R.REQUESTED or current.lease_owner != actor:
        return Outcome(run.run_id, current.status, "duplicate")
    return _submit(svc, current, actor)


def _judge(svc: Services, run: Run, actor: str, results: dict) -> Outcome:
    """The job finished: read its evaluation from our storage, apply the gate per target."""
    s = svc.settings
    container, blob = run.outputs["evaluation"].split("/", 1)
    from azure.core.exceptions import ResourceNotFoundError

    try:
        text = svc.storage.blobs.get_blob_client(container, blob).download_blob().readall().decode("utf-8-sig")
        metrics = gate.parse_evaluation(text)
        value = gate.metric_value(metrics, s.gate_metric)
    except ResourceNotFoundError:
        return _end(
            svc,
            run,
            actor,
            R.FAILED,
            f"BES reported Finished but {run.outputs['evaluation']} is missing",
            error={"code": "EvaluationMissing", "message": run.outputs["evaluation"]},
        )
    except (gate.EvaluationError, UnicodeDecodeError) as exc:
        return _end(
            svc,
            run,
            actor,
            R.FAILED,
            f"evaluation cannot be judged: {exc}",
            error={"code": "EvaluationInvalid", "message": str(exc)},
        )
    decisions = {}
    for target in s.targets:
        champion = svc.targets.get(target.name).live_metrics or {}
        live_value = next((v for k, v in champion.items() if k.lower() == s.gate_metric.lower()), None)
        decisions[target.name] = gate.judge(
            s.gate_metric, value, champion=live_value, floor=s.gate_min, min_improvement=s.gate_min_improvement
        ).as_record()
    returned = {name: ref.get("RelativeLocation") for name, ref in results.items() if isinstance(ref, dict)}
    if not s.targets:
        status, reason = R.FINISHED, f"{s.gate_metric} {value:.4f}; no deploy target is configured"
    elif any(d["approved"] for d in decisions.values()):
        status = R.APPROVED
        reason = "; ".join(f"{n}: {d['reason']}" for n, d in decisions.items())
    else:
        status = R.REJECTED
        reason = "; ".join(f"{n}: {d['reason']}" for n, d in decisions.items())

    judged = []

    def change(current: Run) -> bool:
        if current.status != R.RUNNING:
            return False
        # An approved run is claimed by this poll (a lease), so only this poll hands it off.
        lease = (actor, utcnow() + LEASE) if status == R.APPROVED else (None, None)
        current.transition(
            status,
            by=actor,
            reason=reason,
            metrics=metrics,
            gate=decisions,
            error=None,
            lease_owner=lease[0],
            lease_until=lease[1],
        )
        current.note(by=actor, reason=f"BES results: {json.dumps(returned, sort_keys=True)[:400]}")
        judged.append(True)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change, held=run)
    if not judged:
        return Outcome(run.run_id, current.status, "duplicate")  # another poll judged it
    log.info("run %s: %s (%s)", run.run_id, status, reason)
    telemetry.count("runs.finished", pipeline=run.pipeline)
    if status == R.REJECTED:
        telemetry.count("runs.rejected", pipeline=run.pipeline)
    if status == R.APPROVED:
        return hand_off(svc, current, actor)
    advance_pipeline(svc, run.run_id, actor)
    return Outcome(run.run_id, status, status.lower())


def deploy_command(run: Run) -> dict:
    approved = sorted(name for name, d in run.gate.items() if d.get("approved"))
    return {
        "type": "deploy",
        "version": COMMAND_VERSION,
        "pipeline": run.pipeline,
        "run_id": run.run_id,
        "targets": approved,
    }


def hand_off(svc: Services, run: Run, actor: str) -> Outcome:
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
    advance_pipeline(svc, run.run_id, actor)
    return Outcome(run.run_id, current.status, "approved")
