"""Does the chaos suite catch a broken build? Each mutant removes one ETag condition (the guards the
at-least-once design rests on) in a scratch copy of the repo; the chaos suite must fail on every one.

    .venv/bin/python .ci/mutants.py [word ...]   # only mutants whose name has a word; CHAOS_SCENARIOS
                                                 # (default 8) scenarios per mutant

Not part of CI (a killed mutant costs up to a minute of "did not settle"); run it after changing the
chaos suite or the store. Exit status 1 if any mutant survives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONAL = "match_condition=MatchConditions.IfNotModified"
UNCONDITIONAL = "match_condition=MatchConditions.Unconditionally"

# (name, file, text to find exactly once, its replacement)
MUTANTS = [
    (
        "run save without ETag",
        "shared/store.py",
        f"run.to_entity(), mode=UpdateMode.REPLACE, etag=run.etag, {CONDITIONAL}",
        f"run.to_entity(), mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}",
    ),
    (
        "pipeline slot save without ETag",
        "shared/store.py",
        f"entity, mode=UpdateMode.REPLACE, etag=slot.etag, {CONDITIONAL}",
        f"entity, mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}",
    ),
    (
        "target state save without ETag",
        "shared/store.py",
        f"etag=state.etag,\n                {CONDITIONAL},",
        f"etag=None,\n                {UNCONDITIONAL},",
    ),
    (
        "command claim without ETag",
        "shared/store.py",
        f"record, mode=UpdateMode.REPLACE, etag=etag, {CONDITIONAL}\n                )\n                return",
        f"record, mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}\n                )\n                return",
    ),
]


def mutate(copy: Path, file: str, old: str, new: str) -> None:
    path = copy / file
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"mutant no longer applies: {old!r} occurs {text.count(old)} times in {file}")
    path.write_text(text.replace(old, new))


def main() -> int:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    env = {**os.environ, "CHAOS_SCENARIOS": os.environ.get("CHAOS_SCENARIOS", "8")}
    survivors = []
    chosen = [m for m in MUTANTS if not sys.argv[1:] or any(word in m[0] for word in sys.argv[1:])]
    for name, file, old, new in chosen:
        with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
            copy = Path(scratch)
            for f in files:
                (copy / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, copy / f)
            (copy / "node_modules").symlink_to(ROOT / "node_modules")
            mutate(copy, file, old, new)
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests/test_chaos.py"],
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
            )
            took = time.monotonic() - started
        failure = next((line for line in result.stdout.splitlines() if line.startswith("E ")), "")
        if result.returncode == 0:
            survivors.append(name)
            print(f"SURVIVED  {name} ({took:.0f}s)")
        else:
            print(f"killed    {name} ({took:.0f}s): {failure[:160]}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
