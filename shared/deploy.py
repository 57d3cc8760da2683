"""Putting a model live on a deploy target, verifying it, and recording what is live where.

Each target is independent: a failure on one neither undoes nor blocks another. A deployment counts
only when reading the service back shows the new model ("PATCH returned 200 but the service still
scores with the old model" is a failed deploy). One deployment per target at a time (a short lease on
the target's state entity); the same run is never deployed twice to a target.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Protocol

from shared import runs as R
from shared import telemetry
from shared.http import ServiceError
from shared.runs import Run, lease_lapsed, utcnow
from shared.settings import Target
from shared.store import StaleError, TargetState, retry_on_conflict

log = logging.getLogger(__name__)

TARGET_LEASE = dt.timedelta(minutes=15)
DEPLOYED, SKIPPED, FAILED, RETRYING = "Deployed", "Skipped", "Failed", "Retrying"
# A staged target (``shared/rollout.py``): rolling out over poll ticks, then rolled back (live model unchanged).
ROLLING_OUT, ROLLED_BACK, QUEUED = "RollingOut", "RolledBack", "Queued"
# Manual approval, per target: waiting, then a person's decision, an expiry or a newer run's approval.
AWAITING, REFUSED, EXPIRED, SUPERSEDED = "AwaitingApproval", "RefusedByApprover", "ApprovalExpired", "Superseded"
DONE = (DEPLOYED, SKIPPED, FAILED, REFUSED, EXPIRED, SUPERSEDED, ROLLED_BACK)  # a target's ends on a run
PENDING = (AWAITING, ROLLING_OUT, QUEUED)  # not ended, and not for a redelivered command to start again


class DeployError(ServiceError):
    """The deployment did not take effect (or the target is busy)."""

    service = "deploy"


class Deployer(Protocol):
    """One target's service, as every target kind offers it (chosen by kind: ``shared/kinds.py``)."""

    def put(self, model_path: str) -> None:
        """Point the service at ``model_path`` (``container/blob`` in our storage)."""

    def live(self) -> str | None:
        """What the service says it uses: our ``container/blob`` path, or its own URL for anything else."""

    def probe(self) -> str:
        """Reach the service without changing anything; what was found (for ``python -m shared check``)."""

    def preview(self, model_path: str) -> tuple[str, dict]:
        """What ``put`` would send, secrets redacted by the caller."""


@dataclass(frozen=True)
class PutResult:
    action: str  # deployed | already-live | skipped | rolling-out | queued
    reason: str

    @property
    def status(self) -> str:
        """The run's record of this target: Skipped, RollingOut (a staged rollout begun) or Deployed."""
        return {"skipped": SKIPPED, "rolling-out": ROLLING_OUT, "queued": QUEUED}.get(self.action, DEPLOYED)


def put_live(svc, target: Target, run: Run, *, actor: str, kind: str = "deploy") -> PutResult:
    """Make ``run``'s model the live model of ``target``, verified, and record it.

    ``kind="deploy"`` refuses to replace a newer run's model; ``kind="rollback"`` may go back. A staged
    target (an online endpoint) starts a rollout instead: ``rolling-out``, carried on by the poll.
    """
    with telemetry.bind(pipeline=run.pipeline, run_id=run.run_id, target=target.name):
        if getattr(target, "staged", False):
            from shared import rollout

            return rollout.begin(svc, target, run, actor=actor, kind=kind)
        model = run.outputs.get("model")
        if not model:
            raise DeployError(f"run {run.run_id} has no trained model", operation=kind, code="NoModel")
        claimed = claim(svc, target, run, kind)
        if isinstance(claimed, PutResult):
            return claimed
        deployer = svc.deployer(target)
        try:
            deployer.put(model)
            seen = deployer.live()
            if seen != model:
                raise DeployError(
                    f"{target.name} still reports {seen!r} after the update (expected {model!r})",
                    operation="verify",
                    code="NotInEffect",
                    transient=True,
                )
        except Exception:
            release(svc, target, run)
            raise
        now = utcnow()
        replaced = _record_live(svc, target, run, model, now, kind, held=claimed)
        svc.targets.record(
            target.name,
            now,
            {
                "kind": kind,
                "run": run.run_id,
                "model": model,
                "replaced_run": replaced.live_run,
                "replaced_model": replaced.live_model,
                "by": actor,
            },
        )
        log.info("target %s: run %s live (%s), replacing %s", target.name, run.run_id, kind, replaced.live_run)
        telemetry.count("runs.deployed", pipeline=run.pipeline, target=target.name, kind=kind)
        return PutResult("deployed", f"{kind}: {model} live, replacing {replaced.live_run or 'nothing'}")


