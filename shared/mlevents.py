"""Azure ML workspace events from Event Grid: a nudge to check one job now, never a source of truth.

``RunCompleted`` and ``RunStatusChanged`` name a run (``data.runId``, also the subject's last
segment), which is an Azure ML job's name. The run whose job it is gets checked at once through the
same path the timer's poll uses, so a finished job moves on in seconds instead of up to one poll
interval. Both envelopes (Event Grid and CloudEvents 1.0) are read with keys in any casing (the
published examples mix ``specversion``/``specVersion`` and camelCase/PascalCase data). A duplicate, a
late or an out-of-order event, or one for a job we do not know, changes nothing: the poll decides
from the job's state, not from the event. See §7 of ``../shared/reference/azure-ml-v2-protocol.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from shared.http import ci_get

log = logging.getLogger(__name__)

NUDGING = ("Microsoft.MachineLearningServices.RunCompleted", "Microsoft.MachineLearningServices.RunStatusChanged")


@dataclass(frozen=True)
class JobEvent:
    event_id: str
    event_type: str | None
    job: str
    status: str | None  # RunStatusChanged's runStatus


def parse(event: dict) -> JobEvent | None:
    """The job an event is about, or ``None`` when it is not a run event we act on. Pure."""
    if not isinstance(event, dict):
        return None
    event_type = ci_get(event, "eventType") or ci_get(event, "type")
    if event_type is not None and str(event_type).lower() not in {t.lower() for t in NUDGING}:
        return None  # ModelRegistered, DatasetDriftDetected, ...: not ours to act on
    data = ci_get(event, "data")
    job = ci_get(data, "runId") if isinstance(data, dict) else None
    if not job:
        subject = str(ci_get(event, "subject") or "")
        head, _, tail = subject.rpartition("/runs/")
        job = tail if head.startswith("experiments/") else None
    if not isinstance(job, str) or not job or len(job) > 255:
        return None
    status = ci_get(data, "runStatus") if isinstance(data, dict) else None
    return JobEvent(str(ci_get(event, "id") or ""), event_type, job, str(status) if status is not None else None)


def from_binding(event) -> dict:
    """The event as the host's binding gave it (``func.EventGridEvent`` or ``func.CloudEvent``), as a dict."""
    if isinstance(event, dict):
        return event
    names = ("id", "topic", "source", "subject", "event_type", "type", "data_version", "specversion")
    found = {name: getattr(event, name, None) for name in names}
    body = {
        "id": found["id"],
        "subject": found["subject"],
        "eventType": found["event_type"] or found["type"],
        "source": found["topic"] or found["source"],
    }
    getter = getattr(event, "get_json", None)
    body["data"] = getter() if callable(getter) else getattr(event, "data", None)
    return body


def nudge(svc, event: dict, *, actor: str, now: dt.datetime | None = None) -> str:
    """Check the job an event names, if it is a pipeline's active run's job, as the poll would."""
    from shared import poll
    from shared import runs as R

    parsed = parse(event)
    if parsed is None:
        return "ignored: not a run event"
    for slot in svc.store.slots():
        if not slot.active_run or svc.settings.pipeline_named(slot.pipeline) is None:
            continue  # only a configured pipeline's active run, as the poll reads them
        run = svc.store.get(slot.pipeline, slot.active_run)
        if run is None or run.job_id != parsed.job:
            continue
        outcome = poll.poll_pipeline(svc, slot, actor, now or R.utcnow())  # judged and handed on, as a tick does
        log.info("event %s: job %s of run %s checked: %s", parsed.event_id, parsed.job, run.run_id, outcome)
        return f"checked run {run.run_id}: {outcome.action if outcome else 'nothing to do'}"
    return f"ignored: job {parsed.job} is no active run's"
