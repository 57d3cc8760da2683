"""Workflow steps composed from the clients: start a run for new data, coalesce, submit, cancel.

Every step is safe to repeat: triggers fire twice, run concurrently on several instances, and crash
half-way. Idempotency comes from deterministic run ids (insert-if-absent), a short lease on the
run while one invocation submits it, and ETag-conditional updates of the run and the pipeline slot.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from shared import runs as R
from shared import telemetry
from shared.bes import BesClient, BesError, blob_reference
from shared.http import make_session
from shared.redact import redact
from shared.runs import Run, utcnow
from shared.settings import ClassicTarget, Settings, Target, get_settings
from shared.storage import BlobRef, Storage
from shared.store import MAX_CONFLICT_RETRIES, CommandLog, RunExists, RunStore, StaleError, TargetStore

log = logging.getLogger(__name__)

LEASE = R.LEASE  # how long one invocation may hold a run while it submits it
# The input/output SAS must outlive the job: its whole allowed time plus this margin.
SAS_MARGIN = dt.timedelta(minutes=30)
DATA_EXTENSIONS = (".csv", ".tsv", ".arff")


@dataclass
class Services:
    """The clients a workflow step needs; tests build one pointed at Azurite and the emulator."""

    settings: Settings
    storage: Storage
    store: RunStore
    bes: BesClient
    targets: TargetStore
    commands: CommandLog
    credential: Any = None  # azure-identity credential for ARM targets, created on first use
    _deployers: dict = field(default_factory=dict)

    def deployer(self, target: Target):
        """The deployer for ``target`` (one per target for the life of these services)."""
        from shared.deploy import ArmDeployer, ClassicDeployer

        if target.name not in self._deployers:
            s = self.settings
            session = make_session(retries=s.http_retries)
            if isinstance(target, ClassicTarget):
                deployer = ClassicDeployer(target, self.storage, s.deploy_sas_days, s.http_timeout_seconds, session)
            else:
                from shared.arm import ArmWebServiceClient

                if self.credential is None:
                    self.credential = azure_credential()
                client = ArmWebServiceClient(
                    target.management_url,
                    self.credential,
                    api_version=target.api_version,
                    timeout=s.http_timeout_seconds,
                    poll_seconds=s.arm_poll_seconds,
                    operation_timeout=s.arm_timeout_seconds,
                    session=session,
                )
                deployer = ArmDeployer(target, self.storage, client)
            self._deployers[target.name] = deployer
        return self._deployers[target.name]


def build_services(settings: Settings, *, create: bool = True) -> Services:
    """All clients for ``settings``; ``create=False`` creates nothing in storage (for read-only tools)."""
    credential = None
    if settings.storage_identity is not None:
        credential = azure_credential(settings.storage_identity.client_id)
        storage = Storage(identity=settings.storage_identity, credential=credential)
    else:
        storage = Storage(settings.storage_connection)
    store = RunStore.open(storage.tables, settings.runs_table, create=create)
    return Services(
        settings=settings,
        storage=storage,
        store=store,
        bes=BesClient(
            settings.bes_jobs_url,
            settings.bes_api_key,
            timeout=settings.http_timeout_seconds,
            session=make_session(retries=settings.http_retries),
        ),
        targets=TargetStore(store.table),
        commands=CommandLog(store.table),
        credential=credential,
    )


def azure_credential(client_id: str | None = None):
    """``DefaultAzureCredential``: the managed identity in Azure (``client_id`` picks a user-assigned
    one, else ``AZURE_CLIENT_ID``), developer logins locally."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(**({"managed_identity_client_id": client_id} if client_id else {}))


@functools.cache
def get_services() -> Services:
    """Process-wide clients, created on first use (not at import: keeps indexing fast)."""
    return build_services(get_settings())


@dataclass(frozen=True)
class Outcome:
    """What one invocation did with a run: for the log line and for tests."""

    run_id: str
    status: str
    action: str  # started | waiting | superseded | rejected | failed | duplicate | in_progress | retry


class RetryLater(Exception):
    """A transient failure was recorded on the run; raising lets the trigger deliver again."""


# --- starting a run ---------------------------------------------------------------------------


