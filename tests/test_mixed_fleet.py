"""A fleet of pi's instances and ``core``'s in one directory runs each ``core`` entry once.

pi's thieves pick an entry and claim nothing, and pi's owners run every entry
they queued: measured on pi's own code, 6 of 12 entries ran twice in a 35 s run
of 2 pi and 2 Python instances.  Here two pi instances (a test double of the
behaviour FORMAT.md documents, :mod:`tests.mixed_fleet_workers`) and two
``core`` instances share a directory for 30 s as real processes; every entry
any of them queued or ran goes to one log, and the counts are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECONDS = 30
FLEET = [("pi", "pi-a", 8), ("pi", "pi-b", 1), ("core", "core-c", 8), ("core", "core-d", 1)]


def run_fleet(root: Path, log: Path) -> list[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_")}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.mixed_fleet_workers", kind, str(root), str(log), str(SECONDS), name, str(burst)],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, name, burst in FLEET
    ]
    try:
        for child in children:
            _, err = child.communicate(timeout=SECONDS + 90)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_every_entry_core_owns_or_steals_runs_exactly_once(tmp_path: Path) -> None:
    root = tmp_path / "runtime"
    root.mkdir()
    lines = run_fleet(root, tmp_path / "runs.jsonl")
    kind_of = {line["by"]: line["kind"] for line in lines}
    queued = {(line["owner"], line["entry"]) for line in lines if line["event"] == "queued"}
    ran = [line for line in lines if line["event"] == "ran"]
    runs = Counter((line["owner"], line["entry"]) for line in ran)
    steals = Counter((kind_of[line["by"]], kind_of.get(line["owner"])) for line in ran if line["how"] == "stolen")

    core_owned = {e for e in queued if kind_of[e[0]] == "core"}
    stolen_by_core = {(line["owner"], line["entry"]) for line in ran if line["how"] == "stolen" and line["kind"] == "core"}
    twice = {e: n for e, n in runs.items() if n > 1}
    summary = (
        f"{len(queued)} entries queued ({len(core_owned)} by core), {len(ran)} runs; steals (thief, owner): {dict(steals)}; "
        f"ran more than once: {len(twice)} (pi owner, pi thief: {sum(1 for e in twice if kind_of[e[0]] == 'pi')})"
    )
    print(summary)

    assert core_owned and stolen_by_core, summary
    assert {e: runs[e] for e in core_owned if runs[e] != 1} == {}, summary  # none lost, none twice
    assert {e: runs[e] for e in stolen_by_core if runs[e] != 1} == {}, summary
    # Both kinds of thief were at work, each only where it cannot cause a second run.
    assert steals[("core", "core")] > 0 and steals[("pi", "pi")] > 0, summary
    assert steals[("core", "pi")] == 0 and steals[("pi", "core")] == 0, summary
    assert set(runs) <= queued, summary
