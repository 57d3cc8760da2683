"""The registered app: binding metadata (what the host indexes) and invocations through it."""

import json

import pytest

import function_app
from localdev.runner import LocalHost, index
from shared import runs as R
from shared.settings import SettingsError
from shared.storage import Storage
from shared.store import RunStore
from tests.conftest import SAMPLE, jobs


def bindings():
    return {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in index(function_app.app)}


def test_retrain_on_upload_is_a_blob_trigger_on_the_training_container():
    [trigger] = bindings()["retrain_on_upload"]
    assert trigger == {
        "direction": "IN",
        "type": "blobTrigger",
        "name": "blob",
        "path": "%TRAINING_CONTAINER%/{name}",
        "connection": "AzureWebJobsStorage",
        "source": trigger["source"],
    }
    assert trigger["source"] in ("EventGrid", "LogsAndContainerScan")


def test_the_blob_trigger_binds_an_sdk_client_not_the_content():
    from azurefunctions.extensions.bindings.blob import BlobClient

    user_function = function_app.retrain_on_upload.build().get_user_function()
    assert user_function.__annotations__["blob"] is BlobClient


def runs_of(env):
    storage = Storage(env["AzureWebJobsStorage"])
    return list(RunStore.open(storage.tables, env["RUNS_TABLE"]).list_runs("default"))


def put_blob(env, name, data=SAMPLE):
    storage = Storage(env["AzureWebJobsStorage"])
    storage.ensure_container(env["TRAINING_CONTAINER"])
    storage.blobs.get_blob_client(env["TRAINING_CONTAINER"], name).upload_blob(data, overwrite=True)


def test_an_upload_through_the_registered_trigger_starts_one_job(app_env, fresh_emulator):
    # GIVEN the app as the host indexes it, and new data in the training container
    host = LocalHost(function_app.app, app_env)
    put_blob(app_env, "uploads/census 2026.csv")
    # WHEN the host scans twice (the second scan finds the same blob version again)
    first, second = host.scan_blobs(), host.scan_blobs()
    # THEN the function ran once and one run and one job exist
    assert [(i.function, i.ok) for i in first] == [("retrain_on_upload", True)]
    assert second == []
    [run] = runs_of(app_env)
    assert run.status == R.RUNNING and run.blob_name == "uploads/census 2026.csv"
    assert run.history[0]["by"].startswith("blob-trigger/")
    assert [j["id"] for j in jobs(fresh_emulator)] == [run.job_id]


def test_a_redelivery_after_a_host_restart_does_not_start_a_second_job(app_env, fresh_emulator):
    put_blob(app_env, "census.csv")
    LocalHost(function_app.app, app_env).scan_blobs()
    # A new host has no receipts: it delivers the same blob version again.
    [again] = LocalHost(function_app.app, app_env).scan_blobs()
    assert again.ok
    assert len(runs_of(app_env)) == 1 and len(jobs(fresh_emulator)) == 1


def test_a_bad_setting_fails_the_invocation_with_a_message_naming_it(app_env, monkeypatch, fresh_emulator):
    monkeypatch.setenv("BES_GLOBAL_PARAMETERS", "{oops")
    host = LocalHost(function_app.app, {})
    put_blob(app_env, "census.csv")
    [invocation] = host.scan_blobs()
    assert not invocation.ok
    assert "SettingsError" in invocation.error and "BES_GLOBAL_PARAMETERS" in invocation.error
    assert jobs(fresh_emulator) == []


def test_a_missing_binding_setting_fails_like_the_host(app_env, monkeypatch):
    monkeypatch.delenv("TRAINING_CONTAINER")
    host = LocalHost(function_app.app, {})
    with pytest.raises(LookupError, match="'%TRAINING_CONTAINER%' does not resolve to a value"):
        host.scan_blobs()


def test_a_blob_that_keeps_failing_is_poisoned_after_the_host_json_threshold(app_env, monkeypatch):
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    monkeypatch.setenv("BES_API_KEY", "@Microsoft.KeyVault(VaultName=v;SecretName=s)")
    host = LocalHost(function_app.app, {})
    put_blob(app_env, "census.csv")
    for _ in range(host.poison_threshold):
        assert [i.ok for i in host.scan_blobs()] == [False]
    assert host.scan_blobs() == []
    queue = QueueClient.from_connection_string(
        app_env["AzureWebJobsStorage"], "webjobs-blobtrigger-poison", message_decode_policy=TextBase64DecodePolicy()
    )
    bodies = [json.loads(m.content) for m in queue.receive_messages()]
    assert {"ContainerName": app_env["TRAINING_CONTAINER"], "BlobName": "census.csv"}.items() <= bodies[-1].items()
    queue.clear_messages()


def test_a_blob_deleted_before_the_trigger_runs_is_logged_and_skipped(app_env, fresh_emulator, caplog):
    from azure.storage.blob import BlobClient

    put_blob(app_env, "gone.csv")
    client = BlobClient.from_connection_string(
        app_env["AzureWebJobsStorage"], app_env["TRAINING_CONTAINER"], "gone.csv"
    )
    client.delete_blob()
    function_app.retrain_on_upload.build().get_user_function()(
        blob=client, context=type("C", (), {"invocation_id": "x"})()
    )
    assert "vanished" in caplog.text
    assert runs_of(app_env) == [] and jobs(fresh_emulator) == []


