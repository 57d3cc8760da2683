"""Staged rollouts: a new model reaches an online endpoint's traffic one stage per poll tick.

create (a deployment of its own, beside the live one) → probe (rows of the run's own training data,
straight at it) → shadow (a mirrored share) → canary (a live share, baked, probed every tick) →
promote (all traffic, verified by reading the endpoint back) → retire (deployments beyond
``keep_deployments``). A failed probe, a deployment that leaves ``Succeeded``, a failed operation or a
stage past its deadline rolls traffic and mirror back to the maps read before the rollout changed
anything; the new deployment is kept for inspection (the next retire deletes it).

The rollout lives on the target's state (``TargetState.rollout``), so it survives restarts and is seen
by every instance. Each tick takes a short step lease on it (ETag-conditional), does one stage's work —
never waiting on an operation: its URL is recorded and looked at on the next tick — and writes the
result back under that lease. The target's deployment lease (``deploying_run``) is held for the whole
rollout, so no other run starts one on the same endpoint meanwhile.
"""

from __future__ import annotations

import codecs
import copy
import csv
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Iterator

from shared import decisions, telemetry
from shared import runs as R
from shared.http import ServiceError, ci_get
from shared.redact import redact
from shared.runs import Run, lease_lapsed, utcnow
from shared.store import StaleError, TargetState, retry_on_conflict

log = logging.getLogger(__name__)