def _record_live(
    svc, target: Target, run: Run, model: str, now: dt.datetime, kind: str, held: TargetState
) -> TargetState:
    """Record ``run``'s model as live on the target we hold the lease of; returns what it replaced.
    ``held`` is the state our claim saved: tried first (its save is ETag-conditional, so it sticks only
    if it is still the latest), read again only after a conflict."""
    replaced: list[TargetState] = []
    first = [held]

    def attempt() -> TargetState:
        state = first.pop() if first else svc.targets.get(target.name)
        if state.deploying_run != run.run_id:
            raise DeployError(
                f"{target.name}: lost the deployment lease", operation=kind, code="LeaseLost", transient=True
            )
        replaced[:] = [TargetState(target.name, live_run=state.live_run, live_model=state.live_model)]
        state.previous_run, state.previous_model = state.live_run, state.live_model
        state.live_run, state.live_model, state.live_metrics = run.run_id, model, dict(run.metrics)
        state.since, state.deploying_run, state.lease_until = now, None, None
        return svc.targets.save(state)

    retry_on_conflict(attempt, f"target {target.name}")
    return replaced[0]


def claim(svc, target: Target, run: Run, kind: str) -> TargetState | PutResult:
    """Take the target's deployment lease for ``run`` (ETag-conditional), or say why not."""

    def attempt() -> TargetState | PutResult:
        now = utcnow()
        state = svc.targets.get(target.name)
        if state.live_run == run.run_id and state.deploying_run is None:
            return PutResult("already-live", f"{run.run_id} is already live on {target.name}")
        from shared.rollout import is_active

        rolling = (state.rollout or {}).get("run") if is_active(state) else None
        if rolling not in (None, run.run_id):  # a rollout holds its target until it ends, lease or not
            raise DeployError(
                f"{target.name} is rolling out run {rolling} ({state.rollout['stage']})",
                operation=kind,
                code="TargetBusy",
                transient=True,
            )
        busy = not lease_lapsed(state.lease_until, state.written_at, TARGET_LEASE, now)
        if state.deploying_run not in (None, run.run_id) and busy:
            raise DeployError(
                f"{target.name} is being deployed by run {state.deploying_run}",
                operation=kind,
                code="TargetBusy",
                transient=True,
            )
        if kind == "deploy" and state.live_run and state.live_run != run.run_id:  # forced/rollback may go back
            live = svc.store.get(run.pipeline, state.live_run)
            if live is not None and live.order_key > run.order_key:
                return PutResult("skipped", f"newer data's model (run {live.run_id}) is already live")
        state.deploying_run, state.lease_until = run.run_id, now + TARGET_LEASE
        return svc.targets.save(state)

    try:
        return retry_on_conflict(attempt, f"target {target.name}")
    except StaleError:
        raise DeployError(f"{target.name}: too contended", operation=kind, code="TargetBusy", transient=True) from None


def release(svc, target: Target, run: Run) -> None:
    """Give up the target's lease after a failed update, so the retry need not wait for it to lapse."""

    def attempt() -> None:
        state = svc.targets.get(target.name)
        if state.deploying_run == run.run_id:
            state.deploying_run = state.lease_until = None
            svc.targets.save(state)

    try:
        retry_on_conflict(attempt, f"target {target.name}")
    except StaleError:
        log.warning("target %s: could not release the lease of run %s; it lapses by itself", target.name, run.run_id)


# --- a run's deployment (the queue's deploy command) ---------------------------------------------


class CommandRejected(ValueError):
    """A command that can never succeed (unknown run, wrong state): consumed, not retried."""


