"""The local main job: the whole retraining loop on embedded defaults.

``python -m localdev.demo`` starts Azurite and the Azure ML emulator on free ports and drives the
functions registered in ``function_app.app`` (blob trigger, poll timer, command queue) through
:mod:`localdev.runner`. It uploads good training data — trained, judged, deployed to a classic
endpoint and a New (ARM) web service, verified, and scoring changes — then degraded data, which the
gate rejects while the live model stays. It prints each state change and ends with a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from localdev.runner import LocalHost
from localdev.services import Azurite, EmulatorProcess, stop_on_sigterm
from shared.status import STEPS
from shared.terminal import Progress, print_table

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "emulator" / "data" / "sample-training.csv"
PROBE = [
    {"age": 0.5, "income": -1.0, "tenure": 1.2, "visits": 0.1, "balance": -0.3},
    {"age": -1.5, "income": 1.1, "tenure": -0.8, "visits": 0.0, "balance": 0.4},
]


def say(text: str = "") -> None:
    print(text, flush=True)


def fit(line: str) -> str:
    """One line that fits the terminal, cut at a word with an ellipsis (not mid-word)."""
    width = max(shutil.get_terminal_size((120, 24)).columns - 1, 60)
    return line if len(line) <= width else line[: width - 1].rsplit(" ", 1)[0] + " …"


def table(rows: list[list[str]], header: list[str]) -> None:
    print_table(rows, header, empty="(none)")


def scores(emulator: EmulatorProcess, api_key: str) -> dict[str, list[float]]:
    from localdev.scoring import arm_score, classic_score

    return {
        "classic-retrain": classic_score(emulator.info, api_key, PROBE),
        "arm-census": arm_score(emulator.info, api_key, PROBE),
    }


def main(argv: list[str] | None = None) -> int:
    with stop_on_sigterm():  # a terminated demo still stops Azurite and the emulator, and cleans up
        try:
            return demo(argv)
        except KeyboardInterrupt:
            say("\nStopped.")
            return 130


def demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=2.0, help="how long each emulated BES job runs")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on a run after this many seconds")
    parser.add_argument(
        "--keep-open",
        action="store_true",
        help="keep everything (and the status page) running after the summary, until Ctrl-C",
    )
    parser.add_argument(
        "--pipelines",
        action="store_true",
        help="two pipelines side by side (census and churn, each its own training service), and an "
        "upload no pipeline claims",
    )
    parser.add_argument(
        "--governance",
        action="store_true",
        help="pre-flight checks, a manual approval on the ARM web service, and the notifications they send",
    )
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="an Azure ML v2 pipeline's models rolled out to a managed online endpoint through shadow and "
        "canary, and a degraded one rolled back automatically",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # azure-functions warns that auth levels apply only to HTTP functions; true and irrelevant here.
    logging.getLogger().addFilter(lambda record: "Auth level is not applied" not in record.getMessage())

    api_key = secrets.token_urlsafe(32)  # a throwaway key for the local emulator
    host = None
    say("Starting Azurite (blob, queue, table) and the Azure ML emulator on free ports ...")
    azurite = Azurite().start()
    emulator = EmulatorProcess(
        api_key=api_key, job_seconds=args.job_seconds, storage_connection_string=azurite.connection_string
    ).start()
    try:
        info = emulator.info
        targets = emulator.deploy_targets(api_key, classic="classic-retrain", arm="arm-census")
        settings = {
            "AzureWebJobsStorage": azurite.connection_string,
            "TRAINING_BLOB_SOURCE": "LogsAndContainerScan",
            "TRAINING_CONTAINER": "training-data",
            "MODELS_CONTAINER": "models",
            "RUNS_TABLE": "retrainingruns",
            "COMMANDS_QUEUE": "retraining-commands",
            "POLL_SCHEDULE": "*/2 * * * * *",
            "GATE_METRIC": "AUC",
            "GATE_MIN": "0.6",
            "DEPLOY_TARGETS": json.dumps(targets),
            "ARM_POLL_SECONDS": "0.2",
            **emulator.app_settings(),  # BES and the emulated App Service's managed identity
        }
        if args.pipelines:
            settings.update(two_pipelines(emulator, api_key, settings))
        if args.governance:
            settings.update(governance_settings(emulator, targets))
            os.environ.update(settings)  # before the app is imported: it registers the events trigger then
        if args.rollout:
            settings = rollout_settings(emulator, settings)
        say(f"  Azurite blob endpoint  http://127.0.0.1:{azurite.blob_port}/devstoreaccount1")
        say(f"  BES jobs URL           {info['bes_jobs_url']}")
        say(f"  deploy targets         classic endpoint 'retrain', ARM web service {info['arm_resource_id']}")

        import function_app
        from emulator.sample_data import generate
        from shared.workflow import get_services

        host = LocalHost(function_app.app, settings, visibility_timeout=1)
        function_key = secrets.token_urlsafe(16)
        base = host.serve_http(function_key)
        say(f"  status page            {base}/api/status?code={function_key}")
        say(f"  status API             {base}/api/runs?code={function_key}  (and /api/runs/<id>, /api/targets)")
        svc = get_services()
        svc.storage.ensure_container("training-data")
        if args.pipelines:
            ok = pipelines_story(svc, host, args.timeout)
            keep_open(args, host, base, function_key)
            return 0 if ok else 1
        if args.governance:
            ok = governance_story(svc, host, emulator, args.timeout)
            keep_open(args, host, base, function_key)
            return 0 if ok else 1
        if args.rollout:
            ok = rollout_story(svc, host, emulator, args.timeout)
            keep_open(args, host, base, function_key)
            return 0 if ok else 1
        before = scores(emulator, api_key)

        seen: dict[str, int] = {}  # history entries already shown, per run

        def upload_and_follow(name: str, data: bytes) -> object:
            say(f"\nUploading {name} to training-data/ ...")
            svc.storage.blobs.get_blob_client("training-data", name).upload_blob(data, overwrite=True)
            deadline = time.monotonic() + args.timeout
            with Progress(len(STEPS)) as progress:
                while time.monotonic() < deadline:
                    for invocation in host.scan_blobs() + host.tick_timers() + host.pump_queues():
                        if not invocation.ok:
                            progress.note(fit(f"  [host] {invocation.function} failed: {invocation.error}"))
                    for run in svc.store.list_runs(svc.settings.pipeline):
                        for entry in run.history[seen.get(run.run_id, 0) :]:
                            if "to" in entry:  # each state change, as recorded
                                by = entry["by"].split("/")[0]
                                progress.note(
                                    fit(f"  [run {run.run_id}] {entry['to']:<10} by {by:<13} {entry['reason']}")
                                )
                        seen[run.run_id] = len(run.history)
                        if run.blob_name == name:
                            if run.ended:
                                return run
                            step = STEPS.index(run.status) + 1 if run.status in STEPS else 0
                            progress.update(step, f"{name}: {run.status}")
                    time.sleep(0.25)
            raise TimeoutError(f"the run for {name} did not end within {args.timeout:.0f}s")

        good = upload_and_follow("census-2026-11.csv", SAMPLE.read_bytes())
        after_good = scores(emulator, api_key)
        bad = upload_and_follow("census-2026-12-corrupted.csv", generate(600, seed=5, label_noise=0.45).encode())
        after_bad = scores(emulator, api_key)

        say("\nRuns (table retrainingruns):")
        (
            table(
                [
                    [
                        r.run_id,
                        r.status,
                        r.blob_name,
                        f"{r.metrics.get('AUC', float('nan')):.4f}",
                        ", ".join(f"{t}: {v['status']}" for t, v in r.targets.items()) or "-",
                    ]
                    for r in svc.store.list_runs(svc.settings.pipeline)
                ],
                ["run", "status", "training data", "AUC", "targets"],
            )
        )
        say("\nGate decisions for the second upload:")
        for name, decision in bad.gate.items():
            say(f"  {name}: {'approved' if decision['approved'] else 'rejected'} - {decision['reason']}")
        say("\nLive on each target:")
        rows = []
        for target in svc.settings.targets:
            state = svc.targets.get(target.name)
            rows.append(
                [
                    target.name,
                    target.kind,
                    state.live_run or "-",
                    f"{(state.live_metrics or {}).get('AUC', 0):.4f}",
                    str(state.since)[:19],
                    svc.deployer(target).live() or "-",
                ]
            )
        table(rows, ["target", "kind", "live run", "AUC", "since", "service reports"])
        say("\nScoring the same two rows (probability of the positive class):")
        (
            table(
                [
                    [
                        name,
                        *(f"{p:.4f}" for p in before[name]),
                        *(f"{p:.4f}" for p in after_good[name]),
                        *(f"{p:.4f}" for p in after_bad[name]),
                    ]
                    for name in before
                ],
                [
                    "target",
                    "initial #1",
                    "initial #2",
                    "after good #1",
                    "after good #2",
                    "after bad #1",
                    "after bad #2",
                ],
            )
        )
        ok = good.status == "Deployed" and bad.status == "Rejected" and after_bad == after_good and after_good != before
        say(
            "\n"
            + (
                "OK: the better model went live on both targets; the worse one was rejected and the live model stayed."
                if ok
                else "UNEXPECTED: see the runs above."
            )
        )
        keep_open(args, host, base, function_key)
        return 0 if ok else 1
    finally:
        if host is not None:
            host.stop()
        emulator.stop()
        azurite.stop()


def keep_open(args, host, base: str, function_key: str) -> None:
    if not args.keep_open:
        say("\nDone; everything it started is stopped. To keep the page up: ./dev.sh demo --keep-open;")
        say("to run the app yourself: ./dev.sh up (see the README's 'Run it yourself').")
    else:
        say(f"\nStill serving; status page: {base}/api/status?code={function_key}  (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                host.scan_blobs() + host.tick_timers() + host.pump_queues()
                time.sleep(1)


def rollout_settings(emulator: EmulatorProcess, settings: dict) -> dict:
    """One Azure ML v2 pipeline (Command jobs, models registered as ``census``) whose target is the
    emulator's managed online endpoint: 20% mirrored, then a 25% canary baked for 6 s, probed with 10 rows."""
    workspace = emulator.info["v2_workspace"]
    emulator.admin("POST", "v2/datastores", {"name": "autopilot_training", "container": "training-data"})
    trainer = {
        "kind": "azureml",
        "workspace": workspace,
        "datastore": "autopilot_training",
        "model_name": "census",
        "management_url": emulator.url,
        "job": {"command": "python train.py", "environmentId": "azureml:sklearn:1", "computeId": "cpu"},
    }
    target = {
        "name": "census-online",
        "kind": "azureml-online",
        "endpoint": f"{workspace}/onlineEndpoints/{emulator.info['v2_online_endpoint']}",
        "management_url": emulator.url,
        "rollout": {
            "mirror_percent": 20,
            "mirror_minutes": 0.1,
            "canary_percent": 25,
            "bake_minutes": 0.1,
            "probe_rows": 10,
            "max_probe_error_rate": 0.0,
        },
        "keep_deployments": 2,
    }
    pipeline = {
        "name": "census",
        "blob_prefix": "census/",
        "trainer": trainer,
        "targets": ["census-online"],
        "gate": {"metric": "AUC", "min": 0.6, "min_improvement": -0.05},
    }
    say(f"  online endpoint        {target['endpoint']}")
    say("  rollout                20% mirrored for 6 s, then a 25% canary baked 6 s, 10 rows probed each tick")
    flat = {k: v for k, v in settings.items() if k not in ("BES_JOBS_URL", "BES_API_KEY", "GATE_METRIC", "GATE_MIN")}
    return {
        **flat,
        "PIPELINES": json.dumps([pipeline]),
        "DEPLOY_TARGETS": json.dumps([target]),
        "POLL_SCHEDULE": "*/1 * * * * *",
    }


