"""A local setup that stays up: ``./dev.sh up`` (``python -m localdev.up --help``).

Azurite, the Azure ML emulator and the app's functions (through :mod:`localdev.runner`, the local
stand-in for the Functions host) on fixed ports, until Ctrl-C or SIGTERM. It writes a
``local.settings.json`` that the CLI (``python -m shared``), ``func start`` and Storage Explorer can use,
and prints the status page and the next commands to try. Everything it started is stopped, and its
temporary data removed, however it ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import socket
import sys
import time
from pathlib import Path

from localdev.services import AZURITE_ACCOUNT, Azurite, EmulatorProcess, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
# Azurite's own defaults (what UseDevelopmentStorage=true means), the emulator's, and Core Tools'.
PORTS = {"blob": 10000, "queue": 10001, "table": 10002, "emulator": 8900, "http": 7071}
MARKER = "AUTOPILOT_LOCAL_SETUP"  # a settings file holding this was written here, and may be rewritten


class SetupError(Exception):
    """A reason the setup cannot start, said in one line."""


def settings_file_values(azurite: Azurite, emulator: EmulatorProcess, api_key: str, poll_seconds: int) -> dict:
    """The app settings of the local setup: the same shape as ``local.settings.sample.json``."""
    defaults = (azurite.blob_port, azurite.queue_port, azurite.table_port) == (
        PORTS["blob"],
        PORTS["queue"],
        PORTS["table"],
    )
    return {
        MARKER: "written by ./dev.sh up; rewritten on its next start",
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true" if defaults else azurite.connection_string,
        "TRAINING_BLOB_SOURCE": "LogsAndContainerScan",
        "TRAINING_CONTAINER": "training-data",
        "MODELS_CONTAINER": "models",
        "RUNS_TABLE": "retrainingruns",
        "COMMANDS_QUEUE": "retraining-commands",
        "POLL_SCHEDULE": f"*/{poll_seconds} * * * * *",
        "GATE_METRIC": "AUC",
        "GATE_MIN": "0.6",
        "DEPLOY_TARGETS": json.dumps(emulator.deploy_targets(api_key, classic="classic-retrain", arm="arm-census")),
        "ARM_POLL_SECONDS": "0.5",
        **emulator.app_settings(),  # BES, its key, the emulated managed identity
    }


def write_settings(path: Path, values: dict, http_port: int) -> None:
    """Write ``local.settings.json``, but never over one that this command did not write."""
    if path.exists():
        try:
            ours = MARKER in (json.loads(path.read_text(encoding="utf-8")).get("Values") or {})
        except (ValueError, AttributeError):
            ours = False
        if not ours:
            raise SetupError(f"{path} exists and was not written by ./dev.sh up: move it, or pass --settings-file")
    document = {"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": http_port}}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def check_free(ports: dict[str, int]) -> None:
    for what, port in ports.items():
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise SetupError(
                    f"port {port} ({what}) is in use: stop what holds it (another Azurite or ./dev.sh up?) "
                    f"or pass --{what}-port"
                ) from None


def guide(base: str, key: str, settings_file: Path, host: bool) -> str:
    """What to try next, with the settings option only where the CLI would not find the file itself."""
    local = settings_file.resolve() == (Path.cwd() / "local.settings.json").resolve()
    where = "" if local else f" --settings {settings_file}"
    lines = ["", f"Settings written to {settings_file} (the CLI, func start and Storage Explorer can use it)."]
    if host:
        lines += [f"Status page: {base}/api/status?code={key}", f"Status API:  {base}/api/runs?code={key}"]
        webhook = f"{base}/runtime/webhooks/eventgrid?functionName=nudge_on_ml_event&code={key}"
        lines += [
            "Azure ML events (Event Grid's webhook; a sample CloudEvent from the spec):",
            f"  curl -X POST '{webhook}' -H 'Content-Type: application/cloudevents+json' "
            "-d @emulator/data/eventgrid/run_status_changed.cloudevent.json",
        ]
    else:
        lines += ["The app's functions are not running (--no-host): start them with `func start`."]
    steps = [
        ("upload emulator/data/sample-training.csv", "new training data: a run starts"),
        ("runs", "the runs, newest first"),
        ("tail <run id>", "follow one until it ends"),
        ("targets", "what is live where"),
        ("send rollback classic-retrain --reason why", "put the previous model back"),
        ("check", "reach every service, change nothing"),
    ]
    commands = [f".venv/bin/python -m shared {step}{where}" for step, _ in steps]
    width = max(map(len, commands))
    lines += ["", "Next, in another terminal (from the repository root):"]
    lines += [f"  {command.ljust(width)}  # {why}" for command, (_, why) in zip(commands, steps, strict=True)]
    return "\n".join([*lines, "", "Ctrl-C stops everything."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev.sh up", description=__doc__.splitlines()[0])
    for what, port in PORTS.items():
        parser.add_argument(f"--{what}-port", type=int, default=port, help=f"default {port}")
    parser.add_argument("--settings-file", type=Path, default=Path("local.settings.json"))
    parser.add_argument("--data", type=Path, help="keep Azurite's data in this folder (default: a temporary one)")
    parser.add_argument("--job-seconds", type=float, default=5.0, help="how long each emulated training job runs")
    parser.add_argument("--poll-seconds", type=int, default=5, choices=range(1, 60), metavar="1-59")
    parser.add_argument("--no-host", action="store_true", help="only Azurite and the emulator (for `func start`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addFilter(lambda record: "Auth level is not applied" not in record.getMessage())
    for name in ("shared", "localdev"):
        logging.getLogger(name).setLevel(logging.INFO)

    ports = {what: getattr(args, f"{what}_port") for what in PORTS}
    if args.no_host:
        ports.pop("http")
    api_key = secrets.token_urlsafe(32)  # a throwaway key for the local emulator
    azurite = emulator = host = None
    try:
        with stop_on_sigterm():
            check_free(ports)
            if args.data:
                args.data.mkdir(parents=True, exist_ok=True)
            print("Starting Azurite and the Azure ML emulator ...", flush=True)
            azurite = Azurite(
                location=str(args.data) if args.data else None,
                blob_port=ports["blob"],
                queue_port=ports["queue"],
                table_port=ports["table"],
            ).start()
            emulator = EmulatorProcess(
                api_key=api_key,
                port=ports["emulator"],
                job_seconds=args.job_seconds,
                storage_connection_string=azurite.connection_string,
            ).start()
            values = settings_file_values(azurite, emulator, api_key, args.poll_seconds)
            write_settings(args.settings_file, values, args.http_port)
            print(
                f"  Azurite      http://127.0.0.1:{azurite.blob_port}/{AZURITE_ACCOUNT} (queue "
                f"{azurite.queue_port}, table {azurite.table_port}; the well-known development key)"
            )
            print(f"  emulator     {emulator.url}")
            key = secrets.token_urlsafe(16)
            base = ""
            if not args.no_host:
                import function_app
                from localdev.runner import LocalHost
                from shared.storage import Storage

                values["AzureWebJobsStorage"] = azurite.connection_string
                Storage(azurite.connection_string).ensure_container(values["TRAINING_CONTAINER"])
                host = LocalHost(function_app.app, values, visibility_timeout=5)
                base = host.serve_http(key, port=ports["http"])
                print(f"  functions    {', '.join(sorted(host.functions))}")
            print(guide(base, key, args.settings_file, host is not None), flush=True)
            while True:
                if host is not None:
                    for invocation in host.scan_blobs() + host.tick_timers() + host.pump_queues():
                        if not invocation.ok:
                            print(f"[host] {invocation.function} failed: {invocation.error}", flush=True)
                time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
        return 0
    except (SetupError, RuntimeError) as exc:
        print(f"./dev.sh up: {exc}", file=sys.stderr)
        return 2
    finally:
        if host is not None:
            host.stop()
        for process in (emulator, azurite):
            if process is not None:
                process.stop()


if __name__ == "__main__":
    sys.exit(main())
