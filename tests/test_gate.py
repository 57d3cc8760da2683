"""The evaluation gate: pure decisions, and the Evaluate Model CSV parser."""

import pytest

from shared.gate import EvaluationError, judge, metric_value, parse_evaluation


def test_the_first_model_on_a_target_needs_only_the_floor():
    assert judge("AUC", 0.71, champion=None, floor=0.7, min_improvement=0.0).approved
    decision = judge("AUC", 0.69, champion=None, floor=0.7, min_improvement=0.0)
    assert not decision.approved and "minimum" in decision.reason


@pytest.mark.parametrize(
    ("value", "champion", "improvement", "approved"),
    [
        (0.80, 0.79, 0.0, True),
        (0.79, 0.79, 0.0, False),  # equal is not better
        (0.78, 0.79, 0.0, False),
        (0.80, 0.79, 0.02, False),  # better, but not by the margin asked for
        (0.82, 0.79, 0.02, True),
        (0.785, 0.79, -0.01, True),  # a tolerated dip
    ],
)
def test_bigger_is_better_metrics_must_beat_the_live_model(value, champion, improvement, approved):
    decision = judge("AUC", value, champion=champion, floor=None, min_improvement=improvement)
    assert decision.approved is approved
    assert (decision.value, decision.champion) == (value, champion)


def test_loss_metrics_are_judged_smaller_is_better_including_the_floor():
    assert judge("Average Log Loss", 0.40, champion=0.45, floor=None, min_improvement=0.0).approved
    assert not judge("Average Log Loss", 0.50, champion=0.45, floor=None, min_improvement=0.0).approved
    rejected = judge("Average Log Loss", 0.9, champion=None, floor=0.7, min_improvement=0.0)
    assert not rejected.approved and "maximum" in rejected.reason


def test_the_evaluation_csv_is_parsed_and_looked_up_case_insensitively():
    metrics = parse_evaluation(
        "\ufeffAccuracy,Precision,Recall,F-Score,AUC,Average Log Loss,Training Log Loss\n"
        "0.81,0.8,0.7,0.75,0.88,0.41,0.39\n0.5,0.5,0.5,0.5,0.5,0.7,0.7\n"
    )
    assert metric_value(metrics, "auc") == 0.88  # the first row scores the trained model
    assert metric_value(metrics, "F-Score") == 0.75


@pytest.mark.parametrize("text", ["", "AUC\n", "Accuracy,AUC\n0.8,not-a-number\n"])
def test_an_evaluation_without_the_metric_cannot_be_judged(text):
    with pytest.raises(EvaluationError):
        metric_value(parse_evaluation(text), "AUC")


def test_the_gate_decides_per_target_against_what_is_live_there():
    from shared.gate import Gate, decide

    verdict = decide(Gate("AUC", 0.7, 0.0), 0.8, {"classic": None, "arm": 0.85})
    assert verdict.status == "Approved"
    assert verdict.decisions["classic"]["approved"] and not verdict.decisions["arm"]["approved"]
    assert verdict.reason.startswith("classic: AUC 0.8000; no model is live yet; arm: ")


def test_the_gate_rejects_when_no_target_gains_and_finishes_when_there_is_no_target():
    from shared.gate import Gate, decide

    assert decide(Gate("AUC", 0.9), 0.8, {"arm": None}).status == "Rejected"
    finished = decide(Gate("AUC"), 0.8, {})
    assert (finished.status, finished.decisions) == ("Finished", {})


def test_one_metric_lookup_matches_names_case_insensitively():
    from shared.gate import metric

    assert metric({"Average Log Loss": 0.3}, "average log loss") == 0.3
    assert metric({"AUC": 0.8}, "Accuracy") is None and metric(None, "AUC") is None


def test_with_no_deploy_target_the_floor_still_judges():
    from shared.gate import Gate, decide

    assert decide(Gate("AUC", 0.6, 0.0), 0.71, {}).status == "Finished"
    rejected = decide(Gate("AUC", 0.6, 0.0), 0.52, {})
    assert rejected.status == "Rejected" and "misses the minimum" in rejected.reason
    assert decide(Gate("AUC", None, 0.0), 0.1, {}).status == "Finished"  # no floor: nothing to miss
