"""The README's first command: the demo runs its story to the end and says OK (both stories)."""

import subprocess
import sys

import pytest

from localdev.services import ROOT


@pytest.mark.parametrize(
    "flags",
    [[], ["--pipelines"], ["--governance"], ["--rollout"]],
    ids=["one-pipeline", "pipelines", "governance", "rollout"],
)
def test_the_demo_tells_its_story_to_the_end(flags):
    done = subprocess.run(
        [sys.executable, "-m", "localdev.demo", "--job-seconds", "0.5", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "\nOK: " in done.stdout and "Traceback" not in done.stdout + done.stderr
    if flags == ["--governance"]:
        assert "approved by ana@example.com" in done.stdout and "Autopilot.Run.AwaitingApproval" in done.stdout
    if flags == ["--rollout"]:
        assert "  shadow " in done.stdout and "  canary " in done.stdout and "census-online RolledBack" in done.stdout
        assert "why: canary: probe error rate" in done.stdout and "rolled back at the canary" in done.stdout
    if flags == ["--pipelines"]:
        assert "Registered in the Azure ML workspace: fraud version" in done.stdout  # a batch-endpoint pipeline
        assert "Registered in the Azure ML workspace: retail version" in done.stdout  # a Command job
