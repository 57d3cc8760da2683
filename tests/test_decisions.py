"""The run's decisions as pure functions: what a job's state means at a given time, and whether an
upload takes its pipeline's slot. No storage, no service: these run in milliseconds."""

import datetime as dt

import pytest

from shared import decisions as D
from shared.training import JobState

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
BEFORE, AFTER = NOW + dt.timedelta(minutes=5), NOW - dt.timedelta(minutes=5)  # deadlines


@pytest.mark.parametrize(
    ("state", "deadline", "action"),
    [
        ("NotStarted", BEFORE, D.WAIT),
        ("Running", BEFORE, D.WAIT),
        ("Running", AFTER, D.TIME_OUT),
        ("NotStarted", AFTER, D.TIME_OUT),
        ("Running", NOW, D.TIME_OUT),  # the deadline itself is past it
        ("Cancelled", BEFORE, D.ENDED_OUTSIDE),
        ("Finished", BEFORE, D.JUDGE),
        ("Finished", AFTER, D.JUDGE),  # a job that finished is judged, however late the poll
        ("Failed", BEFORE, D.FAIL),
    ],
)
def test_what_a_job_state_means_for_its_run(state, deadline, action):
    assert D.job_verdict(JobState(state), now=NOW, deadline=deadline).action == action


def test_a_failed_job_is_resubmitted_only_while_attempts_remain():
    failed = JobState("Failed", "module error")
    assert (
        D.job_verdict(failed, now=NOW, deadline=BEFORE, resubmit=True, attempts=2, max_attempts=3).action == D.RESUBMIT
    )
    assert D.job_verdict(failed, now=NOW, deadline=BEFORE, resubmit=True, attempts=3, max_attempts=3).action == D.FAIL
    assert D.job_verdict(failed, now=NOW, deadline=BEFORE, resubmit=False, attempts=1, max_attempts=3).action == D.FAIL


@pytest.mark.parametrize(
    ("transient", "deadline", "action"),
    [(True, BEFORE, D.RETRY), (True, AFTER, D.TIME_OUT), (False, BEFORE, D.UNREACHABLE), (False, AFTER, D.UNREACHABLE)],
)
def test_a_status_that_cannot_be_read_is_retried_until_the_deadline_unless_it_never_will_be(
    transient, deadline, action
):
    assert D.job_verdict(None, now=NOW, deadline=deadline, check_transient=transient).action == action


def test_an_unknown_state_is_a_bug_not_a_guess():
    with pytest.raises(ValueError, match="not a job state"):
        D.job_verdict(JobState("Paused"), now=NOW, deadline=BEFORE)


def test_a_failed_cancel_is_retried_while_the_job_could_still_do_harm():
    grace = dt.timedelta(minutes=30)
    assert D.retry_cancel(transient=True, now=NOW, deadline=AFTER, grace=grace)
    assert not D.retry_cancel(transient=True, now=NOW, deadline=NOW - grace, grace=grace)
    assert not D.retry_cancel(transient=False, now=NOW, deadline=AFTER, grace=grace)


def admit(**slot):
    defaults = {"run_id": "new", "key": "2", "active": None, "active_key": None, "waiting": None, "waiting_key": None}
    return D.admission(**{**defaults, **slot})


def test_a_free_slot_is_taken():
    assert admit() == D.Admission(D.ACTIVE, write=("new", None, None))


def test_a_free_slot_is_not_taken_during_a_quiet_period_the_upload_waits():
    assert admit(hold=True) == D.Admission(D.WAITING, write=(None, "new", "2"))


def test_behind_an_active_run_newer_data_waits_and_displaces_an_older_waiter():
    choice = admit(active="a", active_key="1", waiting="w", waiting_key="1.5")
    assert choice == D.Admission(D.WAITING, "w", write=("a", "new", "2"))


def test_data_older_than_the_active_run_or_the_waiter_is_superseded():
    assert admit(active="a", active_key="3") == D.Admission(D.SUPERSEDED, "a")
    assert admit(active="a", active_key="1", waiting="w", waiting_key="3") == D.Admission(D.SUPERSEDED, "w")


