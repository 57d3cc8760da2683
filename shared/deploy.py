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
from urllib.parse import unquote

from shared import runs as R
from shared import telemetry
from shared.arm import ArmWebServiceClient, asset_uri, find_asset, with_asset_uri
from shared.classic import ClassicEndpointClient, ClassicError
from shared.http import ServiceError, ci_get
from shared.runs import Run, lease_lapsed, utcnow
from shared.settings import ArmTarget, ClassicTarget, Target
from shared.store import MAX_CONFLICT_RETRIES, StaleError, TargetState

log = logging.getLogger(__name__)

TARGET_LEASE = dt.timedelta(minutes=15)
DEPLOYED, SKIPPED, FAILED, RETRYING = "Deployed", "Skipped", "Failed", "Retrying"


class DeployError(ServiceError):
    """The deployment did not take effect (or the target is busy)."""

    service = "deploy"


class Deployer(Protocol):
    def put(self, model_path: str) -> None:
        """Point the service at ``model_path`` (``container/blob`` in our storage)."""

    def live(self) -> str | None:
        """What the service says it uses: our ``container/blob`` path, or its own URL for anything else."""


class ClassicDeployer:
    """A classic endpoint gets our own read SAS for the model, valid ``DEPLOY_SAS_DAYS`` (BES's
    result SAS is short-lived and could expire before the update, a known failure of hand-run scripts)."""

    def __init__(self, target: ClassicTarget, storage, sas_days: int, timeout: float, session=None) -> None:
        self.target, self.storage, self.sas_days = target, storage, sas_days
        self.client = ClassicEndpointClient(target.endpoint_url, target.api_key, timeout=timeout, session=session)

    def put(self, model_path: str) -> None:
        container, blob = model_path.split("/", 1)
        expiry = utcnow() + dt.timedelta(days=self.sas_days)
        self.client.update_resource(
            self.target.resource_name,
            {
                "BaseLocation": self.storage.blob_base_location,
                "RelativeLocation": model_path,
                "SasBlobToken": self.storage.blob_sas(container, blob, "r", expiry),
            },
        )

    def live(self) -> str | None:
        location = self.client.resource_location(self.target.resource_name)
        if location is None:
            raise ClassicError(
                f"the endpoint has no resource named {self.target.resource_name!r}",
                operation="verify",
                code="ResourceNotFound",
            )
        base = str(ci_get(location, "BaseLocation") or "").rstrip("/") + "/"
        relative = str(ci_get(location, "RelativeLocation") or "").lstrip("/")
        return relative if base == self.storage.blob_base_location else f"{base}{relative}"


class ArmDeployer:
    """An ARM web service reads the model through its own storage account, so its asset gets the plain
    blob URL (the public recipe); the model must live in that account."""

    def __init__(self, target: ArmTarget, storage, client: ArmWebServiceClient) -> None:
        self.target, self.storage, self.client = target, storage, client

    def put(self, model_path: str) -> None:
        container, blob = model_path.split("/", 1)
        definition = self.client.get(self.target.resource_id)
        key = find_asset(definition, self.target.asset_name)
        self.client.patch(
            self.target.resource_id, with_asset_uri(definition, key, self.storage.blob_url(container, blob))
        )

    def live(self) -> str | None:
        definition = self.client.get(self.target.resource_id)
        uri = asset_uri(definition, find_asset(definition, self.target.asset_name)) or ""
        plain = uri.split("?", 1)[0]
        base = self.storage.blob_base_location
        return unquote(plain[len(base) :]) if plain.startswith(base) else uri


@dataclass(frozen=True)
class PutResult:
    action: str  # deployed | already-live | skipped
    reason: str


def put_live(svc, target: Target, run: Run, *, actor: str, kind: str = "deploy") -> PutResult:
    """Make ``run``'s model the live model of ``target``, verified, and record it.

    ``kind="deploy"`` refuses to replace a newer run's model; ``kind="rollback"`` may go back.
    """
    with telemetry.bind(pipeline=run.pipeline, run_id=run.run_id, target=target.name):
        result = _put_live(svc, target, run, actor=actor, kind=kind)
        if result.action == "deployed":
            telemetry.count("runs.deployed", pipeline=run.pipeline, target=target.name, kind=kind)
        return result


