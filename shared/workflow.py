"""The entry points of a run: new data arrives (an upload, a retrain command, a schedule), or an
operator cancels. Every step is safe to repeat: triggers fire twice, run concurrently on several
instances, and crash half-way.

An upload belongs to the pipeline whose ``blob_prefix`` it starts with (the longest); one that no
pipeline claims is recorded once, with the reason, and starts nothing. The run's id is derived from
the blob version (insert-if-absent: the same version twice is one run); then the pipeline's slot
(``shared/slot.py``) and the submission (``shared/submission.py``) take over.
"""

from __future__ import annotations

import datetime as dt
import logging

from shared import runs as R
from shared import telemetry
from shared.runs import LEASE, Outcome, RetryLater, Run, utcnow
from shared.services import Services, build_services, get_services
from shared.settings import Pipeline
from shared.storage import BlobRef
from shared.store import RunExists, StaleError
from shared.submission import admit_and_submit, advance_pipeline, take_over

log = logging.getLogger(__name__)

__all__ = [  # what callers of the workflow use
    "LEASE",
    "NothingToTrain",
    "Outcome",
    "RetryLater",
    "Services",
    "StaleError",
    "build_services",
    "cancel_run",
    "get_services",
    "newest_training_blob",
    "retrain",
    "retrain_on_schedule",
    "start_run_for_blob",
]


class NothingToTrain(ValueError):
    """A retraining was asked for, but there is no such training blob."""


def start_run_for_blob(
    svc: Services,
    blob: BlobRef,
    *,
    source: str,
    actor: str,
    now: dt.datetime | None = None,
    salt: str = "",
    hold: bool | None = None,
    pipeline: Pipeline | None = None,
) -> Outcome:
    """Record a run for this version of ``blob`` in the pipeline it belongs to and start training it,
    or queue it behind the active run.

    The same blob version delivered again (or concurrently) finds its run and does nothing more,
    unless an earlier delivery was interrupted before the job started, in which case it resumes.
    """
    now = now or utcnow()
    pipeline = pipeline or svc.settings.route(blob.name)
    if pipeline is None:
        return _unrouted(svc, blob, now)
    if hold is None:  # a quiet period applies to uploads: a burst becomes one run on the newest blob
        hold = source == "blob" and svc.settings.debounce_seconds > 0
    run = Run.for_blob(pipeline.name, blob, source, actor, now, salt)
    with telemetry.bind(pipeline=run.pipeline, run_id=run.run_id):
        finding = preflight_check(svc, pipeline, blob)
        if finding.problem:
            run.transition(
                R.INVALID,
                by=actor,
                reason=finding.problem,
                now=now,
                error={"code": "InvalidTrainingData", "message": finding.problem},
            )
            try:
                svc.store.create(run)
            except RunExists:
                return _duplicate(svc, run)
            log.warning("run %s: invalid training data, no job started: %s", run.run_id, finding.problem)
            telemetry.count("runs.invalid", pipeline=run.pipeline)
            return Outcome(run.run_id, run.status, "invalid")
        if finding.notes:
            run.note(by=actor, reason=f"pre-flight: {'; '.join(finding.notes)}", now=now)
        run.attempts, run.lease_owner, run.lease_until = 1, actor, now + LEASE
        try:
            run = svc.store.create(run)
            log.info("run %s recorded for %s (etag %s, %d bytes)", run.run_id, blob.path, blob.etag, blob.size)
        except RunExists:
            run = take_over(svc, pipeline.name, run.run_id, actor, now)
            if isinstance(run, Outcome):
                return run
        try:
            return admit_and_submit(svc, run, actor, hold=hold)
        except Exception:
            release(svc, run, actor)  # so the redelivery resumes it at once, rather than wait out our lease
            raise


def release(svc: Services, run: Run, actor: str) -> None:
    """Give up this invocation's lease on a run it failed to move on (best effort: a lease left behind
    lapses by itself)."""

    def change(current: Run) -> bool:
        if current.lease_owner != actor or current.status not in (R.REQUESTED, R.SUBMITTED):
            return False
        current.lease_owner = current.lease_until = None
        return True

    try:
        svc.store.update(run.pipeline, run.run_id, change)
    except Exception:  # storage is failing too: the lease lapses by itself
        log.warning("run %s: could not release its lease; it lapses in %s", run.run_id, LEASE)


def _unrouted(svc: Services, blob: BlobRef, now: dt.datetime) -> Outcome:
    prefixes = ", ".join(repr(p.blob_prefix) for p in svc.settings.pipelines)
    reason = f"no pipeline's blob_prefix matches {blob.name!r} (prefixes: {prefixes})"
    if svc.store.record_unrouted(blob, reason, now):
        log.warning("upload %s starts nothing: %s", blob.path, reason)  # once per blob version
    return Outcome("-", "Unrouted", "unrouted")


