"""Chaos for Azure ML v2: seeded random scenarios of uploads to a v2 pipeline whose model rolls out to a
managed online endpoint, with v2 faults (failed provisioning, degrading deployments, lost answers,
throttled scoring, broken shapes, operations that never end), duplicated deliveries, two pollers at once
and rollback commands; invariants checked after every step and at the end.

``CHAOS_V2_SCENARIOS`` (default 2) scenarios from ``CHAOS_V2_SEED`` (default 1); each prints its seed.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import json
import logging
import os
import random
import threading
import time

import pytest

from emulator import sample_data
from shared import commands, poll, rollout, workflow
from shared import runs as R
from shared.store import DONE, FAILED, REJECTED
from tests.conftest import upload
from tests.loop import services
from tests.scan import assert_no_secret, secrets_used, written
from tests.test_azureml import JOB, v2_trainer
from tests.test_chaos import EXPECTED, together

FIRST_SEED = int(os.environ.get("CHAOS_V2_SEED", "1"))
SCENARIOS = int(os.environ.get("CHAOS_V2_SCENARIOS", "2"))
FAULTS = [
    {"route": "v2.online.provision", "fail": "image build failed (injected)"},
    {"route": "v2.online.degrade", "fail": "out of memory (injected)", "path": "ap-"},
    {"route": "v2.online.endpoint.put", "status": 503, "retry_after": 1},
    {"route": "v2.online.endpoint.put", "drop": True, "after": True},  # it took effect; the answer is lost
    {"route": "v2.online.deployment.put", "status": 500},
    {"route": "v2.online.deployment.put", "drop": True, "after": True},
    {"route": "v2.online.endpoint.get", "status": 504},
    {"route": "v2.online.endpoint.get", "status": 200, "body": {"properties": 5}},
    {"route": "v2.online.operation", "status": 200, "body": "<html>busy</html>", "content_type": "text/html"},
    {"route": "v2.online.score", "status": 429, "retry_after": 1},
    {"route": "v2.online.score", "status": 500},
    {"route": "v2.online.keys", "status": 503},
    {"route": "v2.online.deployments.list", "status": 500},
    {"route": "v2.online.stuck"},  # an operation that never ends: its stage passes its deadline
    {"route": "v2.jobs.get", "status": 503},
    {"route": "v2.job", "fail": "Out of quota (injected)."},
]


def chaos_env(env: dict, emulator) -> dict:
    workspace = emulator.info["v2_workspace"]
    target = {
        "name": "online",
        "kind": "azureml-online",
        "endpoint": f"{workspace}/onlineEndpoints/census-online",
        "management_url": emulator.url,
        "rollout": {"mirror_percent": 10, "canary_percent": 20, "bake_minutes": 0.01, "probe_rows": 3},
    }
    pipeline = {
        "name": "census",
        "trainer": v2_trainer(emulator, job=JOB),
        "targets": ["online"],
        "gate": {"metric": "AUC", "min": 0.6, "min_improvement": -1.0},
    }
    flat = {k: v for k, v in env.items() if k not in ("BES_JOBS_URL", "BES_API_KEY")}
    return {**flat, "PIPELINES": json.dumps([pipeline]), "DEPLOY_TARGETS": json.dumps([target]), "MAX_ATTEMPTS": "4"}


class V2Chaos:
    def __init__(self, svc, emulator, rng: random.Random) -> None:
        self.svc, self.emulator, self.rng = svc, emulator, rng
        self.unexpected: list[str] = []
        self.owed: list = []
        self.counter = 0

    def retried(self, call, then=lambda: None) -> None:
        try:
            call()
        except EXPECTED:
            then()
        except Exception as error:
            self.unexpected.append(f"{type(error).__name__}: {error}")
            then()

    def upload(self) -> None:
        self.counter += 1
        noise = self.rng.choice([0.05, 0.1, 0.45])
        data = sample_data.generate(300, seed=self.rng.randrange(1000), label_noise=noise).encode()
        blob = upload(self.svc, f"data-{self.counter}.csv", data)
        start = functools.partial(workflow.start_run_for_blob, self.svc, blob, source="blob")
        together(
            [
                threading.Thread(target=self.retried, args=(functools.partial(start, actor=f"b{i}"),))
                for i in range(self.rng.choice([1, 2]))
            ]
        )

    def tick(self, late: bool = False) -> None:
        now = R.utcnow() + dt.timedelta(hours=2) if late else None  # past every stage's deadline
        poll_once = functools.partial(poll.poll, self.svc, actor=f"poll/{self.counter}", now=now)
        together([threading.Thread(target=self.retried, args=(poll_once,)) for _ in range(2)])
        self.check_endpoint()

    def fault(self) -> None:
        self.emulator.admin("POST", "faults", {**self.rng.choice(FAULTS), "times": self.rng.randint(1, 2)})

    def rollback(self) -> None:
        body = {"type": "rollback", "version": 1, "target": "online", "pipeline": "census"}
        self.svc.storage.queue(self.svc.settings.commands_queue).send_message(json.dumps(body))

    def pump(self) -> None:
        queue = self.svc.storage.queue(self.svc.settings.commands_queue)
        messages = list(queue.receive_messages(max_messages=8, visibility_timeout=1))
        deliveries = [m for m in messages for _ in range(self.rng.choice([1, 2]))]  # some twice, at once
        failed: list[str] = []

        def deliver(message) -> None:
            handle = functools.partial(
                commands.handle,
                self.svc,
                message.content.encode(),
                message_id=message.id,
                dequeue_count=message.dequeue_count,
                actor=f"queue/{message.id}",
            )
            self.retried(handle, functools.partial(failed.append, message.id))

        together([threading.Thread(target=deliver, args=(m,)) for m in deliveries])
        for message in messages:
            if message.id not in failed or message.dequeue_count >= commands.max_dequeue_count():
                queue.delete_message(message)
        self.check_endpoint()

    def endpoint(self) -> dict:
        return next(e for e in self.emulator.admin("GET", "v2/online") if e["endpoint"] == "census-online")

    def check_endpoint(self) -> None:
        """At every step: traffic sums to 100 (or is empty), both maps name only existing deployments,
        and no deployment gets live and mirrored traffic at once."""
        e = self.endpoint()
        assert not e["traffic"] or sum(e["traffic"].values()) == 100, e
        assert set(e["traffic"]) | set(e["mirrorTraffic"]) <= set(e["deployments"]), e
        assert not {n for n, v in e["traffic"].items() if v} & {n for n, v in e["mirrorTraffic"].items() if v}, e

    def settle(self, deadline: float) -> None:
        """Faults off; ticks and commands until all is quiet. A rollout that makes no progress for a while
        (an operation that never ends) gets a tick past its stage's deadline, as a late poll would be."""
        self.emulator.admin("DELETE", "faults")
        still = 0
        while time.monotonic() < deadline:
            before = (self.svc.targets.get("online").rollout or {}).get("stages")
            still = still + 1 if before and rollout.is_active(self.svc.targets.get("online")) else 0
            self.tick(late=still > 15)
            self.pump()
            busy = [r for r in self.svc.store.list_runs("census") if not r.ended]
            state = self.svc.targets.get("online")
            waiting = self.svc.storage.queue(self.svc.settings.commands_queue).get_queue_properties()
            quiet = not busy and not rollout.is_active(state) and not state.queued_run
            if quiet and not waiting.approximate_message_count:
                return
            time.sleep(0.2)
        raise AssertionError(f"did not settle: {[(r.run_id, r.status) for r in busy]}, {state.rollout}")