def _put_live(svc, target: Target, run: Run, *, actor: str, kind: str) -> PutResult:
    model = run.outputs.get("model")
    if not model:
        raise DeployError(f"run {run.run_id} has no trained model", operation=kind, code="NoModel")
    state = _claim(svc, target, run, kind)
    if isinstance(state, PutResult):
        return state
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
        _release(svc, target, run)
        raise
    now = utcnow()
    for _ in range(MAX_CONFLICT_RETRIES):
        if state.deploying_run != run.run_id:
            raise DeployError(
                f"{target.name}: lost the deployment lease", operation=kind, code="LeaseLost", transient=True
            )
        replaced, replaced_model = state.live_run, state.live_model
        state.previous_run, state.previous_model = replaced, replaced_model
        state.live_run, state.live_model, state.live_metrics = run.run_id, model, dict(run.metrics)
        state.since, state.deploying_run, state.lease_until = now, None, None
        try:
            svc.targets.save(state)
            break
        except StaleError:
            state = svc.targets.get(target.name)
    else:
        raise StaleError(f"target {target.name}: too contended")
    svc.targets.record(
        target.name,
        now,
        {
            "kind": kind,
            "run": run.run_id,
            "model": model,
            "replaced_run": replaced,
            "replaced_model": replaced_model,
            "by": actor,
        },
    )
    log.info("target %s: run %s live (%s), replacing %s", target.name, run.run_id, kind, replaced)
    return PutResult("deployed", f"{kind}: {model} live, replacing {replaced or 'nothing'}")


def _claim(svc, target: Target, run: Run, kind: str) -> TargetState | PutResult:
    """Take the target's deployment lease for ``run`` (ETag-conditional), or say why not."""
    for _ in range(MAX_CONFLICT_RETRIES):
        now = utcnow()
        state = svc.targets.get(target.name)
        if state.live_run == run.run_id and state.deploying_run is None:
            return PutResult("already-live", f"{run.run_id} is already live on {target.name}")
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
        try:
            return svc.targets.save(state)
        except StaleError:
            continue
    raise DeployError(f"{target.name}: too contended", operation=kind, code="TargetBusy", transient=True)


def _release(svc, target: Target, run: Run) -> None:
    for _ in range(3):
        state = svc.targets.get(target.name)
        if state.deploying_run != run.run_id:
            return
        state.deploying_run = state.lease_until = None
        try:
            svc.targets.save(state)
            return
        except StaleError:
            continue


# --- a run's deployment (the queue's deploy command) ---------------------------------------------


class CommandRejected(ValueError):
    """A command that can never succeed (unknown run, wrong state): consumed, not retried."""


def deploy_run(
    svc,
    run_id: str,
    target_names: list[str] | None,
    *,
    actor: str,
    attempt: int,
    max_attempts: int,
    force_reason: str | None = None,
) -> Run:
    """Deploy a run to each of its targets, independently.

    Normally only an approved run, to the targets its gate approved. ``force_reason`` skips the gate
    (any finished run with a model, to the named targets, even over a newer model) and is recorded.
    Transient failures are recorded and raised (the queue retries); on the last attempt they are
    recorded as failures, then raised so the message lands in the poison queue with the reason on the run.
    """
    with telemetry.bind(pipeline=svc.settings.pipeline, run_id=run_id):
        return _deploy_run(
            svc,
            run_id,
            target_names,
            actor=actor,
            attempt=attempt,
            max_attempts=max_attempts,
            force_reason=force_reason,
        )


