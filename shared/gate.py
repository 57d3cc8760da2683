"""The evaluation gate: does a newly trained model beat the model that is live on a target? Pure.

A rejected model is a decision, not an error: the run records both metrics and ends Rejected.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

# Metrics for which a smaller value is better; every other metric (AUC, Accuracy, ...) is bigger-better.
LOWER_IS_BETTER = frozenset(
    {
        "average log loss",
        "training log loss",
        "mean absolute error",
        "root mean squared error",
        "relative absolute error",
        "relative squared error",
    }
)


@dataclass(frozen=True)
class Gate:
    """One pipeline's gate: the metric judged, its worst acceptable value, the improvement required."""

    metric: str = "AUC"
    min: float | None = None
    min_improvement: float = 0.0


class EvaluationError(ValueError):
    """The evaluation cannot be judged; ``code`` says why (``EvaluationMissing``, ``EvaluationInvalid``)."""

    def __init__(self, message: str, code: str = "EvaluationInvalid") -> None:
        super().__init__(message)
        self.code = code


def parse_evaluation(text: str) -> dict[str, float]:
    """Read the Evaluate Model CSV (header + first data row, which scores the trained model).

    Non-numeric cells are skipped; a metric is looked up case-insensitively by :func:`metric_value`.
    """
    rows = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise EvaluationError("the evaluation output has no data row")
    metrics = {}
    for name, cell in zip(rows[0], rows[1], strict=False):
        try:
            value = float(cell)
        except ValueError:
            continue
        if math.isfinite(value):
            metrics[name.strip()] = value
    return metrics


def metric(metrics: Mapping[str, float] | None, name: str) -> float | None:
    """The value of metric ``name`` (matched case-insensitively: services and sources vary), or ``None``."""
    return next((v for k, v in (metrics or {}).items() if k.lower() == name.lower()), None)


def metric_value(metrics: Mapping[str, float], name: str) -> float:
    value = metric(metrics, name)
    if value is None:
        raise EvaluationError(f"the evaluation output has no numeric {name!r} column (it has: {', '.join(metrics)})")
    return value


@dataclass(frozen=True)
class Decision:
    approved: bool
    metric: str
    value: float
    champion: float | None
    reason: str

    def as_record(self) -> dict:
        return asdict(self)


def judge(
    metric: str, value: float, *, champion: float | None, floor: float | None, min_improvement: float
) -> Decision:
    """Approve ``value`` if it passes the absolute ``floor`` and beats ``champion`` (the live model's
    value on this target, if any) by at least ``min_improvement`` in the metric's better direction."""
    lower = metric.lower() in LOWER_IS_BETTER
    if floor is not None and (value > floor if lower else value < floor):
        bound = "maximum" if lower else "minimum"
        return Decision(False, metric, value, champion, f"{metric} {value:.4f} misses the {bound} {floor:.4f}")
    if champion is None:
        return Decision(True, metric, value, None, f"{metric} {value:.4f}; no model is live yet")
    improvement = champion - value if lower else value - champion
    # 0 means "strictly better"; a positive margin demands that much; a negative one tolerates a dip.
    approved = improvement > 0 if min_improvement == 0 else improvement >= min_improvement
    if approved:
        return Decision(
            True,
            metric,
            value,
            champion,
            f"{metric} {value:.4f} vs live {champion:.4f}: improves by {improvement:+.4f}",
        )
    return Decision(
        False,
        metric,
        value,
        champion,
        f"{metric} {value:.4f} vs live {champion:.4f}: improvement {improvement:+.4f} is below "
        f"the required {min_improvement:g}"
        if min_improvement
        else f"{metric} {value:.4f} is not better than the live {champion:.4f}",
    )


@dataclass(frozen=True)
class Verdict:
    """What the gate decides for a trained run: ``Finished`` (no target), ``Approved`` (better than
    what is live on some target) or ``Rejected``, why, and the decision per target."""

    status: str
    reason: str
    decisions: dict[str, dict]


def decide(gate: Gate, value: float, champions: Mapping[str, float | None]) -> Verdict:
    """Judge ``value`` against the live model of each target (``champions``: target -> its live value)."""
    if not champions:  # nothing to deploy to: the floor still judges (a model registry keeps only what passes)
        floor = judge(gate.metric, value, champion=None, floor=gate.min, min_improvement=gate.min_improvement)
        if not floor.approved:
            return Verdict("Rejected", f"{floor.reason}; no deploy target is configured", {})
        return Verdict("Finished", f"{gate.metric} {value:.4f}; no deploy target is configured", {})
    decisions = {
        name: judge(gate.metric, value, champion=live, floor=gate.min, min_improvement=gate.min_improvement).as_record()
        for name, live in champions.items()
    }
    reason = "; ".join(f"{name}: {d['reason']}" for name, d in decisions.items())
    return Verdict("Approved" if any(d["approved"] for d in decisions.values()) else "Rejected", reason, decisions)
