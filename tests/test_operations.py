"""Operating the app: the CLI fails like a good tool (one line, an exit code, no traceback), works on a
setup where nothing exists yet, and ``./dev.sh up`` keeps a local setup running for it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from localdev.services import ROOT, free_port, fresh_names
from shared import cli
from tests.conftest import upload

READERS = ["runs", "targets", "pipelines", "unrouted", "commands"]


def settings_file(tmp_path, values, name="local.settings.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    return str(path)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def empty(env):
    """A setup where nothing exists yet: tables, containers and queues of fresh names, none created."""
    return {**env, **fresh_names()}


@pytest.mark.parametrize("command", READERS)
def test_a_listing_on_a_setup_where_nothing_exists_yet_says_so_and_succeeds(empty, tmp_path, capsys, command):
    assert cli.main([command, "--settings", settings_file(tmp_path, empty)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and out.err == ""
    if command != "pipelines":
        assert (
            one_line(out.out)
            == {
                "runs": "no runs yet",
                "commands": "no commands received",
                "targets": "no targets",
                "unrouted": "no unrouted uploads",
            }[command]
        )
    else:  # the configuration, nothing running
        assert out.out.splitlines()[2].split() == ["default", "(all)", "bes", "AUC", "-", "-", "-", "-"]


@pytest.mark.parametrize("command", ["run", "tail"])
def test_one_run_on_a_setup_where_nothing_exists_yet_is_one_line_and_exit_code_1(empty, tmp_path, capsys, command):
    argv = [command, "20261125T101500Z-1a2b3c4d5e6f7a8b", "--settings", settings_file(tmp_path, empty)]
    assert cli.main(argv) == 1
    out = capsys.readouterr()
    assert one_line(out.err) == "no run 20261125T101500Z-1a2b3c4d5e6f7a8b"


def test_check_on_a_fresh_storage_account_reports_what_is_missing_and_does_not_crash(empty, tmp_path, capsys):
    assert cli.main(["check", "--settings", settings_file(tmp_path, empty)]) == 0
    out = capsys.readouterr().out
    assert f"container {empty['TRAINING_CONTAINER']}: missing (created on first use)" in out
    assert f"not shown: container {empty['TRAINING_CONTAINER']} does not exist yet" in out
    assert "Traceback" not in out and out.rstrip().endswith("all reachable; nothing was changed")


def test_reading_commands_need_storage_not_the_training_services_keys(env, svc, tmp_path, capsys):
    upload(svc, "census.csv")
    readonly = {k: v for k, v in env.items() if not k.startswith(("BES_", "IDENTITY_"))}
    path = settings_file(tmp_path, readonly)
    for command in READERS:
        assert cli.main([command, "--settings", path]) == 0, command
    assert capsys.readouterr().err == ""
    # A command that calls the services still needs them, and says which setting is missing.
    assert cli.main(["check", "--settings", path]) == 2
    assert "Setting BES_JOBS_URL: is required but not set" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "error: settings file {path} not found"),
        ("{not json", "error: settings file {path} is not valid JSON (line 1: Expecting property name"),
        ("[1, 2]", "error: settings file {path}: expected a JSON object with a 'Values' object"),
        ('{"Values": {}}', "error: Setting AzureWebJobsStorage: is required"),
        (
            '{"Values": {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "DEPLOY_TARGETS": "[{]"}}',
            "error: Setting DEPLOY_TARGETS: is not valid JSON",
        ),
    ],
)
@pytest.mark.parametrize("command", [*READERS, "run x", "tail x", "upload README.md", "send retrain"])
def test_a_bad_or_missing_settings_file_is_one_line_and_exit_code_2(tmp_path, capsys, content, expected, command):
    if command == "send retrain" and expected.startswith("error: Setting"):
        return  # send reads only the queue's connection, not the app's settings
    path = tmp_path / "settings.json"
    if content is not None:
        path.write_text(content)
    assert cli.main([*command.split(), "--settings", str(path)]) == 2
    out = capsys.readouterr()
    assert one_line(out.err).startswith(expected.format(path=path)), out.err


@pytest.mark.parametrize(
    "command", [*READERS, "run 20261125T101500Z-1a2b3c4d5e6f7a8b", "tail 20261125T101500Z-1a2b3c4d5e6f7a8b"]
)
def test_unreachable_storage_is_one_line_naming_it_with_exit_code_1(env, tmp_path, capsys, command):
    dead = re.sub(
        r"TableEndpoint=http://127.0.0.1:\d+",
        f"TableEndpoint=http://127.0.0.1:{free_port()}",
        env["AzureWebJobsStorage"],
    )
    assert (
        cli.main([*command.split(), "--settings", settings_file(tmp_path, {**env, "AzureWebJobsStorage": dead})]) == 1
    )
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: cannot reach storage:") and line.endswith("(is Azurite running? ./dev.sh up)")


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(cli.UserError, match="not found"):
        cli.main(["runs", "--settings", str(tmp_path / "missing.json"), "--debug"])


def test_options_work_before_and_after_the_sub_command(env, tmp_path, capsys):
    path = settings_file(tmp_path, env)
    assert cli.main(["send", "retrain", "--settings", path, "--request-id", "after-1"]) == 0
    assert cli.main(["--settings", path, "send", "retrain", "--request-id", "before-1"]) == 0
    assert cli.main(["send", "--settings", path, "retrain", "--request-id", "middle-1"]) == 0
    queued = [json.loads(line)["queued"]["request_id"] for line in capsys.readouterr().out.splitlines()]
    assert queued == ["after-1", "before-1", "middle-1"]
    assert cli.main(["runs", "--limit", "5", "--settings", path]) == 0
    assert cli.main(["--settings", path, "runs", "--limit", "5"]) == 0


def test_without_settings_the_cli_reads_local_settings_json_as_func_does(env, tmp_path, capsys, monkeypatch):
    settings_file(tmp_path, {**env, "RUNS_TABLE": "fromthefile"})
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("AzureWebJobsStorage")]:
        monkeypatch.delenv(name)
    assert dict(cli.load_settings_values(None))["RUNS_TABLE"] == "fromthefile"
    monkeypatch.setenv("AzureWebJobsStorage", env["AzureWebJobsStorage"])  # the environment wins when it has storage
    assert cli.load_settings_values(None) is os.environ


def test_upload_streams_a_file_into_the_training_container_under_the_pipelines_prefix(env, tmp_path, capsys, svc):
    pipelines = [
        {"name": "census", "blob_prefix": "census/", "trainer": {"kind": "bes", "jobs_url": env["BES_JOBS_URL"]}},
        {"name": "churn", "blob_prefix": "churn/", "trainer": {"kind": "bes", "jobs_url": env["BES_JOBS_URL"]}},
    ]
    path = settings_file(tmp_path, {**env, "PIPELINES": json.dumps(pipelines)})
    data = tmp_path / "2026-12.csv"
    data.write_bytes(b"a,b,label\n1,2,0\n")
    assert cli.main(["upload", str(data), "--pipeline", "churn", "--settings", path]) == 0
    out = capsys.readouterr().out
    assert f"uploaded {env['TRAINING_CONTAINER']}/churn/2026-12.csv (16 bytes)" in out and "pipeline churn" in out
    blob = svc.storage.blobs.get_blob_client(env["TRAINING_CONTAINER"], "churn/2026-12.csv")
    assert blob.download_blob().readall() == b"a,b,label\n1,2,0\n"
    assert cli.main(["upload", str(data), "--name", "finance/q4.csv", "--settings", path]) == 0
    assert "no pipeline claims this name" in capsys.readouterr().out
    assert cli.main(["upload", str(data), "--name", "census/x.csv", "--pipeline", "churn", "--settings", path]) == 2
    assert one_line(capsys.readouterr().err) == "error: 'census/x.csv' would belong to pipeline census, not churn"
    assert cli.main(["upload", str(tmp_path / "absent.csv"), "--settings", path]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: cannot read")


def test_targets_show_the_recorded_state_and_where_it_differs_from_the_configuration(
    env, svc, fresh_emulator, tmp_path, capsys
):
    from shared.store import TargetState

    svc.targets.save(TargetState("retired", live_run="20261125T101500Z-1a2b3c4d5e6f7a8b"))
    targets = json.dumps([fresh_emulator.deploy_targets(env["BES_API_KEY"], arm="fresh")[1]])
    path = settings_file(tmp_path, {**env, "DEPLOY_TARGETS": targets})
    assert cli.main(["targets", "--settings", settings_file(tmp_path, {**env, **fresh_names()}, "empty.json")]) == 0
    assert one_line(capsys.readouterr().out) == "no targets"
    assert cli.main(["targets", "--settings", path, "--json"]) == 0
    views = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert views["fresh"]["note"] == "never deployed to" and views["fresh"]["kind"] == "arm"
    assert views["retired"]["note"] == "not in DEPLOY_TARGETS"
    assert views["retired"]["live_run"] == "20261125T101500Z-1a2b3c4d5e6f7a8b"


def test_an_unreachable_training_service_is_named_in_one_readable_line(env, tmp_path, capsys):
    port = free_port()
    dead = env["BES_JOBS_URL"].replace(env["BES_JOBS_URL"].split("/")[2], f"127.0.0.1:{port}")
    assert cli.main(["check", "--settings", settings_file(tmp_path, {**env, "BES_JOBS_URL": dead})]) == 1
    [line] = [line for line in capsys.readouterr().out.splitlines() if "FAIL  BES" in line]
    assert line.endswith(f"cannot connect to 127.0.0.1:{port}: Connection refused"), line
    assert "HTTPConnectionPool" not in line and "object at 0x" not in line


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# --- ./dev.sh up ---------------------------------------------------------------------------------------


def test_up_never_overwrites_a_settings_file_it_did_not_write(tmp_path):
    from localdev import up

    mine = tmp_path / "local.settings.json"
    mine.write_text('{"Values": {"AzureWebJobsStorage": "my own"}}')
    with pytest.raises(up.SetupError, match=r"was not written by \./dev\.sh up"):
        up.write_settings(mine, {"A": "1"}, 7071)
    assert "my own" in mine.read_text()
    ours = tmp_path / "ours.json"
    up.write_settings(ours, {up.MARKER: "x", "A": "1"}, 7071)
    up.write_settings(ours, {up.MARKER: "x", "A": "2"}, 7072)  # its own file it rewrites
    assert json.loads(ours.read_text()) == {
        "IsEncrypted": False,
        "Values": {up.MARKER: "x", "A": "2"},
        "Host": {"LocalHttpPort": 7072},
    }


def test_up_runs_the_loop_for_the_cli_until_sigterm_and_then_leaves_nothing_behind(tmp_path):
    """The README's "run it yourself": ``./dev.sh up``, then upload, runs, tail and targets from another
    terminal with the written settings file; SIGTERM stops every child it started."""
    ports = {what: free_port() for what in ("blob", "queue", "table", "emulator", "http")}
    settings = tmp_path / "local.settings.json"
    argv = [sys.executable, "-m", "localdev.up", "--settings-file", str(settings), "--job-seconds", "0.5"]
    argv += ["--poll-seconds", "1", *(f"--{what}-port={port}" for what, port in ports.items())]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "Ctrl-C stops everything." not in seen:
            line = process.stdout.readline()
            assert line, f"up exited early: {seen}{process.stderr.read()}"
            seen += line
        assert f"Status page: http://127.0.0.1:{ports['http']}/api/status?code=" in seen

        def cli_run(*args):
            done = subprocess.run(
                [sys.executable, "-m", "shared", *args, "--settings", str(settings)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert "Traceback" not in done.stderr, done.stderr
            return done

        sample = ROOT / "emulator" / "data" / "sample-training.csv"
        assert "pipeline default retrains on it" in cli_run("upload", str(sample)).stdout
        run_id = None
        deadline = time.monotonic() + 30
        while run_id is None and time.monotonic() < deadline:
            runs = json.loads(cli_run("runs", "--json").stdout)["runs"]
            run_id = runs[0]["run_id"] if runs else time.sleep(0.5)
        assert run_id, "the upload started no run"
        tail = cli_run("tail", run_id, "--interval", "0.5", "--timeout", "90")
        assert tail.returncode == 0 and tail.stdout.rstrip().endswith(f"{run_id} ended Deployed"), tail.stdout
        targets = json.loads(cli_run("targets", "--json").stdout)
        assert {t["name"]: t["live_run"] for t in targets} == {"classic-retrain": run_id, "arm-census": run_id}
        assert cli_run("check").returncode == 0
        sent = cli_run("send", "rollback", "classic-retrain", "--reason", "e2e", "--request-id", "e2e-rollback-1")
        assert sent.returncode == 0, sent.stderr
        deadline, outcome = time.monotonic() + 30, None
        while outcome is None and time.monotonic() < deadline:
            log = [json.loads(line) for line in cli_run("commands").stdout.splitlines() if line.startswith("{")]
            outcome = next(
                (c for c in log if c["RowKey"] == "req:e2e-rollback-1" and c["status"] != "InProgress"), None
            )
            time.sleep(0.5)
        assert outcome and outcome["reason"] == "target classic-retrain has no earlier model to roll back to"
        page_url = re.search(r"Status page: (\S+)", seen).group(1)
        page = requests.get(page_url, timeout=10).text
        run_link = re.search(r'href="(status/runs/[^"]+)"', page).group(1).replace("&amp;", "&")
        run_page = requests.get(page_url.split("/api/")[0] + "/api/" + run_link, timeout=10)
        assert run_page.status_code == 200 and run_id in run_page.text and "<table id=history>" in run_page.text
        children = children_of(process.pid)
        assert len(children) == 2  # Azurite and the emulator
    finally:
        process.send_signal(signal.SIGTERM)
        rc = process.wait(30)
    assert rc == 0
    assert children_of(process.pid) == [] and all(not Path(f"/proc/{c}/stat").exists() for c in children)


def test_check_warns_when_the_gate_metric_is_not_a_column_the_service_reports(empty, tmp_path, capsys):
    assert cli.main(["check", "--settings", settings_file(tmp_path, {**empty, "GATE_METRIC": "Bogus"})]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "gate metric" in line]
    assert line.startswith("  WARN  gate metric 'Bogus': not among the columns of what BES evaluations report:")
    assert "AUC" in line and "Coefficient of Determination" in line
    assert cli.main(["check", "--settings", settings_file(tmp_path, {**empty, "GATE_METRIC": "auc"})]) == 0
    assert "  ok    gate metric auc: reported" in capsys.readouterr().out  # case-insensitive, as the gate reads it


def test_on_a_terminal_tables_are_drawn_by_rich_and_a_name_is_never_markup(monkeypatch, capsys):
    from shared import terminal

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    terminal.print_table([["[red]forged[/red]\u202egpj.csv", "1"]], ["training data", "n"], empty="none")
    out = capsys.readouterr().out
    assert "[red]forged[/red]\\u202egpj.csv" in out  # shown as typed, escapes and all
    assert "training data" in out and "───" in out  # rich's rule under the header, not dashes
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    terminal.print_table([["a", "1"]], ["training data", "n"], empty="none")
    assert capsys.readouterr().out.splitlines() == ["training data  n", "-------------  -", "a              1"]
    terminal.print_table([], ["x"], empty="no runs yet")
    assert capsys.readouterr().out == "no runs yet\n"