def start_run_for_blob(
    svc: Services,
    blob: BlobRef,
    *,
    source: str,
    actor: str,
    now: dt.datetime | None = None,
    salt: str = "",
    hold: bool | None = None,
) -> Outcome:
    """Record a run for this version of ``blob`` and start training it, or queue it behind the active run.

    The same blob version delivered again (or concurrently) finds its run and does nothing more,
    unless an earlier delivery was interrupted before the job started, in which case it resumes.
    """
    now = now or utcnow()
    if hold is None:  # a quiet period applies to uploads: a burst becomes one run on the newest blob
        hold = source == "blob" and svc.settings.debounce_seconds > 0
    run = Run.for_blob(svc.settings.pipeline, blob, source, actor, now, salt)
    with telemetry.bind(pipeline=run.pipeline, run_id=run.run_id):
        return _record_and_admit(svc, run, blob, actor, now, hold)


def _record_and_admit(svc: Services, run: Run, blob: BlobRef, actor: str, now: dt.datetime, hold: bool) -> Outcome:
    problem = unusable_blob(blob)
    if problem:
        run.transition(
            R.FAILED, by=actor, reason=problem, now=now, error={"code": "UnusableTrainingBlob", "message": problem}
        )
        try:
            svc.store.create(run)
        except RunExists:
            return _duplicate(svc, run.run_id)
        log.warning("run %s: %s", run.run_id, problem)
        return Outcome(run.run_id, run.status, "rejected")

    run.attempts, run.lease_owner, run.lease_until = 1, actor, now + LEASE
    try:
        run = svc.store.create(run)
        log.info("run %s recorded for %s (etag %s, %d bytes)", run.run_id, blob.path, blob.etag, blob.size)
    except RunExists:
        run = _take_over(svc, run.run_id, actor, now)
        if isinstance(run, Outcome):
            return run
    return _admit_and_submit(svc, run, actor, hold=hold)


class NothingToTrain(ValueError):
    """A retraining was asked for, but there is no such training blob."""


