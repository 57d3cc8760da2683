"""Every log line of a run's life names the run (and its job and target where it has one), and the
counters count what happened."""

import logging

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from emulator import sample_data
from shared import commands, poll, telemetry, workflow
from tests.conftest import upload
from tests.loop import drain_commands, services, target_settings, wait_job

READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))  # the API's global: set once, here


def counted() -> dict[str, int]:
    data = READER.get_metrics_data()
    totals: dict[str, int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                totals[metric.name] = sum(point.value for point in metric.data.data_points)
    return totals


@pytest.fixture
def loop(env, fresh_emulator, monkeypatch):
    return services(target_settings(env, fresh_emulator), monkeypatch)


def test_each_line_of_a_runs_life_carries_its_ids_and_the_counters_count(loop, caplog):
    before = counted()
    caplog.set_level(logging.INFO, logger="shared")
    good = workflow.start_run_for_blob(
        loop,
        upload(loop, "good.csv", sample_data.generate(800, seed=8, label_noise=0.1).encode()),
        source="blob",
        actor="blob-trigger/t",
    )
    wait_job(loop, good.run_id)
    poll.poll(loop, actor="timer-poll/t")
    drain_commands(loop)
    bad = workflow.start_run_for_blob(
        loop,
        upload(loop, "bad.csv", sample_data.generate(800, seed=8, label_noise=0.45).encode()),
        source="blob",
        actor="blob-trigger/t",
    )
    wait_job(loop, bad.run_id)
    poll.poll(loop, actor="timer-poll/t")
    commands.handle(loop, b"{oops", message_id="m-x", dequeue_count=1, actor="queue/m-x")
    # THEN every line about a run carries that run's id, job lines their job, deploy lines their target
    records = [r for r in caplog.records if r.name.startswith("shared.")]
    about_runs = [r for r in records if good.run_id in r.getMessage() or bad.run_id in r.getMessage()]
    assert len(about_runs) >= 6
    for record in about_runs:
        assert getattr(record, "run_id", None) in (good.run_id, bad.run_id), record.getMessage()
        assert record.run_id in record.getMessage()
        assert record.pipeline == "default"
    started = [r for r in about_runs if "started" in r.getMessage()]
    assert started and all(getattr(r, "job_id", None) for r in started)
    deployed = [r for r in records if r.name == "shared.deploy" and "live" in r.getMessage()]
    assert {r.target for r in deployed} == {"classic", "arm"}
    rejected_command = [r for r in records if "m-x" in r.getMessage()]
    assert rejected_command and rejected_command[0].command == "msg:m-x"
    # AND the counters moved by what happened
    after = counted()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert delta["retraining.runs.started"] == 2
    assert delta["retraining.runs.finished"] == 2
    assert delta["retraining.runs.rejected"] == 1
    assert delta["retraining.runs.deployed"] == 2  # one run, two targets


def test_ids_bound_in_one_thread_do_not_leak_into_another():
    import threading

    seen = {}

    def other():
        seen["record"] = logging.getLogger("shared.test").makeRecord(
            "shared.test", logging.INFO, __file__, 1, "x", (), None
        )

    with telemetry.bind(run_id="r-1"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        mine = logging.getLogger("shared.test").makeRecord("shared.test", logging.INFO, __file__, 1, "x", (), None)
    assert mine.run_id == "r-1" and not hasattr(seen["record"], "run_id")


def test_azure_monitor_is_configured_only_when_its_setting_is_present(monkeypatch):
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    assert telemetry.configure_azure_monitor() is False
