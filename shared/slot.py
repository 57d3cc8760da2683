"""A pipeline's single training slot: who holds it, who waits for it, and handing it on.

One training at a time per pipeline. A run holds the slot from Requested until it is handed off for
deployment or ends; while it does, only the newest upload waits, the older ones are Superseded. The
decisions are :func:`shared.decisions.admission`; this module reads and writes the slot around them,
ETag-conditionally, and moves the runs concerned.
"""

from __future__ import annotations

import logging

from shared import decisions
from shared import runs as R
from shared.http import ServiceError
from shared.runs import Outcome, RetryLater, Run
from shared.store import StaleError, retry_on_conflict

log = logging.getLogger(__name__)


def admit(svc, run: Run, actor: str, *, hold: bool = False) -> tuple[str, str | None]:
    """Claim the pipeline's slot for ``run``: ``active``, ``waiting`` (displacing an older waiter), or
    ``superseded`` (by newer data). Returns the decision and the other run it concerns."""
    store = svc.store

    def attempt() -> tuple[str, str | None]:
        slot = store.get_slot(run.pipeline)
        active_key = None
        if slot.active_run and slot.active_run != run.run_id:
            active = store.get(run.pipeline, slot.active_run)
            if active is None or not active.holds_slot:
                # The slot outlived its run (a crash between ending it and moving on): move it on first
                # (which starts the waiter it passes to), then decide again.
                from shared.submission import advance_pipeline  # submission builds on this module

                try:
                    advance_pipeline(svc, run.pipeline, slot.active_run, actor)
                except (ServiceError, RetryLater) as exc:  # the promoted run's failure is recorded on it
                    log.warning(
                        "pipeline %s: the run promoted while healing the slot will retry: %s", run.pipeline, exc
                    )
                raise StaleError(run.pipeline)
            active_key = active.order_key
        choice = decisions.admission(
            run_id=run.run_id,
            key=run.order_key,
            active=slot.active_run,
            active_key=active_key,
            waiting=slot.waiting_run,
            waiting_key=slot.waiting_key,
            hold=hold,
        )
        if choice.write is not None:
            slot.active_run, slot.waiting_run, slot.waiting_key = choice.write
            store.save_slot(slot)
        return choice.decision, choice.other

    return retry_on_conflict(attempt, f"pipeline {run.pipeline}: slot")


def pass_slot(svc, pipeline: str, expected_active: str | None) -> str | None:
    """Hand the slot held by ``expected_active`` (``None``: a free slot) to the newest waiting run, and
    return that run's id; ``None`` if someone else moved the slot on, or nobody waits."""
    moved = []

    def change(slot) -> bool:
        moved.clear()
        if slot.active_run != expected_active or (expected_active is None and not slot.waiting_run):
            return False
        moved.append(slot.waiting_run)
        slot.active_run, slot.waiting_run, slot.waiting_key = slot.waiting_run, None, None
        return True

    svc.store.update_slot(pipeline, change)
    return moved[0] if moved else None


def settle(svc, run: Run, actor: str, status: str, reason: str, **changes) -> Outcome:
    """Move a run this invocation holds (Requested, leased) to a resting state: Waiting or Superseded."""

    def change(current: Run) -> bool:
        if current.status != R.REQUESTED or current.lease_owner != actor:
            return False  # promoted or taken over meanwhile: the new holder decides
        current.transition(status, by=actor, reason=reason, lease_owner=None, lease_until=None, **changes)
        return True

    current = svc.store.update(run.pipeline, run.run_id, change)
    log.info("run %s: %s (%s)", run.run_id, current.status, reason)
    action = {R.WAITING: "waiting", R.SUPERSEDED: "superseded"}.get(current.status, "duplicate")
    return Outcome(run.run_id, current.status, action)


def supersede(svc, pipeline: str, run_id: str, *, by_run: str, actor: str) -> None:
    """A newer upload displaced ``run_id`` from waiting: it will never train."""

    def change(current: Run) -> bool:
        if current.status not in (R.WAITING, R.REQUESTED) or current.job_id:
            return False
        current.transition(R.SUPERSEDED, by=actor, reason=f"newer data arrived ({by_run})", superseded_by=by_run)
        return True

    svc.store.update(pipeline, run_id, change)
    log.info("run %s: superseded by %s", run_id, by_run)