def retrain(svc: Services, blob_name: str | None, *, source: str, actor: str, salt: str = "") -> Outcome:
    """Retrain on a named blob of the training container, or on the newest training blob — through the
    same idempotent path as uploads (the same blob version is one run, unless ``salt`` says otherwise)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    container = svc.settings.training_container
    if blob_name is None:
        blob_name = newest_training_blob(svc)
    try:
        ref = svc.storage.blob_ref(container, blob_name)
    except ResourceNotFoundError:
        raise NothingToTrain(f"no blob {blob_name!r} in the training container {container!r}") from None
    except HttpResponseError as exc:
        if exc.status_code != 400:  # an outage or a missing permission: may pass, so retried
            raise
        raise NothingToTrain(f"storage cannot address a blob named {blob_name!r}: {exc.reason}") from None
    return start_run_for_blob(svc, ref, source=source, actor=actor, salt=salt, hold=False)


def newest_training_blob(svc: Services) -> str:
    container = svc.settings.training_container
    blobs = [
        b
        for b in svc.storage.blobs.get_container_client(container).list_blobs()
        if b.name.lower().endswith(DATA_EXTENSIONS) and b.size
    ]
    if not blobs:
        raise NothingToTrain(f"the training container {container!r} has no training data")
    return max(blobs, key=lambda b: (b.last_modified, b.name)).name


def retrain_on_schedule(svc: Services, *, actor: str, now: dt.datetime | None = None) -> Outcome | None:
    """A schedule occurrence: retrain on the newest training blob unless that version was trained
    already (or always, with ``RETRAIN_ALWAYS``: then one new run per occurrence minute)."""
    now = now or utcnow()
    try:
        name = newest_training_blob(svc)
    except NothingToTrain as exc:
        log.info("scheduled retraining: %s", exc)
        return None
    salt = ""
    if svc.settings.retrain_always:
        salt = f"schedule:{now.astimezone(dt.timezone.utc):%Y%m%dT%H%M}"
    else:
        ref = svc.storage.blob_ref(svc.settings.training_container, name)
        existing = svc.store.get(svc.settings.pipeline, R.run_id_for(svc.settings.pipeline, ref))
        if existing is not None:
            log.info("scheduled retraining: %s was trained already (run %s)", name, existing.run_id)
            return Outcome(existing.run_id, existing.status, "already_trained")
    return retrain(svc, name, source="timer", actor=actor, salt=salt)


def unusable_blob(blob: BlobRef) -> str | None:
    """Why this blob cannot be training data, or ``None``. Checked before anything is sent to BES."""
    if not blob.name.lower().endswith(DATA_EXTENSIONS):
        return f"{blob.path!r} is not training data: BES reads only {', '.join(DATA_EXTENSIONS)} files"
    if blob.size == 0:
        return f"{blob.path!r} is empty"
    return None


def _duplicate(svc: Services, run_id: str) -> Outcome:
    run = svc.store.get(svc.settings.pipeline, run_id)
    log.info("run %s: duplicate delivery ignored (status %s)", run_id, run.status)
    return Outcome(run_id, run.status, "duplicate")


def _take_over(svc: Services, run_id: str, actor: str, now: dt.datetime) -> Run | Outcome:
    """A delivery found its run already recorded: resume it only if it is stuck before Running."""
    existing = svc.store.get(svc.settings.pipeline, run_id)
    if existing.status not in (R.REQUESTED, R.SUBMITTED):
        log.info("run %s: duplicate delivery ignored (status %s)", run_id, existing.status)
        return Outcome(run_id, existing.status, "duplicate")
    if not existing.lease_free(now):
        log.info("run %s: another invocation (%s) is submitting it", run_id, existing.lease_owner)
        return Outcome(run_id, existing.status, "in_progress")
    if existing.attempts >= svc.settings.max_attempts:
        return _fail(svc, existing, actor, f"gave up after {existing.attempts} attempts", existing.error)
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


def _admit_and_submit(svc: Services, run: Run, actor: str, *, hold: bool = False) -> Outcome:
    decision, other = _admit(svc, run, actor, hold=hold)
    if decision == "active":
        return _submit(svc, run, actor)
    if decision == "waiting":
        why = "waiting for the quiet period to pass" if hold else "waiting for the active run to end"
        outcome = _settle(svc, run, actor, R.WAITING, why, attempts=0)
        if other:
            _supersede(svc, other, by_run=run.run_id, actor=actor)
        return outcome
    return _settle(svc, run, actor, R.SUPERSEDED, f"newer data is already queued ({other})", superseded_by=other)


def _admit(svc: Services, run: Run, actor: str, *, hold: bool = False) -> tuple[str, str | None]:
    """Claim the pipeline's slot for ``run``: ``active``, ``waiting`` (displacing an older waiter), or
    ``superseded`` (by newer data). Returns the decision and the other run it concerns.

    ``hold`` queues the run even when the slot is free: the poll starts it once the quiet period
    (``DEBOUNCE_SECONDS``) after the newest upload has passed."""
    store, key = svc.store, run.order_key
    for _ in range(MAX_CONFLICT_RETRIES):
        slot = store.get_slot(run.pipeline)
        if slot.active_run and slot.active_run != run.run_id:
            active = store.get(run.pipeline, slot.active_run)
            if active is None or not active.holds_slot:
                # The slot outlived its run (a crash between ending it and advancing): heal it.
                advance_pipeline(svc, slot.active_run, actor)
                continue
            if key < active.order_key:
                return "superseded", slot.active_run
        displaced = None
        if slot.active_run == run.run_id:
            return "active", None
        if slot.active_run is None and not hold:
            slot.active_run = run.run_id
            decision = "active"
        elif slot.waiting_run == run.run_id:
            return "waiting", None
        elif slot.waiting_run is None or key > (slot.waiting_key or ""):
            displaced, slot.waiting_run, slot.waiting_key = slot.waiting_run, run.run_id, key
            decision = "waiting"
        else:
            return "superseded", slot.waiting_run
        try:
            store.save_slot(slot)
            return decision, displaced
        except StaleError:
            continue
    raise StaleError(f"pipeline {run.pipeline}: slot too contended")


def _settle(svc: Services, run: Run, actor: str, status: str, reason: str, **changes) -> Outcome:
    """Move a run we hold the lease on to a resting state (Waiting/Superseded)."""

    def change(current: Run) -> bool:
        if current.status != R.REQUESTED or current.lease_owner != actor:
            return False  # promoted or taken over meanwhile: the new holder decides
        current.transition(status, by=actor, reason=reason, lease_owner=None, lease_until=None, **changes)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    log.info("run %s: %s (%s)", run.run_id, current.status, reason)
    action = {R.WAITING: "waiting", R.SUPERSEDED: "superseded"}.get(current.status, "duplicate")
    return Outcome(run.run_id, current.status, action)


def _supersede(svc: Services, run_id: str, *, by_run: str, actor: str) -> None:
    def change(current: Run) -> bool:
        if current.status not in (R.WAITING, R.REQUESTED) or current.job_id:
            return False
        current.transition(R.SUPERSEDED, by=actor, reason=f"newer data arrived ({by_run})", superseded_by=by_run)
        return True

    svc.store.update(svc.settings.pipeline, run_id, change)
    log.info("run %s: superseded by %s", run_id, by_run)


# --- submitting to BES ---------------------------------------------------------------------------


def bes_request(svc: Services, run: Run, now: dt.datetime) -> tuple[dict, dict[str, str]]:
    """The BES submit body for ``run`` and the output paths it names.

    Input: a read-only SAS for exactly the training blob. Outputs: create/write SAS for exactly the
    run's own, never-reused blobs. All expire when the job's allowed time (plus a margin) is over.
    """
    s, storage = svc.settings, svc.storage
    expiry = now + dt.timedelta(minutes=s.job_timeout_minutes) + SAS_MARGIN
    folder = f"{run.pipeline}/{run.run_id}"
    outputs = {"model": f"{folder}/model.ilearner", "evaluation": f"{folder}/evaluation.csv"}
    base = storage.blob_base_location

    def output(blob: str) -> dict:
        sas = storage.blob_sas(s.models_container, blob, "cw", expiry, now=now)
        return blob_reference(base, f"{s.models_container}/{blob}", sas)

    request = {
        "Inputs": {
            s.bes_input_name: blob_reference(
                base,
                f"{run.blob_container}/{run.blob_name}",
                storage.blob_sas(run.blob_container, run.blob_name, "r", expiry, now=now),
            )
        },
        "Outputs": {
            s.bes_model_output: output(outputs["model"]),
            s.bes_evaluation_output: output(outputs["evaluation"]),
        },
        "GlobalParameters": dict(s.bes_global_parameters),
    }
    return request, {k: f"{s.models_container}/{v}" for k, v in outputs.items()}


def _submit(svc: Services, run: Run, actor: str) -> Outcome:
    """Create and start the run's BES job. The job id is recorded before starting, so a retry starts
    the same job instead of creating another."""
    try:
        if run.job_id is None:
            svc.storage.ensure_container(svc.settings.models_container)
            request, outputs = bes_request(svc, run, utcnow())
            job_id = svc.bes.submit(request)
            run.transition(
                R.SUBMITTED,
                by=actor,
                reason=f"BES job {job_id} created",
                job_id=job_id,
                outputs=outputs,
                error=None,
                submitted_at=utcnow(),
            )
            try:
                run = svc.store.save(run)
            except StaleError:
                # Someone else moved the run (e.g. an operator cancelled it): our job must not run.
                _cancel_quietly(svc, job_id)
                current = svc.store.get(run.pipeline, run.run_id)
                return Outcome(run.run_id, current.status, "duplicate")
        _start(svc, run)
    except BesError as exc:
        return _submit_failed(svc, run, exc, actor)

    def change(current: Run) -> bool:
        if current.status != R.SUBMITTED:
            return False
        current.transition(
            R.RUNNING, by=actor, reason=f"BES job {current.job_id} started", lease_owner=None, lease_until=None
        )
        return True

    current = svc.store.update(run.pipeline, run.run_id, change, held=run)
    with telemetry.bind(job_id=run.job_id):
        log.info("run %s: BES job %s started", run.run_id, run.job_id)
    telemetry.count("runs.started", pipeline=run.pipeline, source=run.source)
    return Outcome(run.run_id, current.status, "started")


def _start(svc: Services, run: Run) -> None:
    try:
        svc.bes.start(run.job_id)
    except BesError as exc:
        if "CannotStartJob" not in exc.detail_codes:
            raise
        # Started by an earlier, interrupted attempt: fine as long as the job is alive or done.
        status = svc.bes.status(run.job_id)
        if status.status not in ("Running", "Finished"):
            raise BesError(
                f"job {run.job_id} cannot be started: it is {status.status}. {status.details or ''}".strip(),
                operation="start",
                code="InvalidOperation",
                detail_codes=("CannotStartJob",),
                http_status=exc.http_status,
            ) from None


def _submit_failed(svc: Services, run: Run, exc: BesError, actor: str) -> Outcome:
    error = exc.as_record()
    if not exc.transient or run.attempts >= svc.settings.max_attempts:
        reason = str(exc) if not exc.transient else f"gave up after {run.attempts} attempts: {exc}"
        return _fail(svc, run, actor, reason, error)

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


def _fail(svc: Services, run: Run, actor: str, reason: str, error: dict | None) -> Outcome:
    def change(current: Run) -> bool:
        if current.ended:
            return False
        current.transition(R.FAILED, by=actor, reason=redact(reason), error=error)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    log.error("run %s failed: %s", run.run_id, redact(reason))
    telemetry.count("runs.failed", pipeline=run.pipeline, stage="submit")
    advance_pipeline(svc, run.run_id, actor)
    return Outcome(run.run_id, current.status, "failed")


def _cancel_quietly(svc: Services, job_id: str) -> None:
    try:
        svc.bes.cancel(job_id)
    except BesError as exc:
        log.warning("could not cancel BES job %s: %s", job_id, exc)


# --- ending runs and moving the queue on ----------------------------------------------------------


def advance_pipeline(svc: Services, ended_run_id: str, actor: str) -> Outcome | None:
    """After ``ended_run_id`` ended, hand the slot to the newest waiting upload and start it."""
    return _pass_slot(svc, ended_run_id, actor, f"promoted: run {ended_run_id} ended")


def start_quiet_waiter(svc: Services, actor: str, now: dt.datetime | None = None) -> Outcome | None:
    """With ``DEBOUNCE_SECONDS``: start the newest waiting upload once no upload came for that long."""
    slot = svc.store.get_slot(svc.settings.pipeline)
    if slot.active_run or not slot.waiting_run:
        return None
    waiter = svc.store.get(svc.settings.pipeline, slot.waiting_run)
    now = now or utcnow()
    if waiter is not None:
        arrived = waiter.recorded_at or waiter.created_at  # storage's clock, not the recorder's
        if arrived + dt.timedelta(seconds=svc.settings.debounce_seconds) > now:
            return Outcome(waiter.run_id, waiter.status, "quiet_period")
    return _pass_slot(svc, None, actor, f"promoted: no newer upload for {svc.settings.debounce_seconds}s")


def _pass_slot(svc: Services, expected_active: str | None, actor: str, reason: str) -> Outcome | None:
    """Move the waiting run into the slot held by ``expected_active`` (``None``: a free slot) and start it."""
    store, pipeline = svc.store, svc.settings.pipeline
    for _ in range(MAX_CONFLICT_RETRIES):
        slot = store.get_slot(pipeline)
        if slot.active_run != expected_active or (expected_active is None and not slot.waiting_run):
            return None  # someone else moved the slot on already
        next_id, slot.active_run, slot.waiting_run, slot.waiting_key = slot.waiting_run, slot.waiting_run, None, None
        try:
            store.save_slot(slot)
            break
        except StaleError:
            continue
    else:
        raise StaleError(f"pipeline {pipeline}: slot too contended")
    if next_id is None:
        return None
    return promote(svc, next_id, actor, reason)


def promote(svc: Services, run_id: str, actor: str, reason: str) -> Outcome | None:
    """Start the run that was just moved into the slot (also: finish a promotion cut short)."""
    store, pipeline = svc.store, svc.settings.pipeline
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

    run = store.update(pipeline, run_id, change)
    if run is None or run.lease_owner != actor or run.status != R.REQUESTED:
        return None
    log.info("run %s: %s", run_id, reason)
    return _submit(svc, run, actor)


def cancel_run(svc: Services, run_id: str, *, actor: str, reason: str) -> Run | None:
    """Cancel a run (and its BES job, if any); the pipeline moves on to the newest waiting upload."""
    run = svc.store.get(svc.settings.pipeline, run_id)
    if run is None or run.ended:
        return run
    if run.job_id:
        try:
            svc.bes.cancel(run.job_id)
        except BesError as exc:
            if exc.http_status != 404:
                raise

    def change(current: Run) -> bool:
        if current.ended:
            return False
        current.transition(R.CANCELLED, by=actor, reason=reason)
        return True

    run = svc.store.update(svc.settings.pipeline, run_id, change)
    log.info("run %s: cancelled (%s)", run_id, reason)
    advance_pipeline(svc, run_id, actor)
    return run
