"""Operator and sender command line: ``python -m shared --help``.

* ``runs``, ``run``, ``targets`` and ``tail`` show the runs (newest first), one run's gate decision,
  deploy results and history, what is live where, and follow a run until it ends;
* ``send`` puts a command on the commands queue, validated against the contract first and
  base64-encoded as the Functions host expects — for operators and for other systems;
* ``commands`` lists what the command queue received and what became of it (``--status Rejected``);
* ``check`` validates a settings file and reaches every configured service without changing any: it
  shows the BES request and the PATCH/update it would send (SAS signatures redacted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Mapping

from shared.redact import redact, shown
from shared.terminal import Progress, print_table


class UserError(Exception):
    """Something the user can put right, said in one line (exit code 2, no traceback)."""


LOCAL_SETTINGS = "local.settings.json"
SETTINGS_HELP = f"a {LOCAL_SETTINGS}-style file (default: the environment, or ./{LOCAL_SETTINGS} if it has no storage)"


def load_settings_values(path: str | None) -> Mapping[str, str]:
    """App settings from a ``local.settings.json``-style file (its ``Values``), or the environment; with
    neither ``--settings`` nor storage in the environment, ``./local.settings.json`` (as ``func`` reads it)."""
    if path is None:
        has_storage = any(k == "AzureWebJobsStorage" or k.startswith("AzureWebJobsStorage__") for k in os.environ)
        if has_storage or not os.path.isfile(LOCAL_SETTINGS):
            return os.environ
        path = LOCAL_SETTINGS
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"settings file {path} not found") from None
    except OSError as exc:
        raise UserError(f"settings file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"settings file {path} is not valid JSON{where}") from None
    values = data.get("Values", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"settings file {path}: expected a JSON object with a 'Values' object")
    return {str(k): "" if v is None else str(v) for k, v in values.items()}


# --- send ------------------------------------------------------------------------------------------


def build_command(args: argparse.Namespace) -> dict:
    body: dict = {"type": args.command, "version": 1, "request_id": args.request_id or f"cli-{uuid.uuid4().hex}"}
    if args.pipeline:
        body["pipeline"] = args.pipeline
    if args.command == "retrain" and args.blob:
        body["blob"] = args.blob
    if args.command == "deploy":
        body["run_id"] = args.run_id
        if args.target:
            body["targets"] = args.target
        if args.force:
            body["force"] = True
    if args.command == "rollback":
        body["target"] = args.target
        if args.to_run:
            body["to_run"] = args.to_run
    if args.command in ("approve", "reject"):
        body.update(run_id=args.run_id, target=args.target, approver=args.approver)
    if args.reason:
        body["reason"] = args.reason
    return body


def send(args: argparse.Namespace) -> int:
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    from shared import commands
    from shared.deploy import CommandRejected

    body = build_command(args)
    raw = json.dumps(body).encode()
    try:
        commands.parse(raw)
    except CommandRejected as exc:
        print(f"not sent: {exc}", file=sys.stderr)
        return 2
    values = load_settings_values(args.settings)
    queue_name = args.queue or values.get("COMMANDS_QUEUE") or "retraining-commands"
    if args.account_url:
        from azure.identity import DefaultAzureCredential

        queue = QueueClient(
            args.account_url,
            queue_name,
            credential=DefaultAzureCredential(),
            message_encode_policy=TextBase64EncodePolicy(),
        )
    else:
        connection = args.connection_string or values.get("AzureWebJobsStorage")
        if not connection:
            print("not sent: give --connection-string, --account-url or AzureWebJobsStorage", file=sys.stderr)
            return 2
        if connection == "UseDevelopmentStorage=true":
            from shared.settings import AZURITE_CONNECTION_STRING as connection
        queue = QueueClient.from_connection_string(
            connection, queue_name, message_encode_policy=TextBase64EncodePolicy()
        )
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()  # the app creates it too; a sender may come first
    message = queue.send_message(raw.decode())
    print(json.dumps({"queued": body, "queue": queue_name, "message_id": message.id}))
    return 0


# --- check -----------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, what: str, detail: str = "") -> None:
        print(f"  ok    {what}" + (f": {detail}" if detail else ""))

    def warn(self, what: str, detail: str) -> None:
        print(f"  WARN  {what}: {redact(detail)}")

    def fail(self, what: str, detail: str) -> None:
        self.failures += 1
        print(f"  FAIL  {what}: {redact(detail)}")

    def show(self, title: str, payload: object) -> None:
        print(f"  would send {title}:")
        for line in redact(json.dumps(payload, indent=2)).splitlines():
            print(f"      {line}")


def check(args: argparse.Namespace) -> int:
    from shared.settings import Settings, SettingsError

    values = load_settings_values(args.settings)
    print("settings")
    try:
        settings = Settings.from_env(values)
    except SettingsError as exc:
        print(f"  FAIL  {exc}")
        return 2
    report = Report()
    names = ", ".join(p.name for p in settings.pipelines)
    report.ok("valid", f"{len(settings.targets)} deploy target(s), pipeline(s) {names}")
    if args.offline:
        return 0
    from shared.workflow import build_services

    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID"):
        if values is not os.environ and values.get(name):
            os.environ[name] = values[name]  # azure-identity reads these from the environment; the file wins
    svc = build_services(settings, create=False)
    _check_storage(svc, report)
    for pipeline in settings.pipelines:
        _check_trainer(svc, pipeline, report)
    for target in settings.targets:
        _check_target(svc, target, report)
    print("all reachable; nothing was changed" if not report.failures else f"{report.failures} problem(s)")
    return 1 if report.failures else 0


def _check_storage(svc, report: Report) -> None:
    s = svc.settings
    print("storage (AzureWebJobsStorage)")
    try:
        for container in (s.training_container, s.models_container):
            exists = svc.storage.blobs.get_container_client(container).exists()
            report.ok(f"container {container}", "exists" if exists else "missing (created on first use)")
        tables = [t.name for t in svc.storage.tables.query_tables("TableName eq @n", parameters={"n": s.runs_table})]
        report.ok(f"table {s.runs_table}", "exists" if tables else "missing (created on first use)")
    except Exception as exc:  # any storage failure is a finding, not a crash
        report.fail("storage", f"{type(exc).__name__}: {exc}")


def _check_trainer(svc, pipeline, report: Report) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    from shared.http import ServiceError
    from shared.runs import Run, utcnow
    from shared.workflow import NothingToTrain, newest_training_blob

    prefix = f", uploads under {pipeline.blob_prefix!r}" if pipeline.blob_prefix else ""
    print(f"pipeline {pipeline.name} ({pipeline.trainer.kind} trainer{prefix})")
    trainer = svc.trainer(pipeline.name)
    try:
        report.ok(trainer.kind.upper(), trainer.probe())
    except ServiceError as exc:
        report.fail(trainer.kind.upper(), str(exc))
        return
    _check_gate_metric(svc, pipeline, trainer, report)
    if hasattr(trainer, "datastore_target"):
        _check_datastore(svc, trainer, report)
    try:
        blob = svc.storage.blob_ref(svc.settings.training_container, newest_training_blob(svc, pipeline))
    except NothingToTrain as exc:
        report.ok("submit request", f"not shown: {exc}")
        return
    except ResourceNotFoundError:
        report.ok("submit request", f"not shown: container {svc.settings.training_container} does not exist yet")
        return
    run = Run.for_blob(pipeline.name, blob, "check", "check", utcnow())
    report.show(*trainer.preview(run, utcnow()))  # computed locally: SAS tokens are signed, not requested


def _check_gate_metric(svc, pipeline, trainer, report: Report) -> None:
    """Is the gate's metric one the service reports? The columns of the newest evaluation on record,
    else those the trainer kind is known to write. A warning, not a failure: a custom evaluation may
    name columns of its own."""
    runs, _ = svc.store.page_runs(pipeline.name, limit=20)
    evaluated = next((r for r in runs if r.metrics), None)
    columns = tuple(evaluated.metrics) if evaluated else tuple(getattr(trainer, "known_metrics", ()))
    source = f"run {evaluated.run_id}'s evaluation" if evaluated else f"what {trainer.kind.upper()} evaluations report"
    metric = pipeline.gate.metric
    if not columns or any(c.lower() == metric.lower() for c in columns):
        report.ok(f"gate metric {metric}", f"reported ({source})" if columns else "not checked")
    else:
        report.warn(f"gate metric {shown(metric)!r}", f"not among the columns of {source}: {', '.join(columns)}")


def _check_datastore(svc, trainer, report: Report) -> None:
    """A v2 job reads its input through the workspace's datastore: it must be the app's training container."""
    from shared.http import ServiceError

    want = (svc.storage.account_name, svc.settings.training_container)
    try:
        account, container = trainer.datastore_target()
    except ServiceError as exc:
        report.fail(f"datastore {trainer.config.datastore}", str(exc))
        return
    if (account, container) == want:
        report.ok(f"datastore {trainer.config.datastore}", f"points at {account}/{container}, the training container")
    else:
        report.fail(
            f"datastore {trainer.config.datastore}",
            f"points at {account}/{container}, not the app's training container {want[0]}/{want[1]}: "
            "jobs would not see the uploads",
        )


def _check_target(svc, target, report: Report) -> None:
    from shared.http import ServiceError

    print(f"target {target.name} ({target.kind})")
    live = svc.targets.peek(target.name)
    owner = svc.settings.pipeline_of_target(target.name)
    if live and live.live_model:
        model = live.live_model
    elif getattr(target, "staged", False) and owner is not None:  # an online endpoint serves model versions
        model = f"{target.workspace}/models/{owner.trainer.model_name}/versions/<run id>"
    else:
        model = f"{svc.settings.models_container}/{owner.name if owner else '<pipeline>'}/<run id>/model.ilearner"
    deployer = svc.deployer(target)
    try:
        report.ok("reachable", deployer.probe())
        report.show(*deployer.preview(model))
    except ServiceError as exc:
        report.fail(target.name, str(exc))


# --- upload ----------------------------------------------------------------------------------------


def upload_command(args: argparse.Namespace) -> int:
    """Put a file in the training container, streamed (memory does not grow with the file); with
    several pipelines, under the named pipeline's prefix, and say which pipeline the name routes to."""
    svc = _read_services(args)
    settings = svc.settings
    chosen = settings.pipeline_named(args.pipeline) if args.pipeline else None
    if args.pipeline and chosen is None:
        names = ", ".join(p.name for p in settings.pipelines)
        raise UserError(f"no pipeline {shown(args.pipeline)!r} (configured: {names})")
    name = args.name or (chosen.blob_prefix if chosen else "") + os.path.basename(args.file)
    owner = settings.route(name)
    if chosen is not None and owner is not chosen:
        belongs = owner.name if owner else "(none)"
        raise UserError(f"{shown(name)!r} would belong to pipeline {belongs}, not {chosen.name}")
    try:
        handle = open(args.file, "rb")  # noqa: SIM115 - closed below, after the upload
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
    with handle:
        svc.storage.ensure_container(settings.training_container)
        blob = svc.storage.blobs.get_blob_client(settings.training_container, name)
        blob.upload_blob(handle, overwrite=True)
    size = os.path.getsize(args.file)
    print(f"uploaded {settings.training_container}/{shown(name)} ({size} bytes)")
    if owner is None:
        print("no pipeline claims this name: it will be recorded, and nothing starts (see `unrouted`)")
    else:
        print(f"pipeline {owner.name} retrains on it; follow with: python -m shared runs --pipeline {owner.name}")
    return 0


