"""Fuzz the command handler: random and mutated messages never crash or hang it, and every one of them
is accounted for in the command log (Done or Rejected, with a reason)."""

import datetime as dt
import json
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import commands
from shared.deploy import CommandRejected
from shared.store import DONE, REJECTED

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
RUN = "20261125T101500Z-1a2b3c4d5e6f7a8b"
VALID = [
    {"type": "retrain", "version": 1},
    {"type": "retrain", "version": 1, "blob": "data.csv", "request_id": "r-1"},
    {"type": "deploy", "version": 1, "run_id": RUN, "targets": ["classic"]},
    {"type": "deploy", "version": 1, "run_id": RUN, "targets": ["arm"], "force": True, "reason": "why"},
    {"type": "rollback", "version": 1, "target": "classic", "to_run": RUN},
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw):
    body = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "add", "replace", "retype", "reversion", "restring"]))
        if action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "add":
            body[draw(st.text(max_size=15))] = draw(json_values)
        elif action == "replace" and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
        elif action == "retype":
            body["type"] = draw(st.sampled_from(["retrain", "deploy", "rollback", "Deploy", "", "x" * 300]))
        elif action == "reversion":
            body["version"] = draw(st.sampled_from([0, 2, "1", 1.0, None, True]))
        elif action == "restring" and body:
            key = draw(st.sampled_from(sorted(body)))
            body[key] = draw(st.text(max_size=300))
    return json.dumps(body).encode()


messages = (
    st.binary(max_size=600)
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutated()
    | st.sampled_from([b"", b"null", b"{}", b'{"type": "retrain", "version": 1}' * 3000, b"[" * 5000 + b"]" * 5000])
)


@given(raw=messages)
@settings(max_examples=EXAMPLES * 3, deadline=None, suppress_health_check=list(HealthCheck))
def test_parse_either_accepts_a_schema_valid_command_or_rejects_with_a_reason(raw):
    try:
        body = commands.parse(raw)
    except CommandRejected as exc:
        assert str(exc)
        return
    assert body["type"] in ("retrain", "deploy", "rollback") and body["version"] == 1


@pytest.fixture(scope="module")
def fuzz_services(azurite, emulator):
    from shared import workflow
    from shared.settings import Settings

    uid = uuid.uuid4().hex[:8]
    targets = emulator.deploy_targets("fuzz-key-not-used")
    svc = workflow.build_services(
        Settings.from_env(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "BES_JOBS_URL": emulator.bes_jobs_url,
                "BES_API_KEY": "fuzz-key-not-used",
                "TRAINING_CONTAINER": f"fuzz-{uid}",
                "MODELS_CONTAINER": f"fm-{uid}",
                "RUNS_TABLE": f"fuzz{uid}",
                "COMMANDS_QUEUE": f"fuzz-{uid}",
                "DEPLOY_TARGETS": json.dumps(targets),
            }
        )
    )
    svc.storage.ensure_container(svc.settings.training_container)
    return svc


@given(raw=messages)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_message_is_accounted_for_and_none_crashes_or_hangs_the_handler(fuzz_services, raw):
    # GIVEN any message at all
    message_id = str(uuid.uuid4())
    started = dt.datetime.now(dt.timezone.utc)
    # WHEN the queue trigger hands it over
    result = commands.handle(fuzz_services, raw, message_id=message_id, dequeue_count=1, actor="fuzz")
    # THEN it finished promptly with an answer, and the log holds its outcome and reason
    assert (dt.datetime.now(dt.timezone.utc) - started).total_seconds() < 10
    assert isinstance(result, str) and result
    try:
        loose = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        loose = None
    key = commands.request_key(loose if len(raw) <= commands.MAX_MESSAGE_BYTES else None, message_id)
    entry = fuzz_services.commands.get(key)
    assert entry is not None, (key, result)
    assert entry["status"] in (DONE, REJECTED)
    if result.startswith("rejected:"):
        assert entry["status"] == REJECTED and entry["reason"]