def _duplicate(svc: Services, run: Run) -> Outcome:
    current = svc.store.get(run.pipeline, run.run_id)
    log.info("run %s: duplicate delivery ignored (status %s)", run.run_id, current.status)
    return Outcome(run.run_id, current.status, "duplicate")


def preflight_check(svc: Services, pipeline: Pipeline, blob: BlobRef):
    """The pipeline's pre-flight checks of this upload (``shared.preflight``), before anything is sent to
    its trainer; what is read of the blob is bounded whatever its size."""
    from shared import preflight

    trainer = svc.trainer(pipeline.name)
    read = preflight.reader(svc.storage, blob.container, blob.name, blob.etag)
    rules = pipeline.preflight or preflight.Rules()
    return preflight.check(blob, rules, trainer.data_extensions, read, trainer.kind.upper())


def retrain(
    svc: Services, blob_name: str | None, *, source: str, actor: str, salt: str = "", pipeline: Pipeline | None = None
) -> Outcome:
    """Retrain ``pipeline`` on a named blob of the training container (one of its uploads), or on its
    newest — through the same idempotent path as uploads (the same blob version is one run, unless
    ``salt`` says otherwise)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    pipeline = pipeline or svc.settings.pipelines[0]
    container = svc.settings.training_container
    if blob_name is None:
        blob_name = newest_training_blob(svc, pipeline)
    owner = svc.settings.route(blob_name)
    if owner is None or owner.name != pipeline.name:
        belongs = f"pipeline {owner.name!r}'s" if owner else "no pipeline's"
        raise NothingToTrain(f"{blob_name!r} is {belongs} data, not pipeline {pipeline.name!r}'s")
    try:
        ref = svc.storage.blob_ref(container, blob_name)
    except ResourceNotFoundError:
        raise NothingToTrain(f"no blob {blob_name!r} in the training container {container!r}") from None
    except HttpResponseError as exc:
        if exc.status_code != 400:  # an outage or a missing permission: may pass, so retried
            raise
        raise NothingToTrain(f"storage cannot address a blob named {blob_name!r}: {exc.reason}") from None
    return start_run_for_blob(svc, ref, source=source, actor=actor, salt=salt, hold=False, pipeline=pipeline)


def newest_training_blob(svc: Services, pipeline: Pipeline | None = None) -> str:
    """The newest training blob of ``pipeline`` (under its prefix, and not claimed by a longer one)."""
    pipeline = pipeline or svc.settings.pipelines[0]
    container = svc.settings.training_container
    extensions = tuple(svc.trainer(pipeline.name).data_extensions)
    blobs = [
        b
        for b in svc.storage.blobs.get_container_client(container).list_blobs(name_starts_with=pipeline.blob_prefix)
        if b.name.lower().endswith(extensions) and b.size and svc.settings.route(b.name) == pipeline
    ]
    if not blobs:
        raise NothingToTrain(
            f"the training container {container!r} has no training data for pipeline {pipeline.name!r}"
        )
    return max(blobs, key=lambda b: (b.last_modified, b.name)).name


def retrain_on_schedule(
    svc: Services, *, actor: str, now: dt.datetime | None = None, pipeline: str | None = None
) -> Outcome | None:
    """A schedule occurrence: retrain the pipeline on its newest training blob unless that version was
    trained already (or always, with ``RETRAIN_ALWAYS``: then one new run per occurrence minute)."""
    now = now or utcnow()
    chosen = svc.settings.pipeline_named(pipeline) if pipeline else svc.settings.pipelines[0]
    try:
        name = newest_training_blob(svc, chosen)
    except NothingToTrain as exc:
        log.info("scheduled retraining: %s", exc)
        return None
    salt = ""
    if svc.settings.retrain_always:
        salt = f"schedule:{now.astimezone(dt.timezone.utc):%Y%m%dT%H%M}"
    else:
        ref = svc.storage.blob_ref(svc.settings.training_container, name)
        existing = svc.store.get(chosen.name, R.run_id_for(chosen.name, ref))
        if existing is not None:
            log.info("scheduled retraining: %s was trained already (run %s)", name, existing.run_id)
            return Outcome(existing.run_id, existing.status, "already_trained")
    return retrain(svc, name, source="timer", actor=actor, salt=salt, pipeline=chosen)


def cancel_run(svc: Services, run_id: str, *, actor: str, reason: str, pipeline: str | None = None) -> Run | None:
    """Cancel a run (and its job, if any); the pipeline moves on to the newest waiting upload."""
    pipeline = pipeline or svc.settings.pipelines[0].name
    run = svc.store.get(pipeline, run_id)
    if run is None or run.ended:
        return run
    if run.job_id:
        svc.trainer(pipeline).cancel(run.job_id)

    def change(current: Run) -> bool:
        if current.ended:
            return False
        current.transition(R.CANCELLED, by=actor, reason=reason)
        return True

    run = svc.store.update(pipeline, run_id, change)
    log.info("run %s: cancelled (%s)", run_id, reason)
    advance_pipeline(svc, pipeline, run_id, actor)
    return run
