"""Benchmark: the dashboard's first frame of 10,000 instances + 10,000 queue files.

Run with ``pytest tests/bench -m bench -s -k first_frame``.  Each run is a fresh
process (``tests/bench/first_frame.py``), headless at 160x48, imports
included; beside it, alternately, its peers in the same load: the snapshot
built alone (what the first frame cannot do without) and Textual's floor app
to its first frame (what any Textual app pays).  The target is 1.5 s; CPU
seconds are printed (a loaded machine inflates them less than wall time) and
the dashboard's asserted only as a ratio to what the two peers add up to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_fleet, p50, table

pytestmark = pytest.mark.bench

SIZE = 10_000
RUNS = 3
TARGET_S = 1.5
RATIO_BOUND = 1.8  # dashboard CPU over snapshot + floor; 2026-12-03: 1.43x, with a Text per cell and the collector running 2.0-2.1x
KINDS = ("dashboard", "snapshot", "floor")


def first_frame(root: Path, kind: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.first_frame", str(root), kind],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


def test_first_frame_of_10000_instances(tmp_path: Path, live_children: list[int]) -> None:
    root = tmp_path / "runtime"
    root.mkdir(mode=0o700)
    make_fleet(root, live_children, size=SIZE)
    first_frame(root, "dashboard")  # warm-up: the page cache, compiled bytecode
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    loads = []
    for _ in range(RUNS):  # alternated, so each sees the same load
        loads.append(os.getloadavg()[0])
        for kind in KINDS:
            runs[kind].append(first_frame(root, kind))
    assert all(run["rows"] == SIZE for kind in ("dashboard", "snapshot") for run in runs[kind])

    def med(kind: str, figure: str) -> float:
        return p50([run[figure] for run in runs[kind]])

    peers = med("snapshot", "cpu") + med("floor", "cpu")
    ratio = med("dashboard", "cpu") / peers
    print(
        table(
            f"first frame, {SIZE:,} instances + {SIZE:,} queue files, headless 160x48, imports included, "
            f"{RUNS} runs each, alternated (load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores)",
            ["process", "wall p50 s", "cpu p50 s", "target"],
            [
                ["pi-dash first frame", f"{med('dashboard', 'wall'):.2f}", f"{med('dashboard', 'cpu'):.2f}", f"<= {TARGET_S} s"],
                ["peer: snapshot built alone", f"{med('snapshot', 'wall'):.2f}", f"{med('snapshot', 'cpu'):.2f}", "-"],
                ["peer: textual_floor first frame", f"{med('floor', 'wall'):.2f}", f"{med('floor', 'cpu'):.2f}", "-"],
            ],
        )
    )
    print(f"ratio pi-dash / (snapshot + floor), CPU p50: {ratio:.2f}x")
    assert ratio <= RATIO_BOUND, f"the first frame takes {ratio:.2f}x its peers' CPU"