# --- runs and targets ------------------------------------------------------------------------------


def _read_services(args: argparse.Namespace):
    """Clients for a tool that only reads state: it needs storage, not the services' keys."""
    from shared.settings import Settings
    from shared.workflow import build_services

    return build_services(Settings.from_env(load_settings_values(args.settings), for_reading=True), create=False)


def runs_command(args: argparse.Namespace) -> int:
    from shared import status

    try:
        page = status.list_runs(
            _read_services(args), pipeline=args.pipeline, status=args.status, limit=args.limit, cursor=args.cursor
        )
    except status.BadParameter as exc:
        print(str(exc).replace("parameter ", "--", 1), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(page, indent=2, default=str))
        return 0
    rows = [
        [
            r["run_id"],
            r["status"],
            r["blob"],
            "-" if r["metric"]["value"] is None else f"{r['metric']['value']:.4f}",
            ", ".join(f"{n}: {t.get('status')}" for n, t in sorted(r["targets"].items())) or "-",
            r["updated_at"][:19],
        ]
        for r in page["runs"]
    ]
    metric = page["runs"][0]["metric"]["name"] if rows else "metric"
    header = ["run", "status", "training data", metric, "targets", "updated (UTC)"]
    print_table(rows, header, empty="no runs yet")
    if page["next_cursor"]:
        print(f"more: --cursor {page['next_cursor']}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from shared import status

    run = status.get_run(_read_services(args), args.run_id, args.pipeline)
    if run is None:
        print(f"no run {args.run_id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(run, indent=2, default=str))
        return 0
    lines = [
        f"run {run['run_id']}  {run['status']}  (pipeline {run['pipeline']}, {run['source']}: {run['blob']})",
        f"job {run['job_id'] or '-'}, attempts {run['attempts']}; {run['metric']['name']} "
        f"{run['metric']['value'] if run['metric']['value'] is not None else '-'}",
    ]
    if run["model"]:
        model = run["model"]
        lines.append(f"  registered model {model.get('name')} version {model.get('version')}: {model.get('id')}")
    if run["check_failures"]:
        last = run["last_check_error"] or {}
        lines.append(f"  {run['check_failures']} failed status checks; last: {last.get('code')}: {last.get('message')}")
    for name, decision in sorted(run["gate"].items()):
        lines.append(
            f"  gate {name}: {'approved' if decision.get('approved') else 'rejected'} - {decision.get('reason')}"
        )
    for name, target in sorted(run["targets"].items()):
        lines.append(f"  deploy {name}: {target.get('status')} - {target.get('reason')}")
    if run["error"]:
        lines.append(f"  error: {run['error'].get('code')}: {run['error'].get('message')}")
    lines.append("history:")
    for entry in run["history"]:
        move = f"{entry.get('from', '')} -> {entry['to']}" if "to" in entry else "note"
        lines.append(f"  {entry['at']}  {move:<26} {entry['by']:<40} {entry.get('reason') or entry.get('event')}")
    print("\n".join(shown(line) for line in lines))  # a name cannot reorder or forge a line
    return 0


def targets_command(args: argparse.Namespace) -> int:
    from shared import status

    targets = status.list_targets(_read_services(args), args.pipeline)
    if args.json:
        print(json.dumps(targets, indent=2))
        return 0
    rows = [
        [
            t["name"],
            t["kind"] or "-",
            t["pipeline"] or "-",
            t["live_run"] or "-",
            "-" if t["metric"]["value"] is None else f"{t['metric']['value']:.4f}",
            (t["since"] or "-")[:19],
            t["previous_run"] or "-",
            status.rollout_text(t["rollout"]) or "-",
            t["note"] or "",
        ]
        for t in targets
    ]
    header = ["target", "kind", "pipeline", "live run", "metric", "since (UTC)", "replaced", "rollout", "note"]
    print_table(rows, header, empty="no targets")
    return 0


def pipelines_command(args: argparse.Namespace) -> int:
    from shared import status

    views = status.list_pipelines(_read_services(args))
    if args.json:
        print(json.dumps(views, indent=2, default=str))
        return 0
    rows = [
        [
            v["name"],
            v["blob_prefix"] or "(all)",
            v["trainer"],
            v["gate"]["metric"],
            ", ".join(v["targets"]) or "-",
            v["active_run"] or "-",
            v["waiting_run"] or "-",
            (v["last_error"] or {}).get("code") or "-",
        ]
        for v in views
    ]
    header = ["pipeline", "uploads under", "trainer", "gate", "targets", "active run", "waiting", "last error"]
    print_table(rows, header, empty="no pipelines")
    return 0


def unrouted_command(args: argparse.Namespace) -> int:
    from shared import status

    uploads = status.list_unrouted(_read_services(args), limit=args.limit)
    if args.json:
        print(json.dumps(uploads, indent=2, default=str))
        return 0
    rows = [[u["blob"], (u["recorded_at"] or "")[:19], u["reason"]] for u in uploads]
    print_table(rows, ["training data", "recorded (UTC)", "why nothing started"], empty="no unrouted uploads")
    return 0


def tail_command(args: argparse.Namespace) -> int:
    """Follow a run until it ends: each state change as it is recorded, and a progress line meanwhile."""
    import time

    from shared import status

    svc = _read_services(args)
    seen, started, stages = 0, time.monotonic(), {}
    with Progress(len(status.STEPS)) as progress:
        while True:
            run = status.find_run(svc, args.run_id, args.pipeline)
            if run is None:
                print(f"no run {shown(args.run_id)}", file=sys.stderr)
                return 1
            for entry in run.history[seen:]:
                move = f"-> {entry['to']}" if "to" in entry else "  note"
                progress.note(f"{entry['at']}  {move:<20} {entry.get('reason') or entry.get('event')}")
            seen = len(run.history)
            rolling = ""
            for name, done in _rollout_stages(svc, run, stages):  # a staged target's rollout, stage by stage
                for stage in done:
                    progress.note(f"{stage['at']}  {name + ': ' + stage['stage']:<20}")
                rolling = f", {name} rolling out" if run.status == "Deploying" else rolling
            if run.ended:
                progress.note(f"{run.run_id} ended {run.status}")
                return 0 if run.status in ("Deployed", "Finished", "Rejected", "Superseded") else 1
            if args.timeout and time.monotonic() - started > args.timeout:
                progress.note(f"still {run.status} after {args.timeout:.0f}s; stopped following")
                return 2
            step = status.STEPS.index(run.status) + 1 if run.status in status.STEPS else 0
            progress.update(step, f"{run.status} ({step}/{len(status.STEPS)}){rolling}")
            time.sleep(args.interval)


def _rollout_stages(svc, run, shown_so_far: dict[str, int]):
    """For each target rolling out ``run``: the rollout stages not shown yet (``shown_so_far`` counts)."""
    for name, result in sorted(run.targets.items()):
        if result.get("status") not in ("RollingOut", "Deployed", "RolledBack", "Failed"):
            continue
        state = svc.targets.peek(name)
        doc = state.rollout if state else None
        if not doc or doc.get("run") != run.run_id:
            continue
        stages = doc.get("stages") or []
        yield name, stages[shown_so_far.get(name, 0) :]
        shown_so_far[name] = len(stages)


# --- commands log ---------------------------------------------------------------------------------


def command_log(args: argparse.Namespace) -> int:
    """Print the command log (newest last), e.g. every rejected message with its reason."""
    entries = _read_services(args).commands.list(args.status)
    if not entries:
        print("no commands received" + (f" with status {args.status}" if args.status else ""))
    for entry in entries:
        print(
            json.dumps(
                {
                    k: entry.get(k)
                    for k in (
                        "RowKey",
                        "status",
                        "type",
                        "received_at",
                        "deliveries",
                        "duplicates",
                        "reason",
                        "result",
                        "raw",
                    )
                },
                default=str,
            )
        )
    return 0


# --- entry point -------------------------------------------------------------------------------------


def _options(*, send: bool = False) -> argparse.ArgumentParser:
    """Options every command takes, in any position (before or after the sub-command): each parser
    gets them, and ``SUPPRESS`` keeps a later parser from resetting what an earlier one read."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--settings", help=SETTINGS_HELP)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    if send:
        common.add_argument("--connection-string", help="storage connection string (default: AzureWebJobsStorage)")
        common.add_argument("--account-url", help="queue service URL, to send with an Azure AD identity instead")
        common.add_argument("--queue", help="queue name (default: COMMANDS_QUEUE or retraining-commands)")
    return common


def parser() -> argparse.ArgumentParser:
    common, sending = _options(), _options(send=True)
    top = argparse.ArgumentParser(prog="python -m shared", description=__doc__.splitlines()[0], parents=[common])
    sub = top.add_subparsers(dest="action", required=True, metavar="command")

    send_parser = sub.add_parser(
        "send", help="put a command on the commands queue (validated first)", parents=[sending]
    )
    kinds = send_parser.add_subparsers(dest="command", required=True, metavar="type")
    for name, text in (
        ("retrain", "retrain on a blob of the training container (default: the newest)"),
        ("deploy", "deploy a finished run"),
        ("rollback", "put an earlier model back on a target"),
        ("approve", "approve a run waiting for approval on a target (manual approval): it is deployed there"),
        ("reject", "refuse a run waiting for approval on a target: it is not deployed there"),
    ):
        kind = kinds.add_parser(name, help=text, parents=[sending])
        kind.add_argument("--request-id", help="the same id twice is carried out once (default: a new one)")
        kind.add_argument("--pipeline", help="the pipeline it is for (required when several are configured)")
        kind.add_argument("--reason", help="why (recorded; required with --force)")
        if name == "retrain":
            kind.add_argument("--blob", help="blob name inside the training container")
        if name == "deploy":
            kind.add_argument("run_id")
            kind.add_argument("--target", action="append", help="a target name (repeat for several)")
            kind.add_argument("--force", action="store_true", help="skip the gate (needs --reason and --target)")
        if name == "rollback":
            kind.add_argument("target")
            kind.add_argument("--to-run", help="the run whose model to put back (default: the one replaced)")
        if name in ("approve", "reject"):
            kind.add_argument("run_id")
            kind.add_argument("target")
            kind.add_argument("--approver", required=True, help="who decides (recorded)")

    def reader(name: str, text: str, pipeline: bool = True) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=text, parents=[common])
        if pipeline:
            command.add_argument("--pipeline", help="one pipeline (required for runs when several are configured)")
        return command

    upload_parser = reader("upload", "put a file in the training container (the blob trigger starts a run)")
    upload_parser.add_argument("file", help="the training data, e.g. a .csv")
    upload_parser.add_argument("--name", help="blob name (default: the file's name, under the pipeline's prefix)")
    runs_parser = reader("runs", "list runs, newest first")
    runs_parser.add_argument("--status", help="only runs in this status (e.g. Rejected)")
    runs_parser.add_argument("--limit", type=int, default=20)
    runs_parser.add_argument("--cursor", help="continue a listing (printed after a full page)")
    runs_parser.add_argument("--json", action="store_true")
    run_parser = reader("run", "show one run: gate decision, deploy results, history")
    run_parser.add_argument("run_id")
    run_parser.add_argument("--json", action="store_true")
    targets_parser = reader("targets", "what is live on each target")
    targets_parser.add_argument("--json", action="store_true")
    tail_parser = reader("tail", "follow a run until it ends")
    tail_parser.add_argument("run_id")
    tail_parser.add_argument("--interval", type=float, default=2.0, help="seconds between reads")
    tail_parser.add_argument("--timeout", type=float, default=0, help="stop following after this long (0: never)")
    pipelines_parser = reader(
        "pipelines", "each pipeline: its uploads, trainer, gate, targets, what it is doing", False
    )
    pipelines_parser.add_argument("--json", action="store_true")
    unrouted_parser = reader("unrouted", "uploads no pipeline claims, and why", False)
    unrouted_parser.add_argument("--limit", type=int, default=50)
    unrouted_parser.add_argument("--json", action="store_true")
    log_parser = reader("commands", "list received commands (e.g. --status Rejected)", False)
    log_parser.add_argument("--status", choices=["Done", "Rejected", "Failed", "InProgress"])
    check_parser = reader("check", "validate settings and reach every service (changes nothing)", False)
    check_parser.add_argument("--offline", action="store_true", help="only validate the settings")
    return top


ACTIONS = {
    "send": send,
    "check": check,
    "upload": upload_command,
    "commands": command_log,
    "runs": runs_command,
    "run": run_command,
    "targets": targets_command,
    "tail": tail_command,
    "pipelines": pipelines_command,
    "unrouted": unrouted_command,
}
ONE_RUN = ("run", "tail")  # the rest list things: "nothing yet" is their answer, not a failure


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error is one line and exit code 2, a service that cannot be reached one
    line and exit code 1; ``--debug`` shows the traceback instead."""
    args = parser().parse_args(argv)
    for option in ("settings", "connection_string", "account_url", "queue"):
        setattr(args, option, getattr(args, option, None))
    debug = getattr(args, "debug", False)
    try:
        return ACTIONS[args.action](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        code, message = explain(exc, args)
        print(message if code == 0 else f"error: {message}", file=sys.stdout if code == 0 else sys.stderr)
        return code


def explain(exc: Exception, args: argparse.Namespace) -> tuple[int, str]:
    """An exit code and one line for what went wrong (redacted: an error may quote a setting)."""
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError, ServiceRequestError

    from shared.http import ServiceError
    from shared.settings import SettingsError

    if isinstance(exc, (UserError, SettingsError)):
        return 2, redact(str(exc))
    if isinstance(exc, ResourceNotFoundError) and exc.error_code in ("TableNotFound", "ContainerNotFound"):
        what = "the runs table" if exc.error_code == "TableNotFound" else "the training container"
        if args.action in ONE_RUN:
            return 1, f"no run {shown(args.run_id)}: no runs yet ({what} does not exist yet)"
        return 0, f"no runs yet ({what} does not exist yet; the app creates it when it starts)"
    if isinstance(exc, ServiceRequestError):
        return 1, f"cannot reach storage: {redact(str(exc).splitlines()[0])[:200]} (is Azurite running? ./dev.sh up)"
    if isinstance(exc, ClientAuthenticationError):
        return 1, f"storage refused the credentials: {redact(str(exc).splitlines()[0])[:200]}"
    if isinstance(exc, ServiceError):
        return 1, str(exc)
    return 1, f"{type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '')[:300]} (--debug shows more)"
