"""The sender and check commands (``python -m shared``)."""

import json
import subprocess
import sys

from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from shared import cli, commands
from tests.conftest import upload
from tests.loop import target_settings


def settings_file(tmp_path, values):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    return str(path)


def test_send_puts_a_valid_base64_command_on_the_queue(env, tmp_path, capsys):
    path = settings_file(tmp_path, env)
    assert cli.main(["send", "--settings", path, "rollback", "prod", "--request-id", "ops-1", "--reason", "bad"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["queue"] == env["COMMANDS_QUEUE"]
    queue = QueueClient.from_connection_string(
        env["AzureWebJobsStorage"], env["COMMANDS_QUEUE"], message_decode_policy=TextBase64DecodePolicy()
    )
    [message] = queue.peek_messages()
    assert json.loads(message.content) == {
        "type": "rollback",
        "version": 1,
        "request_id": "ops-1",
        "target": "prod",
        "reason": "bad",
    }
    assert commands.parse(message.content.encode())["target"] == "prod"


def test_send_refuses_what_the_contract_refuses_without_sending(env, tmp_path, capsys):
    path = settings_file(tmp_path, env)
    assert cli.main(["send", "--settings", path, "deploy", "not-a-run-id"]) == 2
    assert "not sent" in capsys.readouterr().err
    assert (
        cli.main(
            ["send", "--settings", path, "deploy", "20261125T101500Z-1a2b3c4d5e6f7a8b", "--force", "--target", "prod"]
        )
        == 2
    )  # --force without --reason
    from azure.storage.queue import QueueServiceClient

    queues = QueueServiceClient.from_connection_string(env["AzureWebJobsStorage"]).list_queues()
    assert env["COMMANDS_QUEUE"] not in [q.name for q in queues]  # nothing was even created


def test_check_reaches_every_service_shows_what_it_would_send_and_changes_nothing(
    env, fresh_emulator, tmp_path, capsys, svc
):
    upload(svc, "census.csv")
    fresh_table = env["RUNS_TABLE"] + "check"
    path = settings_file(tmp_path, {**target_settings(env, fresh_emulator), "RUNS_TABLE": fresh_table})
    assert cli.main(["check", "--settings", path]) == 0
    out = capsys.readouterr().out
    assert "reachable, key accepted" in out and "would send to BES" in out and '"SasBlobToken"' in out
    assert "would send PATCH" in out and "asset3" in out
    assert "sig=REDACTED" in out and "AccountKey" not in out
    routes = {r["route"] for r in fresh_emulator.admin("GET", "requests")}
    assert routes <= {"bes.status", "classic.endpoint", "arm.get", "identity.token"}, routes
    assert fresh_emulator.admin("GET", "jobs") == []
    assert list(svc.storage.tables.query_tables("TableName eq @n", parameters={"n": fresh_table})) == []


def test_check_reports_a_rejected_key_and_fails(env, fresh_emulator, tmp_path, capsys):
    path = settings_file(tmp_path, {**env, "BES_API_KEY": "wrong-key-but-well-formed"})
    assert cli.main(["check", "--settings", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL  BES" in out and "401" in out and "wrong-key" not in out


def test_check_names_a_bad_setting(env, tmp_path, capsys):
    path = settings_file(tmp_path, {**env, "DEPLOY_TARGETS": '[{"name": "x", "kind": "aks"}]'})
    assert cli.main(["check", "--settings", path, "--offline"]) == 2
    assert "Setting DEPLOY_TARGETS" in capsys.readouterr().out


def test_the_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "shared", "--help"], capture_output=True, text=True, check=True)
    assert "send" in result.stdout and "check" in result.stdout


def test_the_command_log_lists_rejected_messages_with_their_reason(env, tmp_path, capsys, svc):
    commands.handle(
        svc, b'{"type": "deploy", "version": 1, "run_id": "nope"}', message_id="m-9", dequeue_count=1, actor="queue/m-9"
    )
    assert cli.main(["commands", "--settings", settings_file(tmp_path, env), "--status", "Rejected"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    assert entry["RowKey"] == "msg:m-9" and "run_id" in entry["reason"] and '"nope"' in entry["raw"]


def test_runs_run_targets_and_tail_follow_a_run_to_its_end(env, fresh_emulator, tmp_path, capsys, monkeypatch):
    import threading

    from emulator import sample_data
    from shared import poll, workflow
    from tests.loop import drain_commands, services, wait_job

    settings = target_settings(env, fresh_emulator)
    svc = services(settings, monkeypatch)
    path = settings_file(tmp_path, settings)
    outcome = workflow.start_run_for_blob(
        svc,
        upload(svc, "census.csv", sample_data.generate(600, seed=2).encode()),
        source="blob",
        actor="blob-trigger/t",
    )

    def the_app_moves_it_on():
        wait_job(svc, outcome.run_id)
        poll.poll(svc, actor="timer-poll/t")
        drain_commands(svc)

    mover = threading.Thread(target=the_app_moves_it_on)
    mover.start()
    # WHEN an operator tails the run
    assert cli.main(["tail", outcome.run_id, "--settings", path, "--interval", "0.2", "--timeout", "60"]) == 0
    mover.join()
    tailed = capsys.readouterr().out
    # THEN each state change appeared once, in order, ending with the verdict
    changes = [line.split("-> ")[1].split()[0] for line in tailed.splitlines() if "-> " in line]
    assert changes == ["Requested", "Submitted", "Running", "Approved", "Deploying", "Deployed"]
    assert tailed.rstrip().endswith(f"{outcome.run_id} ended Deployed")
    # AND the listings agree
    assert cli.main(["runs", "--settings", path]) == 0
    assert outcome.run_id in capsys.readouterr().out
    assert cli.main(["run", outcome.run_id, "--settings", path]) == 0
    shown = capsys.readouterr().out
    assert "gate classic: approved" in shown and "deploy arm: Deployed" in shown and "-> Deployed" in shown
    assert cli.main(["targets", "--settings", path, "--json"]) == 0
    assert {t["live_run"] for t in json.loads(capsys.readouterr().out)} == {outcome.run_id}
    assert cli.main(["run", "20991231T000000Z-0000000000000000", "--settings", path]) == 1


def test_names_with_control_or_bidi_characters_are_printed_escaped(env, tmp_path, capsys, svc, fresh_emulator):
    from shared import workflow

    # GIVEN a run whose blob name holds an ANSI escape (it would recolour or clear the terminal) and a
    # right-to-left override (it would reorder the line)
    name = "x\x1b[2J\u202egpj.csv"
    blob = upload(svc, name)
    run = workflow.start_run_for_blob(svc, blob, source="blob", actor="t")
    path = settings_file(tmp_path, env)
    # WHEN an operator lists the runs and shows the run
    assert cli.main(["runs", "--settings", path]) == 0
    assert cli.main(["run", "--settings", path, run.run_id]) == 0
    out = capsys.readouterr().out
    # THEN the characters are shown as their codes, never written to the terminal
    assert "\x1b" not in out and "\u202e" not in out
    assert out.count("x\\u001b[2J\\u202egpj.csv") == 2


def test_a_bad_cursor_is_a_message_not_a_traceback(env, tmp_path, capsys, svc):
    path = settings_file(tmp_path, env)
    assert cli.main(["runs", "--settings", path, "--cursor", "!!"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "--cursor: not a cursor this API issued; use the next_cursor of a previous page"
    )
