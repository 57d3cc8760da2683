"""The run's state machine (pure: no storage)."""

import datetime as dt

import pytest

from shared import runs as R
from shared.storage import BlobRef

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def a_run() -> R.Run:
    blob = BlobRef(container="train", name="a.csv", etag="0x1", size=10, last_modified=T0)
    return R.Run.for_blob("default", blob, "blob", "test", T0)


def test_a_writer_retrying_with_an_older_clock_reading_never_records_the_past():
    # A writer read the clock, lost an ETag race to one that recorded later, and retried on the fresh
    # copy: its entry comes after the other's, so it must not carry an earlier time.
    run = a_run()
    run.transition(R.SUBMITTED, by="later", reason="x", now=T0 + dt.timedelta(seconds=5))
    run.note(by="earlier", reason="y", now=T0 + dt.timedelta(seconds=1))
    run.transition(R.RUNNING, by="earlier", reason="z", now=T0 + dt.timedelta(seconds=2))
    stamps = [h["at"] for h in run.history]
    assert stamps == sorted(stamps) and stamps[-1] == "2026-11-25T12:00:05.000Z"


def test_moves_outside_the_state_machine_are_refused():
    run = a_run()
    with pytest.raises(R.InvalidTransition):
        run.transition(R.DEPLOYED, by="test", reason="skipping ahead")