def deploy_run(
    svc,
    pipeline: str,
    run_id: str,
    target_names: list[str] | None,
    *,
    actor: str,
    attempt: int,
    max_attempts: int,
    force_reason: str | None = None,
) -> Run:
    """Deploy a run of ``pipeline`` to each of its targets, independently.

    Normally only an approved run, to the targets its gate approved. ``force_reason`` skips the gate
    (any finished run with a model, to the named targets of its pipeline, even over a newer model) and
    is recorded. Transient failures are recorded and raised (the queue retries); on the last attempt
    they are recorded as failures, then raised so the message lands in the poison queue with the reason
    on the run.
    """
    with telemetry.bind(pipeline=pipeline, run_id=run_id):
        if force_reason is not None:  # a forced deploy names its targets: all must be this pipeline's
            owned = svc.settings.pipeline_named(pipeline).targets
            unknown = [n for n in target_names or [] if svc.settings.target(n) is None or n not in owned]
            if unknown or not target_names:
                missing = ", ".join(unknown) or "-"
                has = ", ".join(owned) or "none"
                raise CommandRejected(
                    f"forced deploy needs configured targets; unknown: {missing} (pipeline {pipeline!r} has {has})"
                )
        run = svc.store.get(pipeline, run_id)
        if run is None:
            raise CommandRejected(f"no run {run_id!r} in pipeline {pipeline!r}")
        if force_reason is None:
            if run.status not in (
                R.APPROVED, R.DEPLOYING, R.AWAITING_APPROVAL, R.DEPLOYED, R.PARTIALLY_DEPLOYED, R.FAILED
            ):  # fmt: skip
                raise CommandRejected(f"run {run_id} is {run.status}, not approved for deployment")
            names = _approved(run, target_names)
        else:
            if not run.metrics or not run.outputs.get("model"):
                raise CommandRejected(f"run {run_id} is {run.status} and has no trained model to deploy")
            names = list(target_names)
        kind = "deploy" if force_reason is None else "forced deploy"
        results: dict[str, dict] = {}
        retry: list[str] = []
        for name in names:
            current = run.targets.get(name, {})
            done = current.get("status") in (*DONE, *PENDING)
            if done and force_reason is None:
                continue  # done on an earlier delivery, or waiting for a person
            target = svc.settings.target(name)
            if target is None:
                results[name] = {"status": FAILED, "reason": "target is no longer configured"}
                continue
            hours = svc.settings.approval_hours(name)
            if hours is not None and force_reason is None and not current.get("approval"):
                results[name] = await_approval(svc, name, run, hours, actor)
                continue
            try:
                outcome = put_live(svc, target, run, actor=actor, kind=kind)
            except Exception as error:  # a service's error, or anything unforeseen: recorded per target
                exc = error if isinstance(error, ServiceError) else unexpected(error, kind)
                final = not exc.transient or attempt >= max_attempts
                reason = str(exc) if not exc.transient or not final else f"gave up after {attempt} attempts: {exc}"
                results[name] = {
                    "status": FAILED if final else RETRYING,
                    "reason": reason,
                    "error": exc.as_record(),
                    "attempt": attempt,
                }
                if exc.transient:
                    retry.append(name)
                log.warning("run %s target %s: %s", run_id, name, reason)
                continue
            results[name] = {"status": outcome.status, "reason": outcome.reason, "attempt": attempt}
            if force_reason is not None:
                results[name]["forced"] = force_reason
        run = record_targets(svc, run, results, names, actor)
        if retry:
            reasons = "; ".join(f"{name}: {results[name]['reason']}" for name in retry)
            raise DeployError(f"run {run_id}: {reasons}", operation="to targets", code="Retry", transient=True)
        return run


def await_approval(svc, name: str, run: Run, hours: int, actor: str) -> dict:
    """Hold ``run`` for a person's approval on target ``name`` (recorded on the target's state, the index
    the poll expires approvals from); a run of the same pipeline already waiting there is superseded."""
    until = utcnow() + dt.timedelta(hours=hours)
    replaced: list[str] = []

    def attempt() -> None:
        state = svc.targets.get(name)
        replaced[:] = [state.awaiting_run] if state.awaiting_run and state.awaiting_run != run.run_id else []
        state.awaiting_run, state.awaiting_until = run.run_id, until
        svc.targets.save(state)

    retry_on_conflict(attempt, f"target {name}")
    for older in replaced:
        _end_waiting(svc, run.pipeline, older, name, SUPERSEDED, f"superseded by run {run.run_id}", actor)
    svc.targets.record(
        name, utcnow(), {"kind": "awaiting approval", "run": run.run_id, "by": actor, "until": R.iso(until)}
    )
    return {"status": AWAITING, "reason": f"waiting for approval until {R.iso(until)}", "until": R.iso(until)}


