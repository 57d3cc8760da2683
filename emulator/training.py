"""What a retraining experiment does: fit a logistic regression, evaluate it on a held-out split.

The trained model (``.ilearner``) is JSON — a safe format, never pickle — and the evaluation is the
Evaluate Model CSV (``Accuracy,Precision,Recall,F-Score,AUC,Average Log Loss,Training Log Loss``).
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

EVALUATION_COLUMNS = ("Accuracy", "Precision", "Recall", "F-Score", "AUC", "Average Log Loss", "Training Log Loss")
MODEL_FORMAT = "azureml-emulator/logistic-regression"


class ModuleError(Exception):
    """A module of the experiment failed; BES reports the job Failed with this text as ``Details``."""


def read_table(text: str, delimiter: str = ",") -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ModuleError("Error 0008: The dataset is empty or has no header row.")
    header = [h.strip() for h in rows[0]]
    try:
        values = np.array([[float(cell) for cell in r] for r in rows[1:]], dtype=float)
    except ValueError as exc:
        raise ModuleError(f"Error 0010: Input dataset has non-numeric values ({exc}).") from None
    if values.ndim != 2 or values.shape[1] != len(header):
        raise ModuleError("Error 0013: Rows have a different number of columns than the header.")
    return header, values


def train(
    text: str, *, label: str = "label", delimiter: str = ",", seed: int = 42, test_fraction: float = 0.25
) -> tuple[dict, dict[str, float]]:
    """Train on the CSV ``text``; return the model document and the evaluation metrics."""
    header, values = read_table(text, delimiter)
    if label not in header:
        raise ModuleError(f'Error 0001: Column with name or index "{label}" not found.')
    y = values[:, header.index(label)]
    if not np.isin(y, (0.0, 1.0)).all():
        raise ModuleError(f'Error 0056: Column "{label}" must hold binary labels 0/1.')
    features = [h for h in header if h != label]
    x = values[:, [header.index(f) for f in features]]
    if len(y) < 20:
        raise ModuleError("Error 0017: Too few rows to train and evaluate (need at least 20).")

    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(5, int(len(y) * test_fraction))
    test, fit = order[:n_test], order[n_test:]
    mean, scale = x[fit].mean(axis=0), x[fit].std(axis=0)
    scale[scale == 0] = 1.0
    weights, bias = _fit(((x[fit] - mean) / scale), y[fit])
    p_fit = _predict((x[fit] - mean) / scale, weights, bias)
    p_test = _predict((x[test] - mean) / scale, weights, bias)
    metrics = evaluate(y[test], p_test)
    metrics["Training Log Loss"] = _log_loss(y[fit], p_fit)
    model = {
        "format": MODEL_FORMAT,
        "version": 1,
        "label": label,
        "features": features,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "weights": weights.tolist(),
        "bias": float(bias),
        "rows": len(y),
    }
    return model, metrics


def _fit(x: np.ndarray, y: np.ndarray, iterations: int = 400, rate: float = 0.5, l2: float = 1e-3):
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(iterations):
        p = _predict(x, weights, bias)
        gradient = p - y
        weights -= rate * (x.T @ gradient / len(y) + l2 * weights)
        bias -= rate * gradient.mean()
    return weights, bias


def _predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ weights + bias, -30, 30)))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, ties averaged."""
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    predicted = (p >= threshold).astype(float)
    tp = float(((predicted == 1) & (y == 1)).sum())
    fp = float(((predicted == 1) & (y == 0)).sum())
    fn = float(((predicted == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "Accuracy": float((predicted == y).mean()),
        "Precision": precision,
        "Recall": recall,
        "F-Score": f_score,
        "AUC": auc(y, p),
        "Average Log Loss": _log_loss(y, p),
    }


def evaluation_csv(metrics: dict[str, float]) -> str:
    row = ["" if math.isnan(metrics.get(c, float("nan"))) else f"{metrics[c]:.6f}" for c in EVALUATION_COLUMNS]
    return ",".join(EVALUATION_COLUMNS) + "\n" + ",".join(row) + "\n"


def model_bytes(model: dict) -> bytes:
    return json.dumps(model, indent=1).encode("utf-8")


def load_model(data: bytes) -> dict:
    """Parse an ``.ilearner`` written by :func:`train`; raise :class:`ModuleError` if it is not one."""
    try:
        model = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ModuleError("The trained model is not in a format this service can load.") from None
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise ModuleError("The trained model is not in a format this service can load.")
    return model


def score(model: dict, rows: list[dict[str, float]]) -> list[float]:
    """Probability of the positive class for each row (a mapping of feature name to value)."""
    x = np.array([[float(r[f]) for f in model["features"]] for r in rows], dtype=float)
    x = (x - np.array(model["mean"])) / np.array(model["scale"])
    return _predict(x, np.array(model["weights"]), model["bias"]).tolist()
