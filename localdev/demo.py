"""The local main job: Azurite + the Azure ML emulator + the app's own triggers, on embedded defaults.

``python -m localdev.demo`` starts everything on free ports, uploads the sample training data to the
training container, and drives the registered functions (through :mod:`localdev.runner`) until the
run's BES job has finished, printing each state change and finally the runs table and the outputs.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from pathlib import Path

from localdev.runner import LocalHost
from localdev.services import Azurite, EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "emulator" / "data" / "sample-training.csv"


def say(text: str = "") -> None:
    print(text, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=3.0, help="how long the emulated job runs")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # azure-functions warns that auth levels apply only to HTTP functions; true and irrelevant here.
    logging.getLogger().addFilter(lambda record: "Auth level is not applied" not in record.getMessage())

    api_key = secrets.token_urlsafe(32)  # a fresh throwaway key for the local emulator
    say("Starting Azurite (blob, queue, table) and the Azure ML emulator on free ports ...")
    azurite = Azurite().start()
    emulator = EmulatorProcess(api_key=api_key, job_seconds=args.job_seconds).start()
    try:
        settings = {
            "AzureWebJobsStorage": azurite.connection_string,
            "TRAINING_BLOB_SOURCE": "LogsAndContainerScan",
            "TRAINING_CONTAINER": "training-data",
            "MODELS_CONTAINER": "models",
            "BES_JOBS_URL": emulator.bes_jobs_url,
            "BES_API_KEY": api_key,
            "RUNS_TABLE": "retrainingruns",
        }
        say(f"  Azurite blob endpoint  http://127.0.0.1:{azurite.blob_port}/devstoreaccount1")
        say(f"  BES jobs URL           {emulator.bes_jobs_url}")

        import function_app
        from shared.workflow import get_services

        host = LocalHost(function_app.app, settings)
        svc = get_services()
        svc.storage.ensure_container("training-data")
        say(f"\nUploading {SAMPLE.name} to training-data/ ...")
        svc.storage.blobs.get_blob_client("training-data", SAMPLE.name).upload_blob(SAMPLE.read_bytes(), overwrite=True)

        seen: dict[str, tuple[str, str | None]] = {}
        deadline = time.monotonic() + args.timeout
        finished = False
        while time.monotonic() < deadline and not finished:
            for invocation in host.scan_blobs():
                result = "ok" if invocation.ok else invocation.error
                say(f"[host] {invocation.function} ({invocation.trigger}): {result}")
            for run in svc.store.list_runs(svc.settings.pipeline):
                job_status = svc.bes.status(run.job_id).status if run.job_id else None
                if seen.get(run.run_id) != (run.status, job_status):
                    seen[run.run_id] = (run.status, job_status)
                    say(f"[run {run.run_id}] status {run.status:<10} BES job {run.job_id or '-'} {job_status or ''}")
                finished = job_status in ("Finished", "Failed", "Cancelled")
            time.sleep(0.5)

        say("\nRuns table (" + settings["RUNS_TABLE"] + "):")
        rows = [
            [r.run_id, r.status, r.blob_name, r.job_id or "-", str(r.attempts), r.history[-1].get("reason", "")[:50]]
            for r in svc.store.list_runs(svc.settings.pipeline)
        ]
        say(table(rows, ["run", "status", "blob", "BES job", "attempts", "last change"]))
        say("\nOutputs in models/:")
        for blob in svc.storage.blobs.get_container_client("models").list_blobs():
            say(f"  {blob.name}  ({blob.size} bytes)")
        evaluation = next(
            (
                b.name
                for b in svc.storage.blobs.get_container_client("models").list_blobs()
                if b.name.endswith("evaluation.csv")
            ),
            None,
        )
        if evaluation:
            text = svc.storage.blobs.get_blob_client("models", evaluation).download_blob().readall().decode()
            say("\nEvaluation (" + evaluation + "):\n  " + text.strip().replace("\n", "\n  "))
        if not finished:
            say("\nThe job did not finish in time.")
            return 1
        return 0
    finally:
        emulator.stop()
        azurite.stop()


if __name__ == "__main__":
    sys.exit(main())