def decide(svc, pipeline: str, run_id: str, name: str, *, approve: bool, approver: str, reason: str, actor: str) -> str:
    """A person's ``approve`` or ``reject`` of ``run_id`` on target ``name``: recorded on the run and in
    the target's history; an approval deploys (verified, as any deploy)."""
    run = svc.store.get(pipeline, run_id)
    if run is None:
        raise CommandRejected(f"no run {run_id!r} in pipeline {pipeline!r}")
    waiting = run.targets.get(name, {})
    if waiting.get("status") != AWAITING:
        raise CommandRejected(
            f"run {run_id} is not waiting for approval on {name} "
            f"(it is {waiting.get('status') or 'not deploying there'})"
        )
    if R.parse_iso(waiting["until"]) <= utcnow():
        _end_waiting(svc, pipeline, run_id, name, EXPIRED, f"the approval expired at {waiting['until']}", actor)
        raise CommandRejected(f"the approval of run {run_id} on {name} expired at {waiting['until']}")
    decision = {"approved": approve, "by": approver, "reason": reason, "at": R.iso(utcnow())}
    svc.targets.record(
        name, utcnow(), {"kind": "approval" if approve else "refusal", "run": run_id, "by": approver, "reason": reason}
    )
    _clear_waiting(svc, name, run_id)
    if not approve:
        _end_waiting(svc, pipeline, run_id, name, REFUSED, f"refused by {approver}: {reason}", actor, decision)
        return f"{name}: refused by {approver}"
    target = svc.settings.target(name)
    result = {"approval": decision}
    try:
        outcome = put_live(svc, target, run, actor=actor)
        result.update(status=outcome.status, reason=outcome.reason)
    except ServiceError as exc:
        if exc.transient:
            # keep it waiting, approved: the command's retry deploys it
            record_targets(svc, run, {name: {**waiting, "approval": decision}}, _approved(run, None), actor)
            raise
        result.update(status=FAILED, reason=str(exc), error=exc.as_record())
    record_targets(svc, run, {name: result}, _approved(run, None), actor)
    return f"{name}: approved by {approver}, {result['status']}"


def expire_approvals(svc, actor: str) -> list[str]:
    """End every wait for approval that has run out (one query of the small targets partition)."""
    now, expired = utcnow(), []
    for state in svc.targets.recorded():
        if state.awaiting_run and state.awaiting_until and state.awaiting_until <= now:
            owner = svc.settings.pipeline_of_target(state.name)
            if owner is not None:
                reason = f"the approval expired at {R.iso(state.awaiting_until)}"
                _end_waiting(svc, owner.name, state.awaiting_run, state.name, EXPIRED, reason, actor)
            _clear_waiting(svc, state.name, state.awaiting_run)
            expired.append(f"{state.name}: {state.awaiting_run}")
    return expired


def _clear_waiting(svc, name: str, run_id: str) -> None:
    def attempt() -> None:
        state = svc.targets.get(name)
        if state.awaiting_run == run_id:
            state.awaiting_run = state.awaiting_until = None
            svc.targets.save(state)

    retry_on_conflict(attempt, f"target {name}")


def _end_waiting(
    svc, pipeline: str, run_id: str, name: str, status: str, reason: str, actor: str, decision: dict | None = None
) -> None:
    run = svc.store.get(pipeline, run_id)
    if run is None or run.targets.get(name, {}).get("status") != AWAITING:
        return
    result = {"status": status, "reason": reason, **({"approval": decision} if decision else {})}
    record_targets(svc, run, {name: result}, _approved(run, None), actor)
    log.info("run %s target %s: %s (%s)", run_id, name, status, reason)


