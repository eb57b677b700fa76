"""Benchmark: building a FleetSnapshot of a 1,000-instance coordination directory.

Run with ``pytest tests/bench -m bench -s``.  The directory holds 1,000
``instances/*.lock`` and 1,000 ``queue-states/*.json`` files (see
``conftest.fleet`` for what is in them and which pids they name).  The page
cache cannot be dropped from here: every figure is taken after one warm-up
build, so all reads hit the cache, as they do for a dashboard that runs on.

Targets (median of the runs): cold build <= 50 ms; rebuild after one instance
file changed, watcher-hinted <= 5 ms; full rescan is aimed at 5 ms too but is
only asserted at <= 15 ms.  Each is compared with a naive re-parse of every
file (listdir, read, ``json.loads`` and pydantic ``model_validate_json``, as pi
re-reads the directory) measured in the same run.  A missed target prints a
cProfile of the operation before the test fails.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import time
from collections.abc import Callable

import pytest

from core.clock import utc_from_ms
from core.models import BroadcastQueueState, InstanceInfo
from core.procs import Liveness
from core.snapshot import FleetSnapshot, SnapshotBuilder, Status
from core.store import INSTANCES

from .conftest import CHILD_EVERY, FLEET_SIZE, Fleet, now_ms, p50, table

COLD_RUNS = 9
REBUILD_RUNS = 30
NAIVE_RUNS = 9

COLD_TARGET_MS = 50.0
HINTED_TARGET_MS = 5.0
FULL_TARGET_MS = 5.0  # aimed at, printed
FULL_BOUND_MS = 15.0  # asserted

pytestmark = pytest.mark.bench


def naive_reparse(root: str) -> int:
    """What a reader without a cache does: read and validate every file again."""
    parsed = 0
    for sub, suffix, model in (("instances", ".lock", InstanceInfo), ("queue-states", ".json", BroadcastQueueState)):
        directory = os.path.join(root, sub)
        for name in os.listdir(directory):
            if name.startswith(".") or not name.endswith(suffix):
                continue
            with open(os.path.join(directory, name), "rb") as fh:
                data = fh.read()
            json.loads(data)
            model.model_validate_json(data)
            parsed += 1
    return parsed


def stat_every_file(root: str) -> int:
    """The least a rescan that must see pi's in-place rewrites can do: a stat of every
    file (an in-place write changes the file's mtime, never its directory's)."""
    seen = 0
    for sub in ("instances", "queue-states"):
        with os.scandir(os.path.join(root, sub)) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)
                seen += 1
    return seen


def sample(fn: Callable[[], object], runs: int, before: Callable[[], object] | None = None) -> list[float]:
    """Milliseconds of ``runs`` calls; ``before`` (untimed) runs ahead of each.

    No ``gc.collect()`` between runs: the collector runs when it would in a
    dashboard.  (A full collection before each run costs the next build its
    warm CPU caches: about +0.6 ms hinted, +1.5 ms full rescan here.)
    """
    out = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def profile_top(fn: Callable[[], object], runs: int = 5, before: Callable[[], object] | None = None, top: int = 18) -> str:
    profiler = cProfile.Profile()
    for _ in range(runs):
        if before is not None:
            before()
        profiler.enable()
        fn()
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def row(name: str, samples: list[float], target: str, verdict: str) -> list[str]:
    return [name, str(len(samples)), f"{p50(samples):.2f}", f"{max(samples):.2f}", target, verdict]


HEADER = ["operation", "runs", "p50 ms", "max ms", "target", "verdict"]


def check_snapshot(snapshot: FleetSnapshot) -> None:
    """The fleet is what the benchmark means it to be: all alive or stale, no problems."""
    assert len(snapshot.instances) == FLEET_SIZE
    assert len(snapshot.queues) == FLEET_SIZE
    assert snapshot.problems == (), snapshot.problems[:3]
    assert snapshot.figures.status_counts[Status.DEAD] == 0, "heartbeats passed the timeout: the run took too long"
    assert snapshot.figures.status_counts[Status.CORRUPT] == 0
    assert snapshot.figures.active_count == FLEET_SIZE
    assert all(v.pid_running is Liveness.ALIVE for v in snapshot.instances)
    assert snapshot.figures.stealable_tasks > 0


def test_cold_build(fleet: Fleet) -> None:
    store = fleet.store
    root = str(fleet.root)
    # Warm-up (page cache, pydantic, psutil): the page cache cannot be dropped here.
    check_snapshot(SnapshotBuilder(store).build())
    assert naive_reparse(root) == 2 * FLEET_SIZE

    cold = sample(lambda: SnapshotBuilder(store).build(), COLD_RUNS)
    naive = sample(lambda: naive_reparse(root), NAIVE_RUNS)
    check_snapshot(SnapshotBuilder(store).build())

    ok = p50(cold) <= COLD_TARGET_MS
    print(
        table(
            f"Snapshot, cold build: {FLEET_SIZE} instance + {FLEET_SIZE} queue files "
            f"({FLEET_SIZE // CHILD_EVERY} instances on live child pids, the rest on this pid); warmed up once",
            HEADER,
            [
                row("cold SnapshotBuilder(store).build()", cold, f"<= {COLD_TARGET_MS:.0f} ms", "ok" if ok else "MISS"),
                row("peer: naive re-parse of every file", naive, "-", "-"),
            ],
        )
    )
    print(f"ratio naive/cold (p50): {p50(naive) / p50(cold):.2f}x")
    if not ok:
        print("\nMISS: cold build profile (cProfile, 5 builds, by own time):")
        print(profile_top(lambda: SnapshotBuilder(store).build()))
    assert ok, f"cold build p50 {p50(cold):.2f} ms > {COLD_TARGET_MS} ms"


def test_rebuild_after_one_instance_changed(fleet: Fleet) -> None:
    store = fleet.store
    root = str(fleet.root)
    builder = SnapshotBuilder(store)
    check_snapshot(builder.build())  # the warm-up, and the builder's first build
    assert naive_reparse(root) == 2 * FLEET_SIZE

    turn = 0
    changed: list[tuple[str, int]] = []

    def rewrite_one() -> None:
        """Really rewrite one instance file (a new heartbeat), a different one each time."""
        nonlocal turn
        key = fleet.keys[(turn * 37) % FLEET_SIZE]
        turn += 1
        beat = now_ms()
        info = fleet.infos[key].model_copy(update={"last_heartbeat": utc_from_ms(beat)})
        store.write(INSTANCES, key, info.to_json(), durable=False)
        changed.append((key, beat))

    last: list[FleetSnapshot] = []  # only the latest: retained snapshots would tax the gc

    def full() -> None:
        last[:] = [builder.build()]

    def hinted() -> None:
        last[:] = [builder.build({INSTANCES: [changed[-1][0]]})]

    def saw_the_rewrite() -> None:
        key, beat = changed[-1]
        view = next(v for v in last[0].instances if v.key == key)
        assert view.info is not None and view.info.heartbeat_ms == beat

    # Interleaved so both see the same conditions (liveness cache expiry included).
    full_ms: list[float] = []
    hinted_ms: list[float] = []
    floor_ms: list[float] = []
    for _ in range(REBUILD_RUNS):
        full_ms += sample(full, 1, before=rewrite_one)
        saw_the_rewrite()
        hinted_ms += sample(hinted, 1, before=rewrite_one)
        saw_the_rewrite()
        floor_ms += sample(lambda: stat_every_file(root), 1)
    naive = sample(lambda: naive_reparse(root), NAIVE_RUNS)
    check_snapshot(last[0])

    hinted_ok = p50(hinted_ms) <= HINTED_TARGET_MS
    full_on_target = p50(full_ms) <= FULL_TARGET_MS
    full_ok = p50(full_ms) <= FULL_BOUND_MS
    print(
        table(
            f"Snapshot, rebuild after one instance file rewritten (new heartbeat), {FLEET_SIZE}+{FLEET_SIZE} files",
            HEADER,
            [
                row(
                    "(a) full rescan builder.build()",
                    full_ms,
                    f"<= {FULL_TARGET_MS:.0f} ms (assert <= {FULL_BOUND_MS:.0f})",
                    "ok" if full_on_target else ("MISS (within bound)" if full_ok else "MISS"),
                ),
                row(
                    "(b) hinted build({INSTANCES: [key]})",
                    hinted_ms,
                    f"<= {HINTED_TARGET_MS:.0f} ms",
                    "ok" if hinted_ok else "MISS",
                ),
                row("peer: naive re-parse of every file", naive, "-", "-"),
                row("floor: os.scandir + stat of every file", floor_ms, "-", "-"),
            ],
        )
    )
    print(f"ratio naive/full rescan (p50): {p50(naive) / p50(full_ms):.1f}x")
    print(f"ratio full rescan/stat floor (p50): {p50(full_ms) / p50(floor_ms):.2f}x (load average {os.getloadavg()[0]:.1f})")
    print(f"ratio naive/hinted      (p50): {p50(naive) / p50(hinted_ms):.1f}x")
    if not hinted_ok:
        print("\nMISS: hinted rebuild profile (cProfile, 5 rebuilds, by own time):")
        print(profile_top(hinted, before=rewrite_one))
    if not full_on_target:
        print(f"\nfull rescan misses {FULL_TARGET_MS:.0f} ms; profile (cProfile, 5 rebuilds, by own time):")
        print(profile_top(full, before=rewrite_one))
    assert hinted_ok, f"hinted rebuild p50 {p50(hinted_ms):.2f} ms > {HINTED_TARGET_MS} ms"
    assert full_ok, f"full-rescan rebuild p50 {p50(full_ms):.2f} ms > {FULL_BOUND_MS} ms"
