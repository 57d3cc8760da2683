"""The ETag conditions, each under the interleaving it exists for: two actors read the same version
of an entity at the same moment, then both write. Storage is real (Azurite); what is arranged is only
the timing — a barrier after each actor's read, so the race that chaos finds by luck happens every
time. Without the condition, the second write silently replaces the first.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from azure.data.tables import TableClient

from shared import deploy, poll, workflow
from shared import runs as R
from shared.store import RunStore, TargetStore
from tests.conftest import jobs, upload
from tests.loop import services, target_settings, wait_job


def meet_after(monkeypatch, cls, method: str, parties: int = 2):
    """Each racing thread's first call of ``cls.method`` waits, after it has read, until all have read."""
    barrier = threading.Barrier(parties, timeout=10)
    original = getattr(cls, method)
    met = set()

    def reading(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if threading.current_thread() is not threading.main_thread() and threading.get_ident() not in met:
            met.add(threading.get_ident())
            barrier.wait()
        return result

    monkeypatch.setattr(cls, method, reading)


def together(*calls) -> list:
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as exc:  # the assertions look at it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_updates_of_one_run_read_at_once_both_stick(svc, monkeypatch):
    run = workflow.start_run_for_blob(svc, upload(svc, "a.csv"), source="blob", actor="t")
    meet_after(monkeypatch, RunStore, "get")

    def note(who):
        def change(current: R.Run) -> bool:
            current.note(by=who, reason=f"noted by {who}")
            return True

        return lambda: svc.store.update("default", run.run_id, change)

    together(note("one"), note("two"))
    events = [h.get("event") for h in svc.store.get("default", run.run_id).history]
    assert "noted by one" in events and "noted by two" in events  # neither write was lost


@pytest.mark.parametrize("stored", [False, True], ids=["first-ever slot", "stored slot"])
def test_two_uploads_claiming_a_free_slot_at_once_start_one_job(svc, fresh_emulator, monkeypatch, stored):
    fresh_emulator.admin("POST", "config", {"job_seconds": 30})
    blobs = [upload(svc, name) for name in ("a.csv", "b.csv")]
    if stored:  # a free slot that exists (the usual case): both writes are conditional updates
        svc.store.save_slot(svc.store.get_slot("default"))
    meet_after(monkeypatch, RunStore, "get_slot")
    outcomes = together(
        *(lambda b=b: workflow.start_run_for_blob(svc, b, source="blob", actor=f"t/{b.name}") for b in blobs)
    )
    # one took the slot; the other waits or, if it is the older data, is superseded
    assert [o.action for o in outcomes].count("started") == 1, outcomes
    assert len(jobs(fresh_emulator)) == 1


@pytest.mark.parametrize("stored", [False, True], ids=["never deployed", "stored state"])
def test_two_deploys_claiming_a_target_at_once_update_it_once(env, fresh_emulator, monkeypatch, stored):
    svc = services(target_settings(env, fresh_emulator), monkeypatch)
    trained = []
    for name in ("a.csv", "b.csv"):
        outcome = workflow.start_run_for_blob(svc, upload(svc, name), source="blob", actor="t")
        wait_job(svc, outcome.run_id)
        poll.poll(svc, actor="timer-poll/t")
        trained.append(svc.store.get("default", outcome.run_id))
    target = svc.settings.target("classic")
    if stored:  # a target whose state exists (the usual case): both claims are conditional updates
        svc.targets.save(svc.targets.get("classic"))
    meet_after(monkeypatch, TargetStore, "get")
    results = together(
        *(lambda r=r: deploy.put_live(svc, target, r, actor=f"t/{r.run_id}", kind="forced deploy") for r in trained)
    )
    busy = [r for r in results if isinstance(r, deploy.DeployError)]
    assert len(busy) == 1 and busy[0].code == "TargetBusy", results
    assert len([r for r in fresh_emulator.admin("GET", "requests") if r["route"] == "classic.patch"]) == 1


def test_two_deliveries_taking_over_a_lapsed_claim_at_once_carry_it_out_once(svc, monkeypatch):
    now = R.utcnow()
    fields = {"raw": "{}", "by": "q", "type": "retrain"}
    lapsed = now - dt.timedelta(minutes=20)
    assert (
        svc.commands.claim("req:r", {**fields, "message_id": "m-0"}, dt.timedelta(minutes=10), lapsed)[0] == "claimed"
    )
    meet_after(monkeypatch, TableClient, "get_entity")
    results = together(
        *(
            lambda m=m: svc.commands.claim("req:r", {**fields, "message_id": m}, dt.timedelta(minutes=10), now)[0]
            for m in ("m-1", "m-2")
        )
    )
    assert sorted(results) == ["busy", "claimed"], results