def _deploy_run(
    svc,
    run_id: str,
    target_names: list[str] | None,
    *,
    actor: str,
    attempt: int,
    max_attempts: int,
    force_reason: str | None,
) -> Run:
    pipeline = svc.settings.pipeline
    if force_reason is not None:  # a forced deploy names its targets: all must exist, whatever the run
        unknown = [n for n in target_names or [] if svc.settings.target(n) is None]
        if unknown or not target_names:
            raise CommandRejected(f"forced deploy needs configured targets; unknown: {', '.join(unknown) or '-'}")
    run = svc.store.get(pipeline, run_id)
    if run is None:
        raise CommandRejected(f"no run {run_id!r} in pipeline {pipeline!r}")
    if force_reason is None:
        if run.status not in (R.APPROVED, R.DEPLOYING, R.DEPLOYED, R.PARTIALLY_DEPLOYED, R.FAILED):
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
        done = run.targets.get(name, {}).get("status") in (DEPLOYED, SKIPPED, FAILED)
        if done and force_reason is None:
            continue  # done on an earlier delivery
        target = svc.settings.target(name)
        if target is None:
            results[name] = {"status": FAILED, "reason": "target is no longer configured"}
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
        status = SKIPPED if outcome.action == "skipped" else DEPLOYED
        results[name] = {"status": status, "reason": outcome.reason, "attempt": attempt}
        if force_reason is not None:
            results[name]["forced"] = force_reason
    run = _record_targets(svc, run, results, names, actor)
    if retry:
        reasons = "; ".join(f"{name}: {results[name]['reason']}" for name in retry)
        raise DeployError(f"run {run_id}: {reasons}", operation="to targets", code="Retry", transient=True)
    return run


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


def give_up(svc, run_id: str, target_names: list[str] | None, reason: str, *, actor: str, forced: bool) -> None:
    """The last delivery of a deploy command failed before it recorded everything: its unfinished
    targets are recorded Failed with ``reason``, so the run ends rather than stays Deploying."""
    run = svc.store.get(svc.settings.pipeline, run_id)
    if run is None:
        return
    names = list(target_names or []) if forced else _approved(run, target_names)
    results = {
        name: {"status": FAILED, "reason": reason}
        for name in names
        if run.targets.get(name, {}).get("status") not in (DEPLOYED, SKIPPED, FAILED)
    }
    if results:
        _record_targets(svc, run, results, names, actor)


def _record_targets(svc, run: Run, results: dict[str, dict], names: list[str], actor: str) -> Run:
    def change(current: Run) -> bool:
        now = R._iso(utcnow())
        for name, result in results.items():
            current.targets[name] = {**result, "at": now}
        statuses = [current.targets.get(n, {}).get("status") for n in names]
        if current.status == R.APPROVED:
            current.transition(R.DEPLOYING, by=actor, reason="deploying")
        if current.status == R.DEPLOYING and statuses and all(s in (DEPLOYED, SKIPPED, FAILED) for s in statuses):
            ok = [n for n, s in zip(names, statuses, strict=True) if s in (DEPLOYED, SKIPPED)]
            final = R.DEPLOYED if len(ok) == len(names) else R.PARTIALLY_DEPLOYED if ok else R.FAILED
            summary = "; ".join(f"{n}: {current.targets[n]['status']}" for n in names)
            current.transition(final, by=actor, reason=summary)
        elif results:
            current.note(
                by=actor, reason="; ".join(f"{n}: {r['status']} ({r['reason'][:120]})" for n, r in results.items())
            )
        return bool(results) or current.status == R.APPROVED

    return svc.store.update(svc.settings.pipeline, run.run_id, change, held=run)


def rollback(svc, target_name: str, to_run: str | None, *, actor: str) -> PutResult:
    """Put an earlier model back on a target: the one it replaced, or a named run's."""
    target = svc.settings.target(target_name)
    if target is None:
        raise CommandRejected(f"no deploy target named {target_name!r}")
    state = svc.targets.get(target_name)
    run_id = to_run or state.previous_run
    if run_id is None:
        raise CommandRejected(f"target {target_name} has no earlier model to roll back to")
    run = svc.store.get(svc.settings.pipeline, run_id)
    if run is None or not run.outputs.get("model"):
        raise CommandRejected(f"run {run_id!r} has no trained model to put back")
    if to_run and not any(h.get("run") == to_run for h in svc.targets.history(target_name)):
        raise CommandRejected(f"run {to_run} was never live on {target_name}")
    return put_live(svc, target, run, actor=actor, kind="rollback")