ACTIVE = ("create", "probe", "shadow", "canary", "promote", "retire", "rollback")
PROMOTED, ROLLED_BACK, ROLLBACK_FAILED = "Promoted", "RolledBack", "RollbackFailed"
STEP_LEASE = dt.timedelta(minutes=2)
OPERATION_MINUTES = 30.0  # an operation's deadline when the service gives no x-ms-async-operation-timeout
PROBES_KEPT = 12
PROBE_SECONDS = 60.0  # a probe's rows not scored by then count as errors
ROLLBACK_MINUTES = 60.0  # how long a rollback keeps trying through transient failures before it is RollbackFailed
_DURATION = re.compile(r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?")


class StageFailed(Exception):
    """The rollout cannot go on: roll back, with this reason."""


def is_active(state: TargetState | None) -> bool:
    return bool(state and state.rollout and state.rollout.get("stage") in ACTIVE)


def operation_minutes(timeout: str | None) -> float:
    """The minutes an ISO-8601 ``x-ms-async-operation-timeout`` allows (our default without one)."""
    match = _DURATION.fullmatch(timeout or "")
    if not timeout or match is None or not any(match.groupdict().values()):
        return OPERATION_MINUTES
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return parts.get("d", 0) * 1440 + parts.get("h", 0) * 60 + parts.get("m", 0) + parts.get("s", 0) / 60


# --- starting one ------------------------------------------------------------------------------------


def begin(svc, target, run: Run, *, actor: str, kind: str):
    """Start putting ``run``'s registered model on ``target``: take the target, create its deployment
    (copying the live one's settings), and record the rollout; the poll ticks do the rest."""
    from shared import deploy, online

    model_id = str((run.model or {}).get("id") or "")
    if not model_id.lower().startswith(target.workspace.lower() + "/models/"):
        raise deploy.DeployError(
            f"run {run.run_id} has no model version registered in {target.workspace} "
            f"(it has {model_id or 'none'}): an azureml-online target serves registered models",
            operation=kind,
            code="NoRegisteredModel",
        )
    queued = queue_behind(svc, target, run, actor) if kind == "deploy" else None
    if queued is not None:
        return queued
    claimed = deploy.claim(svc, target, run, kind)
    if isinstance(claimed, deploy.PutResult):
        return claimed
    if is_active(claimed) and claimed.rollout.get("run") == run.run_id:
        return deploy.PutResult("rolling-out", f"already rolling out ({claimed.rollout['stage']})")
    deployer = svc.deployer(target)
    now = utcnow()
    try:
        endpoint = deployer.endpoint()
        properties = ci_get(endpoint, "properties") or {}
        previous = {
            "traffic": online.weights(ci_get(properties, "traffic")),
            "mirror": online.weights(ci_get(properties, "mirrorTraffic")),
        }
        live = decisions.live_deployment(previous["traffic"])
        name = online.deployment_name(run.run_id)
        existing = deployer.deployment(name)
        same = existing is not None and str(ci_get(ci_get(existing, "properties"), "model")).lower() == model_id.lower()
        recreate = None
        if same and _state(existing) == "Succeeded":
            op = None  # still there from an earlier rollout of this run (a rollback to it): nothing to create
        else:
            template = deployer.deployment(live) if live and live.lower() != name.lower() else None
            body = online.deployment_body(template, model_id, str(ci_get(endpoint, "location") or ""))
            if _state(existing) == "Deleting":  # an earlier rollout's retire is deleting it: create it once gone
                op, recreate = None, body
            else:
                try:
                    op = deployer.put_deployment(name, body).record()
                except ServiceError as exc:
                    if exc.http_status != 409:
                        raise
                    op = {"url": None, "kind": "resource", "timeout": None}  # an earlier attempt's create
    except Exception:
        deploy.release(svc, target, run)
        raise
    doc = {
        "id": uuid.uuid4().hex[:12],
        "run": run.run_id,
        "pipeline": run.pipeline,
        "kind": kind,
        "by": actor,
        "model": model_id,
        "deployment": name,
        "replacing": live if live and live.lower() != name.lower() else None,
        "previous": previous,
        "traffic": previous["traffic"],
        "mirror": previous["mirror"],
        "scoring_uri": ci_get(properties, "scoringUri"),
        "auth_mode": ci_get(properties, "authMode"),
        "touched": False,
        "started": R.iso(now),
        "stage": "create",
        "op": op,
        "recreate": recreate,
        "probes": [],
        "stages": [{"stage": "create", "at": R.iso(now)}],
    }
    _enter_deadline(doc, now, target)

    def attempt(first=[claimed]) -> None:  # noqa: B006 - the held state, tried once before a re-read
        state = first.pop() if first else svc.targets.get(target.name)
        if state.deploying_run != run.run_id:
            raise deploy.DeployError(
                f"{target.name}: lost the deployment lease", operation=kind, code="LeaseLost", transient=True
            )
        state.rollout, state.lease_until = doc, None  # the rollout holds the target until it ends
        svc.targets.save(state)

    retry_on_conflict(attempt, f"target {target.name}")
    log.info("target %s: rollout of run %s started (deployment %s)", target.name, run.run_id, name)
    return deploy.PutResult(
        "rolling-out", f"rollout started: deployment {name}, replacing {doc['replacing'] or 'nothing'}"
    )


def queue_behind(svc, target, run: Run, actor: str):
    """While another run's rollout holds the target, a newer approved run waits for it (``Queued``),
    replacing an older one waiting there (``Superseded``); it starts when that rollout ends. An older
    run than the one waiting is superseded at once. ``None``: nothing is rolling out, go ahead."""
    from shared import deploy

    outcome: list = []

    def attempt() -> None:
        outcome.clear()
        state = svc.targets.get(target.name)
        if not is_active(state) or state.rollout.get("run") == run.run_id:
            return
        waiting = svc.store.get(run.pipeline, state.queued_run) if state.queued_run else None
        if waiting is not None and waiting.run_id != run.run_id and waiting.order_key > run.order_key:
            outcome.append(deploy.PutResult("skipped", f"newer data's model (run {waiting.run_id}) is queued"))
            return
        outcome.append(deploy.PutResult("queued", f"queued behind the rollout of run {state.rollout['run']}"))
        outcome.append(waiting.run_id if waiting is not None and waiting.run_id != run.run_id else None)
        state.queued_run = run.run_id
        svc.targets.save(state)

    retry_on_conflict(attempt, f"target {target.name}")
    if len(outcome) == 2 and outcome[1]:
        older = svc.store.get(run.pipeline, outcome[1])
        if older is not None and older.targets.get(target.name, {}).get("status") == deploy.QUEUED:
            result = {"status": deploy.SUPERSEDED, "reason": f"superseded by run {run.run_id} while queued"}
            deploy.record_targets(svc, older, {target.name: result}, list(older.targets), actor)
    return outcome[0] if outcome else None


def start_queued(svc, target, state: TargetState, actor: str) -> str:
    """The run waiting for a rollout that has ended starts its own (its deploy recorded on the run)."""
    from shared import deploy

    def attempt() -> str | None:
        current = svc.targets.get(target.name)
        if is_active(current) or not current.queued_run:
            return None
        queued, current.queued_run = current.queued_run, None
        svc.targets.save(current)
        return queued

    run_id = retry_on_conflict(attempt, f"target {target.name}")
    owner = svc.settings.pipeline_of_target(target.name)
    run = svc.store.get(owner.name, run_id) if run_id and owner else None
    if run is None or run.targets.get(target.name, {}).get("status") != deploy.QUEUED:
        return "nothing queued"
    try:
        outcome = deploy.put_live(svc, target, run, actor=actor)
        result = {"status": outcome.status, "reason": outcome.reason}
    except ServiceError as exc:
        result = {"status": deploy.FAILED, "reason": str(exc), "error": exc.as_record()}
    deploy.record_targets(svc, run, {target.name: result}, list(run.targets), actor)
    return f"started queued run {run.run_id}: {result['status']}"


def _state(resource: dict | None) -> str | None:
    return ci_get(ci_get(resource, "properties"), "provisioningState") if resource else None


def _enter_deadline(doc: dict, now: dt.datetime, target) -> None:
    """A stage's deadline: its operation's allowed time, plus its soak (mirror or bake) time."""
    minutes = operation_minutes((doc.get("op") or {}).get("timeout"))
    soak = {"shadow": target.rollout.mirror_minutes, "canary": target.rollout.bake_minutes}.get(doc["stage"], 0.0)
    doc["deadline"] = R.iso(now + dt.timedelta(minutes=minutes + soak))


# --- moving them on (every poll tick) ----------------------------------------------------------------


def advance_all(svc, *, actor: str, now: dt.datetime | None = None) -> list[str]:
    """One step of every rollout in progress (one query of the targets partition, only when a staged
    target is configured); what each did. One target's failure never stops another's."""
    staged = {t.name: t for t in svc.settings.targets if getattr(t, "staged", False)}
    if not staged:
        return []
    done = []
    for state in svc.targets.recorded():
        target = staged.get(state.name)
        if target is None or not (is_active(state) or state.queued_run):
            continue
        with telemetry.bind(target=target.name, run_id=(state.rollout or {}).get("run")):
            try:
                if not is_active(state):  # a rollout ended: the run queued behind it starts its own
                    done.append(f"{target.name}: {start_queued(svc, target, state, actor)}")
                    continue
                done.append(f"{target.name}: {advance(svc, target, state, actor=actor, now=now or utcnow())}")
            except Exception:
                log.exception("target %s: the rollout step failed; the next tick tries again", target.name)
                done.append(f"{target.name}: error")
    return done


def advance(svc, target, state: TargetState, *, actor: str, now: dt.datetime) -> str:
    """Take the rollout's step lease, do its stage's work, write the result back under the lease."""
    owner = uuid.uuid4().hex
    step = state.rollout.get("step") or {}
    if step and not lease_lapsed(R.parse_iso(step.get("until")), state.written_at, STEP_LEASE, now):
        return "busy"  # another tick (or instance) is on it
    state.rollout = {**state.rollout, "step": {"owner": owner, "until": R.iso(now + STEP_LEASE)}}
    try:
        held = svc.targets.save(state)
    except StaleError:
        return "busy"
    doc = copy.deepcopy(held.rollout)
    doc.pop("step", None)
    stage = Stage(svc, target, doc, now, actor)
    stage.run_stage()
    live_change = stage.live_change

    replaced: list = [None, None]  # what the change replaced, as the state we write over says

    def attempt(first=[held]) -> TargetState:  # noqa: B006 - the held state, tried once before a re-read
        current = first.pop() if first else svc.targets.get(target.name)
        if (current.rollout or {}).get("step", {}).get("owner") != owner:
            raise StaleError("lost the step lease")
        current.rollout = doc
        replaced[:] = [current.live_run, current.live_model]
        if live_change:
            current.previous_run, current.previous_model = current.live_run, current.live_model
            current.live_run, current.live_model = doc["run"], doc["model"]
            current.live_metrics, current.since = stage.metrics, now
        if doc["stage"] not in ACTIVE:
            current.deploying_run = current.lease_until = None
        return svc.targets.save(current)

    try:
        retry_on_conflict(attempt, f"target {target.name}")
    except StaleError:
        log.warning("target %s: the step lease lapsed before the rollout step was saved", target.name)
        return "lapsed"
    if live_change:
        svc.targets.record(
            target.name,
            now,
            {
                "kind": doc["kind"],
                "run": doc["run"],
                "model": doc["model"],
                "deployment": doc["deployment"],
                "replaced_run": replaced[0],
                "replaced_model": replaced[1],
                "by": doc["by"],
            },
        )
    if doc["stage"] not in ACTIVE:
        _record_end(svc, target, doc, actor)
    return doc["stage"] if doc["stage"] in ACTIVE else doc["outcome"]


class Stage:
    """One tick's work on one rollout: ``doc`` is changed in place and saved by the caller."""

    def __init__(self, svc, target, doc: dict, now: dt.datetime, actor: str) -> None:
        self.svc, self.target, self.doc, self.now, self.actor = svc, target, doc, now, actor
        self.deployer = svc.deployer(target)
        self.live_change, self.metrics = False, None

    def run_stage(self) -> None:
        doc = self.doc
        stage = doc["stage"]
        try:
            getattr(self, f"_{stage}")()
        except StageFailed as exc:
            self.fail(str(exc))
        except Exception as exc:  # recorded; a transient one is tried again next tick, within the deadline
            if isinstance(exc, ServiceError):
                doc["last_error"] = {**exc.as_record(), "at": R.iso(self.now)}
            else:
                log.exception("target %s: unexpected error in rollout stage %s", self.target.name, stage)
                message = redact(f"{type(exc).__name__}: {exc}")[:500]
                doc["last_error"] = {"code": "Unexpected", "message": message, "at": R.iso(self.now)}
            if isinstance(exc, ServiceError) and not exc.transient and stage != "rollback":
                self.fail(str(exc))
        if doc["stage"] in ACTIVE and self.now > R.parse_iso(doc["deadline"]):
            if doc["stage"] == "rollback":
                log.error("target %s: the rollback of run %s did not complete", self.target.name, doc["run"])
                self.end(
                    ROLLBACK_FAILED,
                    f"{doc['reason']}; the rollback did not complete by {doc['deadline']}: "
                    f"{doc.get('rollback_error') or 'no answer'}",
                )
            else:
                self.fail(f"stage {doc['stage']} passed its deadline ({doc['deadline']})")

    # --- the stages ------------------------------------------------------------------------------

    def _create(self) -> None:
        if self.doc.get("recreate"):  # waiting for a retire to delete the old deployment of this name
            if self.deployer.deployment(self.doc["deployment"]) is not None:
                return
            self.doc["op"] = self.deployer.put_deployment(self.doc["deployment"], self.doc["recreate"]).record()
            self.doc["recreate"] = None
            return
        if not self.operation_done():
            return
        deployment = self.deployer.deployment(self.doc["deployment"])
        state = _state(deployment)
        if deployment is None:
            raise StageFailed(f"deployment {self.doc['deployment']} is gone")
        if state in ("Creating", "Updating"):
            return  # still provisioning: the deadline holds
        self.check_deployment(deployment)
        self.next()

    def _probe(self) -> None:
        self.probe()
        self.next()

    def _shadow(self) -> None:
        self.soak(self.target.rollout.mirror_minutes)

    def _canary(self) -> None:
        self.soak(self.target.rollout.bake_minutes)

    def _promote(self) -> None:
        if not self.operation_done():
            return
        endpoint = self.deployer.endpoint()
        from shared import online

        traffic = online.weights(ci_get(ci_get(endpoint, "properties"), "traffic"))
        if traffic != {self.doc["deployment"]: 100}:
            raise StageFailed(f"the endpoint routes {traffic or 'nothing'} after promotion, not all to ours")
        self.check_deployment(self.deployer.deployment(self.doc["deployment"]))
        self.doc["traffic"], self.doc["mirror"] = (
            traffic,
            online.weights(ci_get(ci_get(endpoint, "properties"), "mirrorTraffic")),
        )
        run = self.svc.store.get(self.doc["pipeline"], self.doc["run"])
        self.live_change, self.metrics = True, dict(run.metrics) if run else None
        self.doc["promoted"] = R.iso(self.now)  # from here on the new model is live: nothing rolls back
        self.next()

    def _retire(self) -> None:
        deployments = self.deployer.deployments()
        created = [(str(d.get("name")), str(ci_get(ci_get(d, "systemData"), "createdAt") or "")) for d in deployments]
        protected = {self.doc["deployment"], *(filter(None, [self.doc.get("replacing")]))}
        doomed = decisions.retire(created, self.target.keep_deployments, protected)
        for name in doomed:
            self.deployer.delete_deployment(name)
        self.doc["retired"] = doomed
        self.doc["kept"] = [name for name, _ in created if name not in doomed]
        self.end(PROMOTED, f"{self.doc['deployment']} has all traffic; retired {', '.join(doomed) or 'nothing'}")

    def _rollback(self) -> None:
        if self.doc.get("op") is None:  # the rollback's PUT did not go out: send it again
            return self.send_rollback()
        status, error = self.deployer.operation(self.doc["op"])
        if status == "InProgress":
            return
        self.doc["op"] = None
        if status != "Succeeded":
            self.doc["rollback_error"] = f"the rollback operation ended {status}: {error or 'no reason given'}"
            return self.send_rollback()
        from shared import online

        endpoint = self.deployer.endpoint()
        properties = ci_get(endpoint, "properties")
        traffic, mirror = (
            online.weights(ci_get(properties, "traffic")),
            online.weights(ci_get(properties, "mirrorTraffic")),
        )
        self.doc["traffic"], self.doc["mirror"] = traffic, mirror
        if traffic != self.doc["previous"]["traffic"] or mirror != self.doc["previous"]["mirror"]:
            self.doc["rollback_error"] = f"the endpoint routes {traffic} (mirror {mirror}) after the rollback"
            return self.send_rollback()
        self.end(ROLLED_BACK, self.doc["reason"])

    # --- helpers ---------------------------------------------------------------------------------

    def operation_done(self) -> bool:
        """Whether the stage's recorded operation has ended well (a failed one fails the stage)."""
        if self.doc.get("pending"):  # the stage's PUT failed or its answer was lost: send it again
            self.send(self.doc["pending"])
            return False
        op = self.doc.get("op")
        if not op:
            return True
        status, error = self.deployer.operation(op)
        if status == "InProgress":
            return False
        if status != "Succeeded":
            raise StageFailed(f"the {self.doc['stage']} operation ended {status}: {error or 'no reason given'}")
        self.doc["op"] = None
        self.doc["stage_since"] = R.iso(self.now)  # the stage's change is in effect from now
        return True

    def check_deployment(self, deployment: dict | None) -> None:
        state = _state(deployment)
        if state != "Succeeded":
            raise StageFailed(f"deployment {self.doc['deployment']} is {state or 'gone'}, not Succeeded")
        model = str(ci_get(ci_get(deployment, "properties"), "model") or "")
        if model.lower() != self.doc["model"].lower():
            raise StageFailed(f"deployment {self.doc['deployment']} serves {model}, not {self.doc['model']}")

    def soak(self, minutes: float) -> None:
        """Shadow and canary: once the change is in effect, the deployment must stay healthy and pass a
        probe on every tick, for ``minutes``."""
        if not self.operation_done():
            return
        self.check_deployment(self.deployer.deployment(self.doc["deployment"]))
        self.probe()
        since = R.parse_iso(self.doc.get("stage_since")) or self.now
        if self.now >= since + dt.timedelta(minutes=minutes):
            self.next()

    def next(self) -> None:
        """Enter the stage after this one; a stage that changes traffic sends its PUT now."""
        r = self.target.rollout
        following = decisions.after(
            self.doc["stage"],
            kind=self.doc["kind"],
            has_live=bool(self.doc.get("replacing")),
            mirror_percent=r.mirror_percent,
            canary_percent=r.canary_percent,
        )
        self.doc["stage"], self.doc["op"], self.doc["stage_since"] = following, None, R.iso(self.now)
        self.doc["stages"].append({"stage": following, "at": R.iso(self.now)})
        if following in ("shadow", "canary", "promote"):
            self.send(following)
        _enter_deadline(self.doc, self.now, self.target)

    def send(self, stage: str) -> None:
        """GET the endpoint, change only its maps, PUT it whole (an LRO, followed on later ticks)."""
        from shared import online

        r = self.target.rollout
        traffic, mirror = decisions.stage_maps(
            stage, self.doc["previous"], self.doc["deployment"], r.mirror_percent, r.canary_percent
        )
        # Before the PUT: if it fails or its answer is lost, the next tick sends it again (it is
        # idempotent), and a rollback restores the maps whether or not it took effect.
        self.doc["pending"], self.doc["touched"] = stage, True
        endpoint = self.deployer.endpoint()
        try:
            op = self.deployer.put_endpoint(online.endpoint_body(endpoint, traffic, mirror), stage)
        except ServiceError as exc:
            if exc.http_status == 409:  # an operation (perhaps our lost one) is still running: wait for it
                exc.transient = True
            raise
        self.doc["op"], self.doc["traffic"], self.doc["mirror"] = op.record(), traffic, mirror
        self.doc.pop("pending", None)

    def fail(self, reason: str) -> None:
        """Roll back: the maps as they were (only if we changed them), the new deployment kept."""
        log.warning(
            "target %s: rollout of run %s fails at %s: %s", self.target.name, self.doc["run"], self.doc["stage"], reason
        )
        if self.doc.get("promoted"):  # only retiring is left: the rollout succeeded, the cleanup did not
            retired = ", ".join(self.doc.get("retired") or []) or "nothing"
            return self.end(PROMOTED, f"{self.doc['deployment']} has all traffic; retired {retired} ({reason})")
        self.doc["reason"] = f"{self.doc['stage']}: {reason}"
        self.doc["failed_stage"] = self.doc["stage"]
        if not self.doc.get("touched"):
            self.doc["op"] = None
            return self.end(ROLLED_BACK, f"{self.doc['reason']} (traffic untouched)")
        self.doc["stage"], self.doc["op"] = "rollback", None
        self.doc["deadline"] = R.iso(self.now + dt.timedelta(minutes=ROLLBACK_MINUTES))
        self.doc["stages"].append({"stage": "rollback", "at": R.iso(self.now)})
        self.send_rollback()

    def send_rollback(self) -> None:
        """Put the previous maps back; a transient failure is tried again next tick (until the rollback's
        deadline), one that can never succeed ends the rollout ``RollbackFailed``, for a person."""
        self.doc["rollback_attempts"] = self.doc.get("rollback_attempts", 0) + 1
        try:
            self.send("rollback")
        except ServiceError as exc:
            self.doc["rollback_error"] = str(exc)[:500]
            if not exc.transient:
                self.end(ROLLBACK_FAILED, f"{self.doc['reason']}; the rollback failed: {self.doc['rollback_error']}")

    def probe(self) -> None:
        """Score ``probe_rows`` rows of the run's own training data straight at the new deployment."""
        rows = self.target.rollout.probe_rows
        if rows == 0:
            return
        run = self.svc.store.get(self.doc["pipeline"], self.doc["run"])
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            columns, values = read_rows(self.svc, run, rows) if run else ([], [])
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StageFailed(
                f"the run's training data {run.blob_name} changed or is gone: nothing to probe with"
            ) from None
        if not values:
            raise StageFailed(f"no rows to probe with in {run.blob_name if run else 'the run'}")
        credential = self.deployer.scoring_credential(self.doc["auth_mode"])  # kept by the deployer
        errors: list[str] = []
        budget = time.monotonic() + PROBE_SECONDS  # a hanging endpoint must not hold the tick for minutes
        for n, row in enumerate(values):
            if time.monotonic() > budget:
                errors += [f"not scored within {PROBE_SECONDS:.0f}s"] * (len(values) - n)
                break
            error = self.deployer.score(self.doc["scoring_uri"], credential, self.doc["deployment"], columns, row)
            if error is not None:
                errors.append(error)
        rate, ok = decisions.probe_verdict(len(errors), len(values), self.target.rollout.max_probe_error_rate)
        result = {"at": R.iso(self.now), "stage": self.doc["stage"], "rows": len(values), "errors": len(errors)}
        result.update(error_rate=round(rate, 4), ok=ok, **({"first_error": errors[0][:300]} if errors else {}))
        self.doc["probes"] = [*self.doc["probes"], result][-PROBES_KEPT:]
        if not ok:
            raise StageFailed(
                f"probe error rate {rate:.0%} over {self.target.rollout.max_probe_error_rate:.0%} "
                f"({len(errors)} of {len(values)} rows; {errors[0][:200]})"
            )

    def end(self, outcome: str, reason: str) -> None:
        self.doc["stage"], self.doc["outcome"], self.doc["reason"] = "done", outcome, reason
        self.doc["ended"] = R.iso(self.now)
        self.doc["stages"].append({"stage": outcome, "at": R.iso(self.now)})


def _record_end(svc, target, doc: dict, actor: str) -> None:
    """The run's record of how the rollout ended on this target (its final status once all are done)."""
    from shared import deploy

    run = svc.store.get(doc["pipeline"], doc["run"])
    if run is None:
        return
    status = (
        deploy.DEPLOYED
        if doc["outcome"] == PROMOTED
        else deploy.ROLLED_BACK
        if doc["outcome"] == ROLLED_BACK
        else deploy.FAILED
    )
    result = {"status": status, "reason": doc["reason"][:500], "rollout": doc["id"]}
    deploy.record_targets(svc, run, {target.name: result}, list({**run.targets, target.name: None}), actor)
    log.info("target %s: rollout of run %s ended %s: %s", target.name, doc["run"], doc["outcome"], doc["reason"])
    telemetry.count("rollouts.ended", pipeline=doc["pipeline"], target=target.name, outcome=doc["outcome"])


PROBE_READ = 64 * 1024  # bytes per ranged read of the training data


def read_rows(svc, run: Run, count: int) -> tuple[list[str], list[list]]:
    """The header and the first ``count`` rows of the run's own blob version (``If-Match`` its ETag),
    read in ranges of ``PROBE_READ`` bytes: memory holds one range, whatever the blob's size."""
    from shared import preflight

    read = preflight.reader(svc.storage, run.blob_container, run.blob_name, run.blob_etag)
    size = svc.storage.blobs.get_blob_client(run.blob_container, run.blob_name).get_blob_properties().size

    def chunks() -> Iterator[bytes]:
        for offset in range(0, size, PROBE_READ):
            yield from read(offset, min(PROBE_READ, size - offset))

    delimiter = "\t" if run.blob_name.lower().endswith(".tsv") else ","
    reader = csv.reader(_lines(chunks()), delimiter=delimiter)
    header = next(reader, [])
    rows = []
    for row in reader:
        if len(rows) >= count:
            break
        if any(cell.strip() for cell in row):
            rows.append([_value(cell) for cell in row])
    return [h.strip() for h in header], rows


def _lines(chunks) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        yield from (line + "\n" for line in complete)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _value(cell: str):
    text = cell.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if re.fullmatch(r"[-+]?\d+", text) else number