def rollout_story(svc, host, emulator: EmulatorProcess, timeout: float) -> bool:
    """A first model gets the endpoint's traffic; the next goes through shadow and canary to 100%; a
    degraded one (healthy alone, failing under live traffic) is rolled back with the live model kept."""
    from emulator.sample_data import generate

    shown: dict[str, int] = {}

    def endpoint() -> dict:
        return next(e for e in emulator.admin("GET", "v2/online") if e["endpoint"] == "census-online")

    def shares(weights: dict) -> str:
        return " / ".join(f"{name} {share}%" for name, share in sorted(weights.items())) or "none"

    def upload_and_roll(name: str, data: bytes):
        say(f"\nUploading {name} ...")
        svc.storage.blobs.get_blob_client("training-data", name).upload_blob(data, overwrite=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for invocation in host.scan_blobs() + host.tick_timers() + host.pump_queues():
                if not invocation.ok:
                    say(fit(f"  [host] {invocation.function} failed: {invocation.error}"))
            run = next((r for r in svc.store.list_runs("census") if r.blob_name == name), None)
            state = svc.targets.get("census-online")
            doc = state.rollout or {}
            if run is not None and doc.get("run") == run.run_id:
                for stage in doc["stages"][shown.get(run.run_id, 0) :]:  # the maps the stage sets
                    mirror = f", mirror {shares(doc['mirror'])}" if doc.get("mirror") else ""
                    probe = doc["probes"][-1] if doc.get("probes") else None
                    checked = f"; last probe {probe['errors']}/{probe['rows']} errors" if probe else ""
                    say(fit(f"  {stage['stage']:<10} traffic {shares(doc['traffic'])}{mirror}{checked}"))
                shown[run.run_id] = len(doc["stages"])
            if run is not None and run.ended:
                return run, svc.targets.get("census-online")
            time.sleep(0.2)
        raise TimeoutError(f"the run for {name} did not end within {timeout:.0f}s")

    first, _ = upload_and_roll("census/2026-10.csv", generate(700, seed=31, label_noise=0.1).encode())
    say(f"  run {first.run_id}: {first.status} (a first deploy: nothing live to mirror or split with)")
    second, after_second = upload_and_roll("census/2026-11.csv", generate(700, seed=32, label_noise=0.1).encode())
    say(f"  run {second.run_id}: {second.status}; kept {', '.join(after_second.rollout['kept'])}")
    emulator.admin("POST", "faults", {"route": "v2.online.degrade", "fail": "CUDA out of memory", "path": "ap-"})
    say("\n(The emulator now degrades every new deployment once it has live traffic.)")
    third, after_third = upload_and_roll("census/2026-12.csv", generate(700, seed=33, label_noise=0.1).encode())
    rollout = after_third.rollout
    say(f"  run {third.run_id}: {third.status}; census-online {third.targets['census-online']['status']}")
    say(fit(f"  why: {rollout['reason']}"))
    final = endpoint()
    say("\nThe endpoint now:")
    table(
        [
            [name, str(final["traffic"].get(name, 0)), d["state"], d["model"].rsplit("/", 1)[-1], str(d["failed"])]
            for name, d in sorted(final["deployments"].items())
        ],
        ["deployment", "traffic %", "state", "model version", "failed requests"],
    )
    kept = after_third.live_run == second.run_id and final["traffic"] == {after_second.rollout["deployment"]: 100}
    ok = first.status == "Deployed" and second.status == "Deployed" and third.status == "Failed" and kept
    shadowed = any(s["stage"] == "shadow" for s in after_second.rollout["stages"])
    say(
        "\n"
        + (
            f"OK: run {second.run_id}'s model reached all traffic through shadow and canary"
            f"{'' if shadowed else ' (no shadow?)'}; the degraded model was rolled back at the canary, "
            f"and {second.run_id}'s model is still live."
            if ok and shadowed
            else "UNEXPECTED: see above."
        )
    )
    return ok and shadowed


def governance_settings(emulator: EmulatorProcess, targets: list[dict]) -> dict:
    """Pre-flight rules, manual approval on the ARM web service, and both event receivers (on the emulator)."""
    topic_key, hook_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    emulator.admin("POST", "receivers", {"topic_key": topic_key, "webhook_secret": hook_secret})
    targets[1].update(approval="manual", approval_hours=24)
    say("  governance             pre-flight: header must have age, label; arm-census needs a person's approval;")
    say("                         events to an Event Grid topic and a signed webhook (both on the emulator)")
    return {
        "PREFLIGHT": json.dumps({"required_columns": ["age", "label"], "min_rows": 100}),
        "DEPLOY_TARGETS": json.dumps(targets),
        "NOTIFY_EVENTGRID_TOPIC": f"{emulator.url}/eventgrid/autopilot/api/events",
        "NOTIFY_EVENTGRID_KEY": topic_key,
        "NOTIFY_WEBHOOK_URL": f"{emulator.url}/webhook/ops",
        "NOTIFY_WEBHOOK_SECRET": hook_secret,
    }


def governance_story(svc, host, emulator: EmulatorProcess, timeout: float) -> bool:
    """An upload that cannot train (Invalid, no job); a good one that deploys to the classic endpoint and
    waits for approval on the ARM web service; the approval; and the events all of it sent."""
    from emulator.sample_data import generate

    def pump(until, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host.scan_blobs() + host.tick_timers() + host.pump_queues()
            found = until()
            if found:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")

    def run_of(name: str):
        return next((r for r in svc.store.list_runs("default") if r.blob_name == name), None)

    say("\nUploading census-no-label.csv (its header lacks the label column) ...")
    svc.storage.blobs.get_blob_client("training-data", "census-no-label.csv").upload_blob(
        b"age,income\n" + b"0.1,0.2\n" * 200, overwrite=True
    )
    invalid = pump(lambda: run_of("census-no-label.csv"), "the invalid upload's run")
    say(fit(f"  [run {invalid.run_id}] {invalid.status}: {invalid.error['message']}"))
    say(f"  jobs sent to BES for it: {sum(1 for j in emulator.admin('GET', 'jobs'))}")

    say("\nUploading census-2026-11.csv ...")
    svc.storage.blobs.get_blob_client("training-data", "census-2026-11.csv").upload_blob(
        generate(800, seed=3, label_noise=0.1).encode(), overwrite=True
    )
    waiting = pump(
        lambda: (r := run_of("census-2026-11.csv")) and r.status == "AwaitingApproval" and r, "the approval wait"
    )
    for name, target in sorted(waiting.targets.items()):
        say(fit(f"  {name}: {target['status']} - {target['reason']}"))

    say(f"\nana@example.com approves run {waiting.run_id} on arm-census (an approve command on the queue) ...")
    command = {
        "type": "approve",
        "version": 1,
        "request_id": f"approve-{waiting.run_id}",
        "run_id": waiting.run_id,
        "target": "arm-census",
        "approver": "ana@example.com",
        "reason": "lift checked on the holdout",
    }
    svc.storage.queue(svc.settings.commands_queue).send_message(json.dumps(command))
    done = pump(lambda: (r := run_of("census-2026-11.csv")) and r.ended and r, "the approved deploy")
    for name, target in sorted(done.targets.items()):
        approval = target.get("approval")
        by = f" (approved by {approval['by']}: {approval['reason']})" if approval else ""
        say(fit(f"  {name}: {target['status']}{by}"))
    say(f"  run {done.run_id}: {done.status}")

    expected = {"Autopilot.Run.Invalid", "Autopilot.Run.AwaitingApproval", "Autopilot.Run.Deployed"}
    received = pump(
        lambda: (
            (got := emulator.admin("GET", "received"))
            and {e["event"]["type"] for e in got if e["receiver"] == "webhook"} >= expected
            and {e["event"]["type"] for e in got if e["receiver"] == "eventgrid"} >= expected
            and got
        ),
        "the notifications",
    )
    say("\nEvents received (CloudEvents; the webhook's HMAC signature verified by the receiver):")
    table(
        [[e["receiver"], e["event"]["type"], e["event"]["subject"]] for e in received],
        ["receiver", "type", "subject"],
    )
    ok = invalid.status == "Invalid" and done.status == "Deployed" and len(received) == 6
    say(
        "\n"
        + (
            "OK: the upload that could not train spent no job; the approved model went live on both targets "
            "after the approval; each event arrived once at each receiver."
            if ok
            else "UNEXPECTED: see above."
        )
    )
    return ok


CHURN_SERVICE = "c4a1f0e2d3b4455687a9b0c1d2e3f405"


def two_pipelines(emulator: EmulatorProcess, api_key: str, settings: dict) -> dict:
    """Settings for two pipelines: census (the seeded training service, AUC, the classic endpoint) and
    churn (a second training service with a key of its own, Accuracy, the ARM web service)."""
    churn_key = secrets.token_urlsafe(32)
    churn_jobs = emulator.add_training_service(CHURN_SERVICE, churn_key)
    pipelines = [
        {
            "name": "census",
            "blob_prefix": "census/",
            "trainer": {"kind": "bes", "jobs_url": settings["BES_JOBS_URL"], "api_key_setting": "CENSUS_BES_KEY"},
            "targets": ["classic-retrain"],
            "gate": {"metric": "AUC", "min": 0.6},
        },
        {
            "name": "churn",
            "blob_prefix": "churn/",
            "trainer": {"kind": "bes", "jobs_url": churn_jobs, "api_key_setting": "CHURN_BES_KEY"},
            "targets": ["arm-census"],
            "gate": {"metric": "Accuracy", "min": 0.6},
        },
        {
            "name": "fraud",
            "blob_prefix": "fraud/",
            "trainer": {
                "kind": "azureml",
                "workspace": emulator.info["v2_workspace"],
                "datastore": emulator.info["v2_datastore"],
                "batch_endpoint": emulator.info["v2_batch_endpoint"],
                "model_name": "fraud",
                "management_url": emulator.url,
            },
            "gate": {"metric": "AUC", "min": 0.6},
        },
        {
            "name": "retail",
            "blob_prefix": "retail/",
            "trainer": {
                "kind": "azureml",
                "workspace": emulator.info["v2_workspace"],
                "datastore": emulator.info["v2_datastore"],
                "job": {
                    "command": "python train.py --data ${{inputs.training_data}} --model ${{outputs.model}}",
                    "environmentId": "azureml:sklearn-1.5:1",
                    "computeId": "cpu-cluster",
                },
                "model_name": "retail",
                "management_url": emulator.url,
            },
            "gate": {"metric": "AUC", "min": 0.6},
        },
    ]
    say("  pipelines              census (census/ -> classic-retrain, AUC), churn (churn/ -> arm-census, Accuracy),")
    say("                         fraud (fraud/ -> Azure ML v2: a batch-endpoint training pipeline, model registry),")
    say("                         retail (retail/ -> Azure ML v2: a Command job, model registry)")
    return {
        "PIPELINES": json.dumps(pipelines),
        "CENSUS_BES_KEY": settings.pop("BES_API_KEY"),
        "CHURN_BES_KEY": churn_key,
        "BES_JOBS_URL": "",
        "GATE_MIN": "",
    }


def pipelines_story(svc, host, timeout: float) -> bool:
    """Uploads for three pipelines at once, trained side by side on their own services (two classic
    training services, one Azure ML v2 workspace); then an upload under no pipeline's prefix, recorded
    with the reason."""
    from emulator.sample_data import generate

    uploads = {
        "census/2026-11.csv": SAMPLE.read_bytes(),
        "churn/2026-11.csv": generate(800, seed=8, label_noise=0.1).encode(),
        "fraud/2026-11.csv": generate(800, seed=9, label_noise=0.1).encode(),
        "retail/2026-11.csv": generate(800, seed=10, label_noise=0.1).encode(),
    }
    say(f"\nUploading {', '.join(uploads)} at once ...")
    for name, data in uploads.items():
        svc.storage.blobs.get_blob_client("training-data", name).upload_blob(data, overwrite=True)
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    ended: dict[str, object] = {}
    while time.monotonic() < deadline and len(ended) < len(uploads):
        for invocation in host.scan_blobs() + host.tick_timers() + host.pump_queues():
            if not invocation.ok:
                say(f"  [host] {invocation.function} failed: {invocation.error}")
        for pipeline in ("census", "churn", "fraud", "retail"):
            for run in svc.store.list_runs(pipeline):
                for entry in run.history[seen.get(run.run_id, 0) :]:
                    if "to" in entry:
                        say(fit(f"  [{pipeline:<6} {run.run_id[-8:]}] {entry['to']:<10} {entry['reason']}"))
                seen[run.run_id] = len(run.history)
                if run.ended:
                    ended[run.blob_name] = run
        time.sleep(0.25)
    say("\nUploading finance/q4.csv (under no pipeline's prefix) ...")
    svc.storage.blobs.get_blob_client("training-data", "finance/q4.csv").upload_blob(
        SAMPLE.read_bytes(), overwrite=True
    )
    host.scan_blobs()
    unrouted = svc.store.list_unrouted()
    for record in unrouted:
        say(f"  recorded, nothing started: {record['blob_name']}: {record['reason']}")
    say("\nPipelines:")
    from shared import status

    rows = [
        [v["name"], v["blob_prefix"], v["trainer"], v["gate"]["metric"], ", ".join(v["targets"]) or "-"]
        for v in status.list_pipelines(svc)
    ]
    table(rows, ["pipeline", "uploads under", "trainer", "gate", "targets"])
    say("\nLive on each target:")
    rows = [
        [t["name"], t["pipeline"], t["live_run"] or "-", f"{t['metric']['name']} {t['metric']['value'] or 0:.4f}"]
        for t in status.list_targets(svc)
    ]
    table(rows, ["target", "pipeline", "live run", "metric"])
    v2 = [ended.get("fraud/2026-11.csv"), ended.get("retail/2026-11.csv")]
    for run in v2:
        model = getattr(run, "model", None) or {}
        say(f"\nRegistered in the Azure ML workspace: {model.get('name', '-')} version {model.get('version', '-')}")
        say(f"  {model.get('id', '(none)')}")
    deployed = [run for name, run in ended.items() if name.startswith(("census/", "churn/"))]
    ok = (
        len(ended) == 4
        and all(getattr(run, "status", None) == "Deployed" for run in deployed)
        and all(getattr(run, "status", None) == "Finished" and getattr(run, "model", None) for run in v2)
        and unrouted
    )
    say(
        "\n"
        + (
            "OK: each pipeline trained on its own service; the classic ones went live on their own targets, "
            "the v2 ones registered their models; the unclaimed upload was recorded."
            if ok
            else "UNEXPECTED: see the runs above."
        )
    )
    return bool(ok)


if __name__ == "__main__":
    sys.exit(main())
