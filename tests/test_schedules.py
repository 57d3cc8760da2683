"""Retraining on a schedule, and the quiet period that turns a burst of uploads into one run."""

import datetime as dt
import importlib

import pytest

from shared import poll, workflow
from shared import runs as R
from shared.settings import Settings
from tests.conftest import jobs, upload


def test_the_schedule_function_exists_only_when_a_schedule_is_set(monkeypatch):
    import function_app
    from localdev.runner import index

    try:
        monkeypatch.setenv("RETRAIN_SCHEDULE", "0 30 2 * * *")
        with_schedule = importlib.reload(function_app)
        functions = {f.get_function_name(): f for f in index(with_schedule.app)}
        assert functions["retrain_on_schedule"].get_dict_repr()["bindings"][0]["schedule"] == "0 30 2 * * *"
        monkeypatch.setenv("RETRAIN_SCHEDULE", "off")
        without = importlib.reload(function_app)
        assert "retrain_on_schedule" not in {f.get_function_name() for f in index(without.app)}
    finally:
        monkeypatch.delenv("RETRAIN_SCHEDULE")
        importlib.reload(function_app)


def test_a_bad_retrain_schedule_is_a_settings_error(env):
    from shared.settings import SettingsError

    with pytest.raises(SettingsError, match="RETRAIN_SCHEDULE"):
        Settings.from_env({**env, "RETRAIN_SCHEDULE": "0 2 * * *"})


def test_a_scheduled_retraining_trains_the_newest_data_once(svc, fresh_emulator):
    upload(svc, "old.csv")
    import time

    time.sleep(1.1)
    upload(svc, "new.csv")
    first = workflow.retrain_on_schedule(svc, actor="timer-retrain/1")
    run = svc.store.get("default", first.run_id)
    assert (run.blob_name, run.source, first.action) == ("new.csv", "timer", "started")
    workflow.cancel_run(svc, run.run_id, actor="test", reason="make room")
    again = workflow.retrain_on_schedule(svc, actor="timer-retrain/2")
    assert (again.run_id, again.action) == (first.run_id, "already_trained")
    assert len(jobs(fresh_emulator)) == 1


def test_retrain_always_starts_a_new_run_per_occurrence(env, fresh_emulator):
    svc = workflow.build_services(Settings.from_env({**env, "RETRAIN_ALWAYS": "true"}))
    svc.storage.ensure_container(svc.settings.training_container)
    upload(svc, "data.csv")
    noon = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
    first = workflow.retrain_on_schedule(svc, actor="t/1", now=noon)
    workflow.cancel_run(svc, first.run_id, actor="test", reason="make room")
    again = workflow.retrain_on_schedule(svc, actor="t/1b", now=noon + dt.timedelta(seconds=20))
    assert again.run_id == first.run_id  # the same occurrence delivered twice is one run
    later = workflow.retrain_on_schedule(svc, actor="t/2", now=noon + dt.timedelta(days=1))
    assert later.run_id != first.run_id and later.action == "started"


def test_nothing_to_train_is_not_an_error(svc):
    assert workflow.retrain_on_schedule(svc, actor="t") is None


def test_a_burst_of_uploads_in_the_quiet_period_becomes_one_run_on_the_newest(env, fresh_emulator):
    # GIVEN a 30 s quiet period
    svc = workflow.build_services(Settings.from_env({**env, "DEBOUNCE_SECONDS": "30"}))
    svc.storage.ensure_container(svc.settings.training_container)
    # WHEN five uploads arrive in a burst
    outcomes = [
        workflow.start_run_for_blob(svc, upload(svc, f"part-{i}.csv"), source="blob", actor=f"b/{i}") for i in range(5)
    ]
    # THEN none starts yet; the newest waits and the others are superseded by the next one
    assert [o.action for o in outcomes] == ["waiting"] * 5
    assert [svc.store.get("default", o.run_id).status for o in outcomes] == [R.SUPERSEDED] * 4 + [R.WAITING]
    assert jobs(fresh_emulator) == []
    newest = svc.store.get("default", outcomes[-1].run_id)
    # WHEN the poll runs inside the quiet period, nothing starts; after it, the newest starts
    assert [o.action for o in poll.poll(svc, actor="p/1", now=newest.created_at + dt.timedelta(seconds=10))] == [
        "quiet_period"
    ]
    assert jobs(fresh_emulator) == []
    [started] = poll.poll(svc, actor="p/2", now=newest.created_at + dt.timedelta(seconds=31))
    assert (started.run_id, started.action) == (newest.run_id, "started")
    assert svc.store.get("default", newest.run_id).attempts == 1
    assert len(jobs(fresh_emulator)) == 1


def test_each_pipeline_with_a_schedule_gets_a_timer_function_of_its_own(monkeypatch):
    import json

    import function_app
    from localdev.runner import index

    pipelines = [
        {"name": name, "blob_prefix": f"{name}/", "trainer": {"kind": "bes"}, **extra}
        for name, extra in (
            ("census", {"schedule": "0 0 3 * * *"}),
            ("churn-eu", {"schedule": "0 30 4 * * 1"}),
            ("fraud", {}),
        )
    ]
    try:
        monkeypatch.setenv("PIPELINES", json.dumps(pipelines))
        reloaded = importlib.reload(function_app)
        timers = {
            f.get_function_name(): f.get_dict_repr()["bindings"][0]["schedule"]
            for f in index(reloaded.app)
            if f.get_function_name().startswith("retrain_on_schedule")
        }
        assert timers == {"retrain_on_schedule_census": "0 0 3 * * *", "retrain_on_schedule_churn_eu": "0 30 4 * * 1"}
    finally:
        monkeypatch.delenv("PIPELINES")
        importlib.reload(function_app)