def test_a_run_already_in_the_slot_or_waiting_changes_nothing():
    assert admit(active="new", active_key="2") == D.Admission(D.ACTIVE)
    assert admit(active="a", active_key="1", waiting="new", waiting_key="2") == D.Admission(D.WAITING)


# --- staged rollouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traffic", "share", "expected"),
    [
        ({"blue": 100}, 10, {"blue": 90, "green": 10}),
        ({"a": 50, "b": 50}, 25, {"a": 38, "b": 37, "green": 25}),  # largest remainder, then name
        ({"a": 70, "b": 30}, 33, {"a": 47, "b": 20, "green": 33}),
        ({"a": 99, "b": 1}, 50, {"a": 50, "green": 50}),  # a share that rounds to 0 is dropped
        ({}, 10, {"green": 100}),  # nothing live: nothing to split with
        ({"blue": 0}, 10, {"green": 100}),
    ],
)
def test_a_canary_share_leaves_the_rest_in_proportion_and_sums_to_exactly_100(traffic, share, expected):
    result = D.split(traffic, "green", share)
    assert result == expected and sum(result.values()) == 100


def test_each_stage_sets_the_maps_it_should_and_never_both_on_one_deployment():
    previous = {"traffic": {"blue": 100}, "mirror": {"old": 5}}
    assert D.stage_maps("shadow", previous, "green", 20, 10) == ({"blue": 100}, {"green": 20})
    assert D.stage_maps("canary", previous, "green", 20, 10) == ({"blue": 90, "green": 10}, {})
    assert D.stage_maps("promote", previous, "green", 20, 10) == ({"green": 100}, {})
    assert D.stage_maps("rollback", previous, "green", 20, 10) == ({"blue": 100}, {"old": 5})
    with pytest.raises(ValueError, match="does not change traffic"):
        D.stage_maps("probe", previous, "green", 20, 10)


@pytest.mark.parametrize(
    ("stage", "kind", "has_live", "mirror", "canary", "expected"),
    [
        ("create", "deploy", True, 20, 10, "probe"),
        ("probe", "deploy", True, 20, 10, "shadow"),
        ("probe", "deploy", True, 0, 10, "canary"),
        ("probe", "deploy", True, 0, 0, "promote"),
        ("shadow", "deploy", True, 20, 0, "promote"),
        ("probe", "deploy", False, 20, 10, "promote"),  # a first deploy: all traffic once healthy
        ("promote", "deploy", True, 20, 10, "retire"),
        ("retire", "deploy", True, 20, 10, "done"),
        ("create", "rollback", True, 20, 10, "promote"),  # back to a running deployment: no probing stages
        ("create", "forced deploy", True, 0, 10, "probe"),
    ],
)
def test_the_stage_after_each_stage(stage, kind, has_live, mirror, canary, expected):
    assert D.after(stage, kind=kind, has_live=has_live, mirror_percent=mirror, canary_percent=canary) == expected


def test_the_live_deployment_and_the_probe_verdict():
    assert D.live_deployment({"a": 40, "b": 60}) == "b" and D.live_deployment({"b": 50, "a": 50}) == "a"
    assert D.live_deployment({}) is None and D.live_deployment({"a": 0}) is None
    assert D.probe_verdict(0, 20, 0.0) == (0.0, True) and D.probe_verdict(1, 20, 0.0) == (0.05, False)
    assert D.probe_verdict(2, 20, 0.1) == (0.1, True) and D.probe_verdict(0, 0, 0.0) == (0.0, True)


def test_retire_deletes_the_oldest_beyond_keep_never_a_protected_one():
    deployments = [("a", "2026-01"), ("b", "2026-02"), ("c", "2026-03"), ("d", "2026-04")]
    assert D.retire(deployments, 2, {"d", "c"}) == ["a", "b"]
    assert D.retire(deployments, 2, {"d", "A"}) == ["b", "c"]  # names compared case-insensitively
    assert D.retire(deployments, 3, {"d", "c"}) == ["a"]
    assert D.retire(deployments, 4, set()) == [] and D.retire(deployments[:2], 2, set()) == []
    assert D.retire(deployments, 2, {"a", "b", "c", "d"}) == []  # fewer than keep is better than a wrong delete