def _approved(run: Run, target_names: list[str] | None) -> list[str]:
    """The targets a plain deploy of ``run`` goes to: those its gate approved (of ``target_names``)."""
    approved = [name for name, gate in run.gate.items() if gate.get("approved")]
    return approved if target_names is None else [n for n in target_names if n in approved]


def unexpected(error: Exception, operation: str) -> DeployError:
    """An exception nobody foresaw, as a transient deploy error: retried, then recorded as a failure."""
    log.error("unexpected %s during %s", type(error).__name__, operation, exc_info=error)
    return DeployError(
        f"unexpected {type(error).__name__}: {error}", operation=operation, code="Unexpected", transient=True
    )


def give_up(
    svc, pipeline: str, run_id: str, target_names: list[str] | None, reason: str, *, actor: str, forced: bool
) -> None:
    """The last delivery of a deploy command failed before it recorded everything: its unfinished
    targets are recorded Failed with ``reason``, so the run ends rather than stays Deploying."""
    run = svc.store.get(pipeline, run_id)
    if run is None:
        return
    names = list(target_names or []) if forced else _approved(run, target_names)
    results = {
        name: {"status": FAILED, "reason": reason}
        for name in names
        if run.targets.get(name, {}).get("status") not in (*DONE, *PENDING)
    }
    if results:
        record_targets(svc, run, results, names, actor)


def record_targets(svc, run: Run, results: dict[str, dict], names: list[str], actor: str) -> Run:
    def change(current: Run) -> bool:
        now = R.iso(utcnow())
        for name, result in results.items():
            current.targets[name] = {**result, "at": now}
        statuses = [current.targets.get(n, {}).get("status") for n in names]
        if current.status == R.APPROVED:
            current.transition(R.DEPLOYING, by=actor, reason="deploying")
        summary = "; ".join(f"{n}: {current.targets.get(n, {}).get('status')}" for n in names)
        waiting = current.status in (R.DEPLOYING, R.AWAITING_APPROVAL)
        if waiting and statuses and all(s in DONE for s in statuses):
            ok = [n for n, s in zip(names, statuses, strict=True) if s in (DEPLOYED, SKIPPED)]
            declined = all(s in (REFUSED, EXPIRED, SUPERSEDED) for s in statuses)
            final = (
                R.DEPLOYED
                if len(ok) == len(names)
                else R.PARTIALLY_DEPLOYED
                if ok
                else R.REJECTED
                if declined
                else R.FAILED
            )
            current.transition(final, by=actor, reason=summary)
        elif current.status == R.DEPLOYING and statuses and all(s in (*DONE, AWAITING) for s in statuses):
            current.transition(R.AWAITING_APPROVAL, by=actor, reason=summary)
        elif results:
            current.note(
                by=actor, reason="; ".join(f"{n}: {r['status']} ({r['reason'][:120]})" for n, r in results.items())
            )
        return bool(results) or current.status == R.APPROVED

    return svc.store.update(run.pipeline, run.run_id, change, held=run)


def rollback(svc, pipeline: str, target_name: str, to_run: str | None, *, actor: str) -> PutResult:
    """Put an earlier model back on a target of ``pipeline``: the one it replaced, or a named run's."""
    target = svc.settings.target(target_name)
    if target is None:
        raise CommandRejected(f"no deploy target named {target_name!r}")
    if target_name not in svc.settings.pipeline_named(pipeline).targets:
        raise CommandRejected(f"target {target_name!r} is not pipeline {pipeline!r}'s")
    state = svc.targets.get(target_name)
    run_id = to_run or state.previous_run
    if run_id is None:
        raise CommandRejected(f"target {target_name} has no earlier model to roll back to")
    run = svc.store.get(pipeline, run_id)
    if run is None or not run.outputs.get("model"):
        raise CommandRejected(f"run {run_id!r} has no trained model to put back")
    if to_run and not any(h.get("run") == to_run for h in svc.targets.history(target_name)):
        raise CommandRejected(f"run {to_run} was never live on {target_name}")
    if svc.settings.notify is not None:  # announced first: sent once the target's history holds it
        from shared import notify

        notify.announce_rollback(svc, pipeline, target_name, run_id)
    return put_live(svc, target, run, actor=actor, kind="rollback")
