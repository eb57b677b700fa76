"""Benchmark: ``pi-dash status --json`` on 10,000 instances + 10,000 queue files.

Run with ``pytest tests/bench -m bench -s -k large``.  The fleet is
``conftest.make_fleet`` at 10,000 (one in ten instances names a live child
process, the rest this process; its heartbeat timeout is an hour, so every
instance stays counted, and liveness-checked, however slowly a loaded machine
writes and reads it).

Each launch is a fresh process (interpreter start and imports included), its
wall time, CPU time (user + system, which a loaded machine inflates less than
wall time) and peak RSS taken from ``wait4``.  The peer, launched alternately
with it: the same interpreter reading every file and ``json.loads``-ing it, no
validation, no figures, no output.  Targets: <= 0.5 s and <= 100 MB; RSS is
asserted (it does not depend on load), time is printed beside the peer's and
asserted only as a ratio to it.

Both run with their bytecode compiled, as an installed pi-dash has it (pip
compiles it): the launches share a bytecode cache (``PYTHONPYCACHEPREFIX``) that
the warm-up fills, where a source tree under ``PYTHONDONTWRITEBYTECODE`` would
compile every module of pi-dash again at each launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_fleet, p50, table

pytestmark = pytest.mark.bench

LARGE_FLEET = 10_000
RUNS = 5
TIME_TARGET_S = 0.5
RSS_TARGET_MB = 100.0
RATIO_BOUND = 5.0  # CPU time against the peer's; before this bound was set it was ~7x

PEER = """
import json, os, sys
for sub in ("instances", "queue-states"):
    directory = os.path.join(sys.argv[1], sub)
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as fh:
            json.loads(fh.read())
"""


@pytest.fixture(scope="module")
def large_fleet(tmp_path_factory: pytest.TempPathFactory, live_children: list[int]) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("large") / "runtime"
    root.mkdir(mode=0o700)
    make_fleet(root, live_children, size=LARGE_FLEET)
    yield root


# A small process starts each run and reports its rusage: a child forked from
# pytest itself would count pytest's pages, shared until exec, in its peak RSS.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
print(json.dumps([os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss]), file=sys.stderr)
"""


def launch(command: list[str], env: dict[str, str], stdout: int | object = subprocess.DEVNULL) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one run of ``command``."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], stdout=stdout, stderr=subprocess.PIPE, env=env, check=True
    )
    code, wall, cpu, rss_kb = json.loads(done.stderr.splitlines()[-1])
    assert code == 0, (command, done.stderr[-2000:])
    return wall, cpu, rss_kb / 1024


def pi_dash(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from pi_dashboard.cli import main; sys.exit(main())", *args]


def test_status_json_of_10000_instances(large_fleet: Path, tmp_path: Path) -> None:
    root = str(large_fleet)
    out = tmp_path / "status.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
    launch([sys.executable, "-c", PEER, root], env)
    with out.open("wb") as fh:
        launch(pi_dash("--root", root, "status", "--json"), env, stdout=fh)  # warm-up, and the output checked
    document = json.loads(out.read_bytes())
    assert len(document["instances"]) == LARGE_FLEET and len(document["queues"]) == LARGE_FLEET
    assert document["figures"]["activeCount"] == LARGE_FLEET
    assert all(i["pidRunning"] == "alive" for i in document["instances"])

    subject: list[tuple[float, float, float]] = []
    peer: list[tuple[float, float, float]] = []
    for _ in range(RUNS):  # alternated, so both see the same load
        peer.append(launch([sys.executable, "-c", PEER, root], env))
        subject.append(launch(pi_dash("--root", root, "status", "--json"), env))

    def med(samples: list[tuple[float, float, float]], i: int) -> float:
        return p50([s[i] for s in samples])

    wall_ok = med(subject, 0) <= TIME_TARGET_S
    rss_ok = max(s[2] for s in subject) <= RSS_TARGET_MB
    ratio = med(subject, 1) / med(peer, 1)
    print(
        table(
            f"pi-dash status --json, {LARGE_FLEET:,} instance + {LARGE_FLEET:,} queue files, "
            f"{RUNS} launches each, alternated (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
            ["process", "wall p50 s", "cpu p50 s", "peak RSS MB", "target", "verdict"],
            [
                ["pi-dash status --json", f"{med(subject, 0):.3f}", f"{med(subject, 1):.3f}",
                 f"{max(s[2] for s in subject):.0f}", f"<= {TIME_TARGET_S} s, <= {RSS_TARGET_MB:.0f} MB",
                 f"time {'ok' if wall_ok else 'MISS'}, RSS {'ok' if rss_ok else 'MISS'}"],
                ["peer: json.loads of every file", f"{med(peer, 0):.3f}", f"{med(peer, 1):.3f}",
                 f"{max(s[2] for s in peer):.0f}", "-", "-"],
            ],
        )  # fmt: skip
    )
    print(f"ratio pi-dash/peer (p50): wall {med(subject, 0) / med(peer, 0):.2f}x, cpu {ratio:.2f}x")
    assert rss_ok, f"peak RSS {max(s[2] for s in subject):.0f} MB > {RSS_TARGET_MB} MB"
    assert ratio <= RATIO_BOUND, f"status --json takes {ratio:.1f}x the peer's CPU time"
