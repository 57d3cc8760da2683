"""Benchmarks: each figure measured beside its baseline in the same run, printed as JSON and written to
bench/results/latest.json. Not part of the test run.

    ./dev.sh bench                      every figure (about two minutes; the 1 GB blob needs 1 GB of disk)
    ./dev.sh bench requests burst       only the figures named
    ./dev.sh bench --large-mb 256       a smaller "large" blob for the memory figure

Azurite and the Azure ML emulator are started on free ports, as in the tests.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import requests

from emulator import sample_data
from localdev.services import Azurite, EmulatorProcess, fresh_names

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"

API_KEY = secrets.token_urlsafe(32)  # a throwaway key for the local emulator
SMALL = sample_data.generate(300, seed=1).encode()


class Lab:
    """Azurite, the emulator, and fresh app settings (own containers, table, queue) per figure."""

    def __init__(self) -> None:
        self.azurite = Azurite().start()
        self.emulator = EmulatorProcess(
            api_key=API_KEY, job_seconds=0.2, storage_connection_string=self.azurite.connection_string
        ).start()
        self.emulator.admin("POST", "config", {"lro_seconds": 0.05})
        self._environ = dict(os.environ)  # each figure's settings replace the last figure's, never add to them

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "AzureWebJobsStorage": self.azurite.connection_string,
            **self.emulator.app_settings(),
            **fresh_names(),
            "TRAINING_BLOB_SOURCE": "LogsAndContainerScan",
            "POLL_SCHEDULE": "0 * * * * *",
            "DEPLOY_TARGETS": json.dumps(self.emulator.deploy_targets(API_KEY)),
            "ARM_POLL_SECONDS": "0.05",
            **extra,
        }

    def services(self, env: dict[str, str]):
        """The app's services for ``env``, which also becomes the process environment (as in the worker)."""
        from shared import settings, workflow

        os.environ.clear()
        os.environ.update({**self._environ, **env})
        settings.get_settings.cache_clear()
        workflow.get_services.cache_clear()
        svc = workflow.get_services()
        svc.storage.ensure_container(env["TRAINING_CONTAINER"])
        return svc

    def upload(self, env: dict[str, str], name: str, data: bytes = SMALL):
        from azure.storage.blob import BlobClient

        client = BlobClient.from_connection_string(env["AzureWebJobsStorage"], env["TRAINING_CONTAINER"], name)
        client.upload_blob(data, overwrite=True)
        return client

    def job_seconds(self, seconds: float) -> None:
        self.emulator.admin("POST", "config", {"job_seconds": seconds})

    def jobs(self, env: dict[str, str]) -> list[dict]:
        """The emulated BES jobs trained on ``env``'s training container."""
        prefix = env["TRAINING_CONTAINER"] + "/"
        return [
            j
            for j in self.emulator.admin("GET", "jobs")
            if j["request"]["Inputs"]["input1"]["RelativeLocation"].startswith(prefix)
        ]

    def wait_jobs_ended(self, env: dict[str, str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(j["status"] in ("NotStarted", "Running") for j in self.jobs(env)):
            if time.monotonic() > deadline:
                raise RuntimeError("emulated jobs did not end")
            time.sleep(0.05)

    def ml_requests(self, since: float) -> collections.Counter:
        """Requests the emulator served since ``since``, by route (server side, so nothing is missed)."""
        return collections.Counter(r["route"] for r in self.emulator.admin("GET", "requests") if r["at"] >= since)

    def stop(self) -> None:
        self.emulator.stop()
        self.azurite.stop()


@contextlib.contextmanager
def storage_requests(lab: Lab):
    """Count every HTTP request this process sends to Azurite, by service and method. The Azure SDKs send
    through ``requests`` (azure-core's default transport), so one hook sees them all, retries included."""
    ports = {lab.azurite.blob_port: "blob", lab.azurite.queue_port: "queue", lab.azurite.table_port: "table"}
    counts: collections.Counter = collections.Counter()
    original = requests.Session.send

    def send(session, request, **kwargs):
        service = ports.get(urlsplit(request.url).port)
        if service:
            counts[f"{service} {request.method}"] += 1
        return original(session, request, **kwargs)

    requests.Session.send = send
    try:
        yield counts
    finally:
        requests.Session.send = original


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The child's environment: the app's settings, and bytecode on (as pip leaves site-packages)."""
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**inherited, **env, "PYTHONPATH": str(ROOT)}


def compile_app() -> None:
    """Compile the app's modules first, as pip did the libraries': a cold start then compares imports
    with imports, not our compiler time with their cached bytecode."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "shared", "function_app.py"], cwd=ROOT, env=child_env({}), check=True
    )


def child(mode: str, env: dict[str, str], blob: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.child", mode, blob],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"bench.child {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- figures -------------------------------------------------------------------------------------------


def cold_start(lab: Lab, repeats: int = 9) -> dict:
    """Fresh interpreter: import function_app and run the first blob-trigger invocation, against a script
    that makes the same service calls directly. Each sample uses its own table (a first run)."""
    lab.job_seconds(0.2)
    compile_app()
    samples: dict[str, list[dict]] = {"app": [], "baseline": [], "host": []}
    for i in range(repeats):  # paired: each app sample beside a baseline and a floor taken just before
        for mode in ("host", "baseline", "app"):
            env = lab.env()
            lab.services(env)
            lab.upload(env, f"cold-{i}.csv")
            samples[mode].append(child(mode, env, f"cold-{i}.csv"))

    def median(mode: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[mode]), 4)

    def paired(key: str, against: str, against_key: str) -> float:
        pairs = zip(samples["app"], samples[against], strict=True)
        return round(statistics.median(a[key] / b[against_key] for a, b in pairs), 2)

    figure = {
        mode: {key: median(mode, key) for key in ("import_s", "first_invocation_s", "total_s")}
        for mode in ("app", "baseline")
    }
    figure["host_library_import_s"] = median("host", "import_s")
    figure["ratio_import_to_host_library"] = paired("import_s", "host", "import_s")
    figure["ratio_first_invocation"] = paired("first_invocation_s", "baseline", "first_invocation_s")
    figure["ratio_total"] = paired("total_s", "baseline", "total_s")
    figure["repeats"] = repeats
    return figure


def requests_per_cycle(lab: Lab) -> dict:
    """Every HTTP request from upload to verified deploy on both targets, against the protocol minimum.
    Two cycles: the first also creates the table, queue and containers; the second is the steady state."""
    from azure.functions.queue import QueueMessage
    from azure.functions.timer import TimerRequest

    import function_app
    from localdev.runner import LocalContext

    env = lab.env()
    svc = lab.services(env)
    lab.job_seconds(0.2)
    handler = {f.get_function_name(): f.get_user_function() for f in (t.build() for t in _functions(function_app))}
    queue = svc.storage.queue(env["COMMANDS_QUEUE"])
    cycles = []
    for i, data in enumerate(
        (sample_data.generate(800, seed=21, label_noise=0.15), sample_data.generate(1600, seed=22))
    ):
        blob = lab.upload(env, f"cycle-{i}.csv", data.encode())
        since = time.time()
        with storage_requests(lab) as storage:
            handler["retrain_on_upload"](blob=blob, context=LocalContext("retrain_on_upload"))
            lab.wait_jobs_ended(env)
            handler["poll_runs"](timer=TimerRequest(past_due=False), context=LocalContext("poll_runs"))
            with storage_requests(lab) as host:  # what the Functions host does, not the app: receive, delete
                [message] = list(queue.receive_messages(max_messages=1))
            argument = QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1)
            handler["run_command"](msg=argument, context=LocalContext("run_command"))
            with storage_requests(lab) as deleted:
                queue.delete_message(message)
            host.update(deleted)
        run = next(iter(svc.store.list_runs("default")))
        assert run.status == "Deployed", (run.status, run.history)
        ml = lab.ml_requests(since)
        app_storage = storage - host
        cycles.append(
            {
                "azure_ml": dict(sorted(ml.items())),
                "azure_ml_total": sum(ml.values()),
                "storage_by_app": dict(sorted(app_storage.items())),
                "storage_by_app_total": sum(app_storage.values()),
                "storage_by_host": dict(host),
            }
        )
    minimum_ml = {
        "bes.submit": 1,
        "bes.start": 1,
        "bes.status": 1,
        "classic.patch": 1,
        "classic.endpoint (verify)": 1,
        "arm.get (definition)": 1,
        "arm.patch": 1,
        "arm.operation (LRO status)": 1,
        "arm.get (verify)": 1,
    }
    minimum_storage = {
        "blob: input properties, evaluation CSV": 2,
        "table: run recorded, Running, judged, Deploying, Deployed": 5,
        "table: live model per target": 2,
        "queue: deploy command": 1,
    }
    steady = cycles[-1]
    return {
        "first_cycle": cycles[0],
        "steady_cycle": steady,
        "protocol_minimum_azure_ml": minimum_ml,
        "protocol_minimum_azure_ml_total": sum(minimum_ml.values()),
        "design_minimum_storage": minimum_storage,
        "design_minimum_storage_total": sum(minimum_storage.values()),
        "ratio_azure_ml": round(steady["azure_ml_total"] / sum(minimum_ml.values()), 2),
        "ratio_storage": round(steady["storage_by_app_total"] / sum(minimum_storage.values()), 2),
        "note": "identity token requests are cached per process (one per hour); the first cycle also creates "
        "the table, queue and containers",
    }


def requests_per_v2_cycle(lab: Lab) -> dict:
    """Azure ML requests from upload to registered model version on a v2 pipeline, in both modes, against
    the protocol minimum; and whether importing the app imports the v2 trainer (it must not: cold start)."""
    from azure.functions.timer import TimerRequest

    import function_app
    from localdev.runner import LocalContext

    info = lab.emulator.info
    minimum = {
        "job": {"v2.jobs.put": 1, "v2.jobs.get": 1, "v2.mlflow.runs.get": 1, "v2.models.put": 1},
        "batch_endpoint": {
            "v2.batch.get (scoringUri)": 1,
            "v2.batch.invoke": 1,
            "v2.jobs.get": 1,
            "v2.mlflow.runs.get": 1,
            "v2.mlflow.runs.search (child runs)": 1,
            "v2.models.put": 1,
        },
    }
    handler = {f.get_function_name(): f.get_user_function() for f in (t.build() for t in _functions(function_app))}
    figures = {}
    for mode in ("job", "batch_endpoint"):
        trainer = _v2_trainer(lab, **({} if mode == "job" else {"batch_endpoint": info["v2_batch_endpoint"]}))
        pipelines = [{"name": "v2", "blob_prefix": "", "trainer": trainer, "gate": {"metric": "AUC", "min": 0.5}}]
        env = {
            k: v
            for k, v in lab.env(PIPELINES=json.dumps(pipelines), DEPLOY_TARGETS="[]").items()
            if not k.startswith("BES_")
        }
        svc = lab.services(env)
        lab.emulator.admin("POST", "v2/datastores", {"name": "bench", "container": env["TRAINING_CONTAINER"]})
        cycles = []
        for i in range(2):
            blob = lab.upload(env, f"v2-{mode}-{i}.csv", sample_data.generate(800, seed=40 + i).encode())
            since = time.time()
            handler["retrain_on_upload"](blob=blob, context=LocalContext("retrain_on_upload"))
            run = next(r for r in svc.store.list_runs("v2") if r.blob_name == f"v2-{mode}-{i}.csv")
            deadline = time.monotonic() + 60
            while (
                next(
                    j
                    for j in lab.emulator.admin("GET", "v2/jobs")
                    if j["name"] == svc.store.get("v2", run.run_id).job_id
                )["status"]
                != "Completed"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the v2 job did not complete")
                time.sleep(0.05)
            handler["poll_runs"](timer=TimerRequest(past_due=False), context=LocalContext("poll_runs"))
            run = svc.store.get("v2", run.run_id)
            assert run.status == "Finished" and run.model, (run.status, run.history)
            ml = collections.Counter({k: v for k, v in lab.ml_requests(since).items() if k != "identity.token"})
            cycles.append({"azure_ml": dict(sorted(ml.items())), "azure_ml_total": sum(ml.values())})
        figures[mode] = {
            "first_cycle": cycles[0],
            "steady_cycle": cycles[1],
            "protocol_minimum": minimum[mode],
            "protocol_minimum_total": sum(minimum[mode].values()),
            "ratio": round(cycles[1]["azure_ml_total"] / sum(minimum[mode].values()), 2),
        }
    imported = subprocess.run(
        [sys.executable, "-c", "import function_app, sys; print('shared.azureml' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, env=child_env({}), check=True,
    ).stdout.strip()  # fmt: skip
    figures["import_function_app_imports_the_v2_trainer"] = imported == "True"
    figures["note"] = (
        "the first cycle also reads the workspace for its MLflow tracking URI (cached per process) and gets "
        "tokens (cached per process and audience)"
    )
    return figures


def _functions(function_app) -> list:
    return [function_app.retrain_on_upload, function_app.poll_runs, function_app.run_command]


def _many_pipelines(lab: Lab, count: int, finished_each: int = 0) -> tuple[dict[str, str], object]:
    """``count`` pipelines (``p000/`` ... uploads, all on the seeded training service), each with one run
    Running for ten minutes, and ``finished_each`` finished runs in each pipeline's history."""
    from shared import workflow

    lab.job_seconds(600)
    names = [f"p{i:03d}" for i in range(count)]
    trainer = {"kind": "bes", "jobs_url": lab.emulator.bes_jobs_url, "api_key_setting": "BENCH_BES_KEY"}
    pipelines = [{"name": n, "blob_prefix": f"{n}/", "trainer": trainer} for n in names]
    env = lab.env(
        PIPELINES=json.dumps(pipelines), BENCH_BES_KEY=API_KEY, DEPLOY_TARGETS="[]", BES_JOBS_URL="", BES_API_KEY=""
    )
    svc = lab.services(env)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: lab.upload(env, f"{n}/data.csv"), names))
        refs = list(pool.map(lambda n: svc.storage.blob_ref(env["TRAINING_CONTAINER"], f"{n}/data.csv"), names))
        outcomes = list(pool.map(lambda ref: workflow.start_run_for_blob(svc, ref, source="blob", actor="bench"), refs))
    assert all(o.action == "started" for o in outcomes), collections.Counter(o.action for o in outcomes)
    for name in names if finished_each else ():
        _seed_finished_runs(svc, finished_each, pipeline=name)
    return env, svc


def poll_concurrency(lab: Lab, pipelines: int = 200, latency: float = 0.1) -> dict:
    """One poll over ``pipelines`` pipelines, each with one active job, every status call answered after
    ``latency``: with POLL_CONCURRENCY (16) against the same poll one pipeline at a time (concurrency 1),
    in the same run, and against the ideal ceil(pipelines / concurrency) x latency."""
    import math

    from shared import poll

    env, svc = _many_pipelines(lab, pipelines)
    lab.emulator.admin("POST", "faults", {"route": "bes.status", "delay": latency})
    try:
        figure: dict = {"pipelines": pipelines, "latency_ms": latency * 1000}
        for label, concurrency in (("sequential", 1), ("concurrent", svc.settings.poll_concurrency)):
            svc = lab.services({**env, "POLL_CONCURRENCY": str(concurrency)})
            poll.poll(svc, actor="bench-warm")  # builds the trainers and their connections once
            started = time.perf_counter()
            outcomes = poll.poll(svc, actor="bench")
            wall = time.perf_counter() - started
            assert len(outcomes) == pipelines and all(o.action == "running" for o in outcomes), outcomes[:3]
            figure[label] = {"concurrency": concurrency, "wall_s": round(wall, 3)}
        concurrency = figure["concurrent"]["concurrency"]
        ideal = math.ceil(pipelines / concurrency) * latency
        figure["ideal_s"] = round(ideal, 3)
        figure["speedup_over_sequential"] = round(figure["sequential"]["wall_s"] / figure["concurrent"]["wall_s"], 1)
        figure["ratio_to_ideal"] = round(figure["concurrent"]["wall_s"] / ideal, 2)
        return figure
    finally:
        lab.emulator.admin("DELETE", "faults")


def poll_cost(lab: Lab, pipelines: int = 200, history: int = 10_000, polls: int = 20) -> dict:
    """One poll of ``pipelines`` active runs with no history against the same with ``history`` finished
    runs spread over their partitions: the storage requests it sends, and its time (polled alternately,
    so whatever Azurite does in the background falls on both alike)."""
    from shared import poll

    setups = {
        label: _many_pipelines(lab, pipelines, finished_each)[1]
        for label, finished_each in (("empty", 0), ("with_history", history // pipelines))
    }
    time.sleep(3)
    counts: dict[str, collections.Counter] = {}
    for label, svc in setups.items():
        with storage_requests(lab) as storage:
            poll.poll(svc, actor="bench")
        counts[label] = storage
    timings: dict[str, list[float]] = {label: [] for label in setups}
    for _ in range(polls):
        for label, svc in setups.items():
            started = time.perf_counter()
            outcomes = poll.poll(svc, actor="bench")
            timings[label].append(time.perf_counter() - started)
            assert len(outcomes) == pipelines and all(o.action == "running" for o in outcomes)
    figure: dict = {"pipelines": pipelines, "active_runs": pipelines}
    for label in setups:
        figure[label] = {
            "finished_runs": 0 if label == "empty" else history,
            "median_ms": round(statistics.median(timings[label]) * 1000, 1),
            "storage_requests_per_poll": dict(sorted(counts[label].items())),
            "storage_requests_total": sum(counts[label].values()),
        }
    figure["same_storage_requests"] = counts["empty"] == counts["with_history"]
    figure["ratio_time"] = round(figure["with_history"]["median_ms"] / figure["empty"]["median_ms"], 2)
    figure["polls"] = polls
    return figure


def _seed_finished_runs(svc, count: int, pipeline: str = "default") -> None:
    """``count`` realistic finished runs (history, metrics, targets) written in 100-entity transactions."""
    from shared import runs as R
    from shared.storage import BlobRef
    from shared.store import run_entity

    if not count:
        return
    started = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    entities = []
    for i in range(count):
        at = started + dt.timedelta(minutes=i)
        ref = BlobRef(container="train", name=f"old-{i}.csv", etag=f"0x{i:016X}", size=4096, last_modified=at)
        run = R.Run.for_blob(pipeline, ref, "blob", "bench", at)
        for to in (R.SUBMITTED, R.RUNNING, R.APPROVED, R.DEPLOYING, R.DEPLOYED):
            run.transition(to, by="bench", reason=f"seeded: {to}", now=at)
        run.metrics = {"AUC": 0.8, "Accuracy": 0.75}
        run.targets = {"classic": {"status": "Deployed"}, "arm": {"status": "Deployed"}}
        entities.append(run_entity(run))
    batches = [entities[i : i + 100] for i in range(0, len(entities), 100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda batch: svc.store.table.submit_transaction([("create", e) for e in batch]), batches))


def burst(lab: Lab, uploads: int = 1000, duplicates: int = 200) -> dict:
    """``uploads`` new blobs delivered at once (plus ``duplicates`` repeated deliveries, shuffled) to one
    instance's worker threads, as the blob trigger would run them; failures are redelivered until done."""
    from azure.core.exceptions import AzureError

    from shared import workflow
    from shared.http import ServiceError

    lab.job_seconds(600)
    env = lab.env()
    svc = lab.services(env)
    names = [f"burst/{i:04d}.csv" for i in range(uploads)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda name: lab.upload(env, name), names))
    rng = random.Random(7)
    deliveries = names + [rng.choice(names) for _ in range(duplicates)]
    rng.shuffle(deliveries)
    outcomes: collections.Counter = collections.Counter()
    redelivered = collections.Counter()
    workers = min(32, (os.cpu_count() or 1) + 4)  # the Python worker's default thread pool size

    def deliver(name: str) -> None:
        while True:
            try:
                ref = svc.storage.blob_ref(env["TRAINING_CONTAINER"], name)
                outcomes[workflow.start_run_for_blob(svc, ref, source="blob", actor="bench").action] += 1
                return
            except (workflow.RetryLater, ServiceError, AzureError, workflow.StaleError) as exc:
                redelivered[type(exc).__name__] += 1  # the host retries a failed invocation

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(deliver, deliveries))
    wall = time.perf_counter() - started
    statuses = collections.Counter(r.status for r in svc.store.list_runs("default"))
    jobs = lab.jobs(env)
    assert sum(statuses.values()) == uploads and len(jobs) == 1, (outcomes, statuses)
    return {
        "deliveries": len(deliveries),
        "distinct_uploads": uploads,
        "worker_threads": workers,
        "wall_s": round(wall, 2),
        "deliveries_per_s": round(len(deliveries) / wall, 1),
        "outcomes": dict(outcomes),
        "redelivered_after_failure": dict(redelivered),
        "runs_by_status": dict(statuses),
        "bes_jobs_started": len(jobs),
    }


def memory(lab: Lab, large_mb: int = 1024) -> dict:
    """Peak memory of the blob-trigger handler (fresh interpreter) for a 1 MB and a large blob."""
    from azure.storage.blob import BlobClient

    lab.job_seconds(0.2)
    figure = {}
    for label, megabytes in (("1MB", 1), (f"{large_mb}MB", large_mb)):
        env = lab.env()
        lab.services(env)
        name = f"big-{megabytes}.csv"
        client = BlobClient.from_connection_string(env["AzureWebJobsStorage"], env["TRAINING_CONTAINER"], name)
        started = time.perf_counter()
        client.upload_blob(_csv_stream(megabytes * 1024 * 1024), overwrite=True, max_concurrency=4)
        uploaded = time.perf_counter() - started
        figure[label] = {
            **child("memory", env, name),
            "blob_bytes": client.get_blob_properties().size,
            "upload_s": round(uploaded, 1),
        }
        client.delete_blob()
    small, large = figure["1MB"], figure[f"{large_mb}MB"]
    figure["ratio_handler_peak"] = round(large["handler_peak_python_bytes"] / small["handler_peak_python_bytes"], 2)
    figure["ratio_process_peak_rss"] = round(large["process_peak_rss_bytes"] / small["process_peak_rss_bytes"], 2)
    return figure


def _csv_stream(size: int):
    """``size`` bytes of training CSV, generated in chunks (the benchmark itself must not hold 1 GB)."""
    chunk = sample_data.generate(20_000, seed=3).encode()
    header, rows = chunk.split(b"\n", 1)
    yield header + b"\n"
    sent = len(header) + 1
    while sent < size:
        part = rows[: size - sent]
        yield part
        sent += len(part)


def _v2_trainer(lab: Lab, **mode) -> dict:
    """A v2 trainer on the emulator's workspace (datastore ``bench``): a Command job, or ``mode``."""
    return {
        "kind": "azureml",
        "workspace": lab.emulator.info["v2_workspace"],
        "datastore": "bench",
        "model_name": "bench",
        "management_url": lab.emulator.url,
        **(mode or {"job": {"command": "python train.py", "environmentId": "azureml:env:1"}}),
    }


def _rollout_world(lab: Lab, rollout_fields: dict, **extra: str):
    """A v2 pipeline (Command jobs) whose one target is the emulator's Key-auth online endpoint."""
    info = lab.emulator.info
    trainer = _v2_trainer(lab)
    target = {
        "name": "online",
        "kind": "azureml-online",
        "endpoint": f"{info['v2_workspace']}/onlineEndpoints/{info['v2_online_endpoint']}",
        "management_url": lab.emulator.url,
        "rollout": rollout_fields,
    }
    pipeline = {
        "name": "v2",
        "blob_prefix": "",
        "trainer": trainer,
        "targets": ["online"],
        "gate": {"metric": "AUC", "min": 0.5, "min_improvement": -1.0},
    }
    env = {
        k: v
        for k, v in lab.env(PIPELINES=json.dumps([pipeline]), DEPLOY_TARGETS=json.dumps([target]), **extra).items()
        if not k.startswith("BES_")
    }
    lab.emulator.admin("POST", "reset")  # a fresh endpoint: no deployments of earlier figures
    lab.emulator.admin("POST", "config", {"lro_seconds": 0.05, "job_seconds": 0.2})
    svc = lab.services(env)
    lab.emulator.admin("POST", "v2/datastores", {"name": "bench", "container": env["TRAINING_CONTAINER"]})
    return env, svc


def rollout_requests(lab: Lab) -> dict:
    """Azure ML requests of one rollout (create → probe → shadow → canary → promote → retire) that
    replaces a live model and retires the oldest deployment, against the protocol minimum; probes apart."""
    import function_app
    from localdev.runner import LocalHost

    env, svc = _rollout_world(
        lab, {"mirror_percent": 10, "mirror_minutes": 0, "canary_percent": 10, "bake_minutes": 0, "probe_rows": 5}
    )
    host = LocalHost(function_app.app, env, visibility_timeout=0)
    minimum = {
        # the maps before; before each of shadow, canary, promote (GET → PUT); promotion read back
        "v2.online.endpoint.get": 5,
        # the live one (its settings); the new one provisioned; still Succeeded in shadow and in canary;
        # after promotion (we also GET the new name before creating it: a rollback to a kept one creates nothing)
        "v2.online.deployment.get": 5,
        "v2.online.deployment.put": 1,
        "v2.online.endpoint.put": 3,  # shadow, canary, promote
        "v2.online.operation": 4,  # each of the four operations once, when it has ended
        "v2.online.keys": 1,  # once per rollout without a cache; ours keeps a key 10 minutes per process
        "v2.online.deployments.list": 1,
        "v2.online.deployment.delete": 1,
    }
    cycles = []
    try:
        for i in range(3):
            since = time.time()  # the online endpoint's requests from here are the rollout's
            lab.upload(env, f"rollout-{i}.csv", sample_data.generate(600, seed=70 + i).encode())
            host.scan_blobs()
            deadline = time.monotonic() + 60
            while True:
                run = next(r for r in svc.store.list_runs("v2") if r.blob_name == f"rollout-{i}.csv")
                if run.ended:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the rollout did not end: {run.status}")
                time.sleep(0.12)  # each operation has ended by the next tick: the minimum is reachable
                host.fire_timer("poll_runs")
                host.pump_queues()
            assert run.status == "Deployed", run.history
            ml = lab.ml_requests(since)
            probes = ml.pop("v2.online.score", 0)
            ml = collections.Counter({k: v for k, v in ml.items() if k.startswith("v2.online")})
            cycles.append({"azure_ml": dict(sorted(ml.items())), "azure_ml_total": sum(ml.values()), "probes": probes})
    finally:
        host.stop()
    measured = cycles[2]
    return {
        "rollout": measured,
        "first_deploy": cycles[0],
        "protocol_minimum": minimum,
        "protocol_minimum_total": sum(minimum.values()),
        "ratio": round(measured["azure_ml_total"] / sum(minimum.values()), 2),
        "note": "probes: 5 rows, one scoring request each, at create, shadow and canary; the third rollout "
        "is measured (the second keeps both deployments; the third retires the oldest)",
    }


def rollout_latency(lab: Lab, trials: int = 3, poll_seconds: int = 10) -> dict:
    """Job completion → deployment created, with the Event Grid nudge (the event posted as the job
    completes) against the timer alone (a poll every ``poll_seconds``): seconds, against the emulator."""
    import threading

    import function_app
    from localdev.runner import LocalHost

    figure: dict = {"poll_seconds": poll_seconds, "trials": trials}
    for mode in ("timer", "nudge"):
        env, svc = _rollout_world(
            lab, {"canary_percent": 0, "probe_rows": 1}, POLL_SCHEDULE=f"*/{poll_seconds} * * * * *"
        )
        host = LocalHost(function_app.app, env, visibility_timeout=0)
        stop = threading.Event()

        def run_host(host=host, stop=stop) -> None:
            while not stop.is_set():
                host.tick_timers()
                host.pump_queues()
                stop.wait(0.05)

        runner = threading.Thread(target=run_host, daemon=True)
        runner.start()
        latencies = []
        try:
            for i in range(trials):
                name = f"{mode}-{i}.csv"
                lab.upload(env, name, sample_data.generate(400, seed=80 + i).encode())
                host.scan_blobs()
                run = next(r for r in svc.store.list_runs("v2") if r.blob_name == name)
                deadline = time.monotonic() + 60
                while (
                    next(j for j in lab.emulator.admin("GET", "v2/jobs") if j["name"] == run.job_id)["status"]
                    != "Completed"
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the job did not complete")
                    time.sleep(0.02)
                completed = time.time()
                if mode == "nudge":
                    event = {
                        "specversion": "1.0",
                        "id": f"bench-{i}",
                        "type": "Microsoft.MachineLearningServices.RunCompleted",
                        "source": lab.emulator.info["v2_workspace"],
                        "subject": f"experiments/1/runs/{run.job_id}",
                        "data": {"runId": run.job_id},
                    }
                    host.post_event(event)

                def creates(after: float = completed) -> list[float]:
                    log = lab.emulator.admin("GET", "requests")
                    return [r["at"] for r in log if r["route"] == "v2.online.deployment.put" and r["at"] >= after]

                while not creates():
                    if time.monotonic() > deadline:
                        raise RuntimeError("no deployment was created")
                    time.sleep(0.02)
                created = min(creates())
                latencies.append(round(created - completed, 3))
                while not svc.store.get("v2", run.run_id).ended:  # end the rollout before the next trial
                    if time.monotonic() > deadline + 60:
                        raise RuntimeError("the rollout did not end")
                    host.fire_timer("poll_runs")
                    host.pump_queues()
                    time.sleep(0.1)
        finally:
            stop.set()
            runner.join()
            host.stop()
        figure[mode] = {"job_completed_to_deployment_created_s": latencies, "median_s": statistics.median(latencies)}
    figure["speedup"] = round(figure["timer"]["median_s"] / max(figure["nudge"]["median_s"], 0.001), 1)
    return figure


FIGURES = {
    "cold_start": cold_start,
    "requests": requests_per_cycle,
    "requests_v2": requests_per_v2_cycle,
    "poll_cost": poll_cost,
    "poll_concurrency": poll_concurrency,
    "burst": burst,
    "memory": memory,
    "rollout_requests": rollout_requests,
    "rollout_latency": rollout_latency,
}


def machine() -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory_kib = (
        next(
            (
                int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            0,
        )
        if Path("/proc/meminfo").exists()
        else 0
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev.sh bench", description=__doc__.splitlines()[0])
    parser.add_argument("figures", nargs="*", help=f"figures to take: {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--large-mb", type=int, default=1024, help="size of the large blob for the memory figure")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    chosen = args.figures or list(FIGURES)
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    lab = Lab()
    results: dict = {"taken_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    try:
        for name in chosen:
            started = time.perf_counter()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            kwargs = {"large_mb": args.large_mb} if name == "memory" else {}
            results[name] = FIGURES[name](lab, **kwargs)
            results[name]["took_s"] = round(time.perf_counter() - started, 1)
    finally:
        lab.stop()
    text = json.dumps(results, indent=2)
    if set(chosen) == set(FIGURES):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