def check_invariants(chaos: V2Chaos, logs: str) -> None:
    svc = chaos.svc
    assert not chaos.unexpected, chaos.unexpected
    runs = list(svc.store.list_runs("census"))
    assert all(r.ended for r in runs), [(r.run_id, r.status) for r in runs if not r.ended]
    assert all(status in (DONE, REJECTED, FAILED) for status in (e["status"] for e in svc.commands.list()))
    state = svc.targets.get("online")
    assert state.deploying_run is None and not rollout.is_active(state)
    # Nothing deployed twice; the history is a chain of what replaced what.
    history = list(reversed(svc.targets.history("online")))  # oldest first
    deploys = [h["run"] for h in history if h["kind"] == "deploy"]
    assert len(deploys) == len(set(deploys)), deploys
    chain = " | ".join(
        f"{h['at']:%H:%M:%S.%f} {h['kind']} {h['run'][-6:]} (replacing {str(h.get('replaced_run'))[-6:]})"
        for h in history
    )
    for before, after in itertools.pairwise(history):
        assert after.get("replaced_run") == before["run"], chain
    # The live model is the one the state says: all traffic on a deployment serving it.
    endpoint = chaos.endpoint()
    chaos.check_endpoint()
    if state.live_model:
        [(live, share)] = endpoint["traffic"].items()
        assert share == 100 and endpoint["deployments"][live]["model"] == state.live_model, (endpoint, state)
        assert endpoint["deployments"][live]["state"] == "Succeeded"
        run = svc.store.get("census", state.live_run)
        assert run is not None and run.model["id"] == state.live_model
    else:
        assert not endpoint["traffic"], endpoint
    # Every run that claims the target Deployed had its model live at some point, and a RolledBack one never did.
    for run in runs:
        result = run.targets.get("online", {}).get("status")
        if result == "Deployed":
            assert any(h["run"] == run.run_id for h in history), run.run_id  # a deploy or a rollback to it
        if result == "RolledBack":
            assert run.run_id not in deploys, run.run_id
    places = written(svc.settings.storage_connection, svc.settings.runs_table, logs)
    assert_no_secret(places, secrets_used(chaos.emulator, svc))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SCENARIOS))
def test_random_v2_scenario_keeps_every_invariant(seed, env, fresh_emulator, monkeypatch, caplog):
    print(f"chaos v2 seed {seed} (replay: CHAOS_V2_SEED={seed} CHAOS_V2_SCENARIOS=1)")
    caplog.set_level(logging.INFO, logger="shared")
    fresh_emulator.admin("POST", "config", {"job_seconds": 0.3, "lro_seconds": 0.1, "online_operation_timeout": "PT2S"})
    settings = chaos_env(env, fresh_emulator)
    fresh_emulator.admin(
        "POST", "v2/datastores", {"name": "autopilot_training", "container": settings["TRAINING_CONTAINER"]}
    )
    svc = services(settings, monkeypatch)
    rng = random.Random(seed)
    chaos = V2Chaos(svc, fresh_emulator, rng)
    actions = [chaos.upload] * 3 + [chaos.fault] * 3 + [chaos.tick] * 5 + [chaos.pump] * 3 + [chaos.rollback]
    chaos.upload()
    for _ in range(rng.randint(14, 24)):
        rng.choice(actions)()
        time.sleep(rng.choice([0, 0.1, 0.3]))
    chaos.settle(time.monotonic() + 90)
    check_invariants(chaos, caplog.text)
    outcomes = collections.Counter(r.targets.get("online", {}).get("status") for r in svc.store.list_runs("census"))
    print(f"  target results {dict(outcomes)}; live {svc.targets.get('online').live_run}")