def test_settings_errors_are_clear_when_the_app_is_misconfigured(monkeypatch):
    from shared import settings as settings_module

    settings_module.get_settings.cache_clear()
    monkeypatch.delenv("BES_JOBS_URL", raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    with pytest.raises(SettingsError, match="Setting BES_JOBS_URL: is required"):
        settings_module.get_settings()
    settings_module.get_settings.cache_clear()


def test_poll_runs_is_a_timer_on_the_poll_schedule():
    [trigger] = bindings()["poll_runs"]
    assert trigger == {
        "direction": "IN",
        "type": "timerTrigger",
        "name": "timer",
        "schedule": "%POLL_SCHEDULE%",
        "runOnStartup": False,
        "useMonitor": True,
    }


def test_run_command_is_a_queue_trigger_on_the_commands_queue():
    [trigger] = bindings()["run_command"]
    assert trigger == {
        "direction": "IN",
        "type": "queueTrigger",
        "name": "msg",
        "queueName": "%COMMANDS_QUEUE%",
        "connection": "AzureWebJobsStorage",
    }


def wait_for_job_end(fresh_emulator, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jobs(fresh_emulator) and all(j["status"] in ("Finished", "Failed") for j in jobs(fresh_emulator)):
            return
        time.sleep(0.1)
    raise AssertionError("the job did not end")


def test_the_whole_loop_through_the_registered_triggers(loop_env, fresh_emulator):
    # GIVEN the app as the host runs it
    host = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    put_blob(loop_env, "census.csv")
    # WHEN the blob trigger, the timer and the queue trigger each get their turn
    assert [i.ok for i in host.scan_blobs()] == [True]
    wait_for_job_end(fresh_emulator)
    assert host.fire_timer("poll_runs").ok
    assert [i.ok for i in host.pump_queues()] == [True]
    # THEN the run went live on both targets
    [run] = runs_of(loop_env)
    assert run.status == R.DEPLOYED, run.history
    assert [h["to"] for h in run.history if "to" in h] == [
        R.REQUESTED,
        R.SUBMITTED,
        R.RUNNING,
        R.APPROVED,
        R.DEPLOYING,
        R.DEPLOYED,
    ]


def test_a_deploy_that_never_takes_effect_ends_in_the_poison_queue_and_on_the_run(loop_env, fresh_emulator):
    from azure.storage.queue import QueueClient

    fresh_emulator.admin("POST", "faults", {"route": "classic.patch", "no_effect": True})
    host = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    put_blob(loop_env, "census.csv")
    host.scan_blobs()
    wait_for_job_end(fresh_emulator)
    host.fire_timer("poll_runs")
    deliveries = []
    for _ in range(host.max_dequeue_count + 2):
        deliveries += host.pump_queues()
    assert [i.ok for i in deliveries] == [False] * host.max_dequeue_count
    poison = QueueClient.from_connection_string(loop_env["AzureWebJobsStorage"], loop_env["COMMANDS_QUEUE"] + "-poison")
    assert len(poison.peek_messages()) == 1
    [run] = runs_of(loop_env)
    assert run.targets["classic"]["status"] == "Failed"
    assert f"gave up after {host.max_dequeue_count} attempts" in run.targets["classic"]["reason"]
    assert run.targets["arm"]["status"] == "Deployed"


def test_a_message_that_is_not_base64_is_poisoned_and_bad_json_is_consumed(loop_env):
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    host = LocalHost(function_app.app, loop_env, visibility_timeout=0)
    conn, name = loop_env["AzureWebJobsStorage"], loop_env["COMMANDS_QUEUE"]
    QueueClient.from_connection_string(conn, name).create_queue()
    QueueClient.from_connection_string(conn, name).send_message("{raw json, not base64}")
    QueueClient.from_connection_string(conn, name, message_encode_policy=TextBase64EncodePolicy()).send_message(
        "{not json"
    )
    results = host.pump_queues() + host.pump_queues()
    assert sorted(i.ok for i in results) == [False, True]
    assert len(QueueClient.from_connection_string(conn, name + "-poison").peek_messages()) == 1
    assert QueueClient.from_connection_string(conn, name).peek_messages() == []


def test_the_local_host_fires_timers_on_their_ncrontab_schedule(loop_env):
    import datetime as dt

    host = LocalHost(function_app.app, {**loop_env, "POLL_SCHEDULE": "30 */5 * * * *"})
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert host.tick_timers(start) == []  # schedules the next occurrence: 12:00:30
    assert host.tick_timers(start + dt.timedelta(seconds=29)) == []
    [fired] = host.tick_timers(start + dt.timedelta(seconds=31))
    assert fired.function == "poll_runs" and fired.ok
    assert host.tick_timers(start + dt.timedelta(minutes=4)) == []  # next: 12:05:30


def test_a_blob_name_with_a_control_character_does_not_break_the_local_scan(app_env, fresh_emulator, caplog):
    from azure.storage.blob import BlobServiceClient

    # GIVEN a training container holding a name with a control character (Azurite cannot list it)
    put_blob(app_env, "bad\x01name.csv")
    host = LocalHost(function_app.app, app_env)
    # WHEN the host scans, twice
    assert host.scan_blobs() == [] and host.scan_blobs() == []
    # THEN it said why, once, and went on; once the name is gone the container is scanned again
    assert caplog.text.count("cannot list container") == 1 and "control character" in caplog.text
    service = BlobServiceClient.from_connection_string(app_env["AzureWebJobsStorage"])
    service.get_blob_client(app_env["TRAINING_CONTAINER"], "bad\x01name.csv").delete_blob()
    put_blob(app_env, "good.csv")
    assert [(i.function, i.ok) for i in host.scan_blobs()] == [("retrain_on_upload", True)]
