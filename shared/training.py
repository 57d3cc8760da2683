"""The seam between the workflow and a training service: what every trainer kind offers.

The workflow, the poll and the commands speak only this: submit a job for one training blob, start
it, read its state, cancel it, read the trained model's metrics. BES (``shared/bes.py``) is one
trainer; the registry (``shared/kinds.py``) picks the implementation by the pipeline's ``kind``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

# The states a job can be in, as every trainer reports them.
NOT_STARTED, RUNNING, FINISHED, FAILED, CANCELLED = "NotStarted", "Running", "Finished", "Failed", "Cancelled"


@dataclass(frozen=True)
class Submission:
    """A job created for a run: its id, and where its outputs will be (``model``, ``evaluation``)."""

    job_id: str
    outputs: dict[str, str]


@dataclass(frozen=True)
class JobState:
    """A job's state: one of the five states above, the service's details (a failed job's reason), and
    what it reports about its outputs (recorded, never trusted for deployment)."""

    status: str
    details: str | None = None
    reported: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in (NOT_STARTED, RUNNING)


class Trainer(Protocol):
    """One pipeline's training service. Every method raises the kind's ``ServiceError`` subclass;
    ``transient`` says whether trying again later can help."""

    kind: str

    def submit(self, run: Any, now: dt.datetime) -> Submission:
        """Create (not start) a job that trains on the run's blob; it is never retried by the HTTP layer."""

    def start(self, job_id: str) -> None:
        """Start a created job; a job some earlier attempt started already is fine."""

    def status(self, job_id: str) -> JobState:
        """The job's state now."""

    def cancel(self, job_id: str) -> None:
        """Cancel the job; one that is gone or ended already is fine."""

    def evaluation(self, run: Any) -> dict[str, float]:
        """The trained model's metrics; raises :class:`shared.gate.EvaluationError` (with a ``code``)
        when they cannot be read or judged."""

    def probe(self) -> str:
        """Reach the service without changing anything; what was found (for ``python -m shared check``)."""

    def preview(self, run: Any, now: dt.datetime) -> tuple[str, dict]:
        """What ``submit`` would send for ``run``, secrets redacted by the caller."""

    # Optional: a trainer with a model registry also has
    # ``register(run, metrics, metric, value) -> dict`` (called for a run the gate passes, before its
    # verdict is recorded; idempotent; returns what the run records as ``model``: name, version, id).
