"""Stopped (SIGSTOP) and killed (SIGKILL) owners and thieves: every entry runs exactly once.

A process running with the recorded start time is never treated as gone,
however old its heartbeat: a stopped owner keeps its instance file and every
claim on its entries, so when it resumes it runs none of them again.  A
thief killed after claiming has its claim released, so the entry is run by
someone, not lost.  Runs are counted from a log every run appends to.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from core.clock import SYSTEM_CLOCK
from core.coordinator import Coordinator
from core.distributed import LockManager
from core.locks import LockService
from core.snapshot import SnapshotBuilder, Status
from core.store import DirectoryStore
from tests.child_processes import CTX, READY, RESULT, fleet

from . import workers

pytestmark = pytest.mark.slow

INTERVAL_MS, TIMEOUT_MS = 200, 1_000
ENV = workers.fleet_env(INTERVAL_MS, TIMEOUT_MS)
N_ENTRIES = 60
PACE_S = 0.04


def run_counts(runs_log: Path) -> Counter[str]:
    lines = runs_log.read_text().splitlines() if runs_log.exists() else []
    return Counter(line.split(" ")[0] for line in lines)


def assert_exactly_once(runs_log: Path, owner_id: str) -> None:
    counts = run_counts(runs_log)
    expected = {f"{owner_id}/task-{i:04d}" for i in range(N_ENTRIES)}
    twice = sorted(k for k, n in counts.items() if n > 1)
    never = sorted(expected - set(counts))
    print(f"\n{N_ENTRIES} entries: {len(twice)} run twice, {len(never)} never run, {sum(counts.values())} runs")
    assert (len(twice), len(never)) == (0, 0), f"run twice: {twice}; never run: {never}"


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def started_fleet(children, root: Path, runs_log: Path, thieves: int, others: int = 0):
    """An owner and ``thieves`` thieves, registered and waiting (with ``others`` children
    spawned before); returns the owner's process, its id, and the event that stops the thieves."""
    owner = children.spawn(workers.owner, str(root), ENV, str(runs_log), N_ENTRIES, PACE_S, children.start)
    stop = CTX.Event()
    for n in range(thieves):
        children.spawn(workers.thief, str(root), ENV, str(runs_log), f"thief{n}", PACE_S, children.start, stop)
    ready = children.collect(READY, 1 + thieves + others, 120)
    return owner, ready["owner"], stop


def test_a_stopped_owner_runs_none_of_its_stolen_entries_again(root, tmp_path):
    runs_log = tmp_path / "runs.log"
    with fleet() as children:
        owner, owner_id, stop = started_fleet(children, root, runs_log, thieves=2)
        children.start.set()
        wait_for(lambda: sum(run_counts(runs_log).values()) >= 8, 60, "nobody ran anything")
        os.kill(owner.pid, signal.SIGSTOP)
        try:
            time.sleep(4 * TIMEOUT_MS / 1000)  # far past the heartbeat timeout; the thieves clean up meanwhile
            snapshot = SnapshotBuilder(DirectoryStore(root), clock=SYSTEM_CLOCK, env=ENV).build()
            view = snapshot.instance(owner_id)
            assert view is not None, "a stopped owner's instance file was removed"
            assert view.status is Status.STALLED
        finally:
            os.kill(owner.pid, signal.SIGCONT)
        result = children.collect(RESULT, 1, 120)["owner"]
        stop.set()
        children.collect(RESULT, 2, 60)
        assert result["left"] == []
    assert_exactly_once(runs_log, owner_id)


def test_a_thief_killed_after_claiming_leaves_its_entry_to_be_run(root, tmp_path):
    runs_log = tmp_path / "runs.log"
    with fleet() as children:
        stolen_file = tmp_path / "stolen"
        doomed = children.spawn(workers.doomed_thief, str(root), ENV, str(stolen_file), children.start)
        owner, owner_id, stop = started_fleet(children, root, runs_log, thieves=1, others=1)
        children.start.set()
        wait_for(stolen_file.exists, 60, "the doomed thief stole nothing")
        os.kill(doomed.pid, signal.SIGKILL)
        stolen = stolen_file.read_text()
        result = children.collect(RESULT, 1, 120)["owner"]
        stop.set()
        children.collect(RESULT, 1, 60)
        claims = {p.name: p.read_bytes() for p in (root / "pi-dash" / "claims").iterdir()}
        assert result["left"] == [], f"entries never run: {result['left']}; claims {claims}"
    counts = run_counts(runs_log)
    assert counts[f"{owner_id}/{stolen}"] == 1
    assert_exactly_once(runs_log, owner_id)


def test_a_stopped_instance_is_stalled_not_gone(root):
    with fleet() as children:
        child = children.spawn(workers.registered, str(root), ENV)
        instance_id = children.collect(READY, 1, 60)["registered"]
        os.kill(child.pid, signal.SIGSTOP)
        try:
            time.sleep(2 * TIMEOUT_MS / 1000)
            me = Coordinator(root=root, env=ENV)
            me.register(heartbeat=False)
            assert me.cleanup_dead_instances() == []
            assert instance_id not in {i.instance_id for i in me.active_instances()}  # pi's count: not active
            view = SnapshotBuilder(DirectoryStore(root), env=ENV).build().instance(instance_id)
            assert view is not None and view.status is Status.STALLED and not view.counted
            me.unregister()
        finally:
            os.kill(child.pid, signal.SIGCONT)
        wait_for(
            lambda: SnapshotBuilder(DirectoryStore(root), env=ENV).build().instance(instance_id).status is Status.ALIVE,
            30,
            "the resumed instance did not come back alive",
        )
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        me = Coordinator(root=root, env=ENV)
        assert me.cleanup_dead_instances() == [instance_id]  # killed: gone at once, by its pid


def test_a_stopped_holder_loses_its_locks_by_ttl_and_is_fenced_off(root):
    ttl_ms = 1_500
    with fleet() as children:
        resumed = CTX.Event()
        holder = children.spawn(workers.stopped_holder, ("directory", str(root)), ttl_ms, resumed)
        token = children.collect(READY, 1, 60)["holder"]
        taken_at = time.monotonic()
        os.kill(holder.pid, signal.SIGSTOP)
        try:
            contender = LockService(DirectoryStore(root), "contender")
            tasks = LockManager(DirectoryStore(root))
            lock = task = None
            early_grants = 0
            while lock is None or task is None:
                assert time.monotonic() - taken_at < 30, "a stopped holder's locks never expired"
                lock = lock or contender.try_acquire("resource", ttl_ms=60_000)
                task = task or tasks.acquire_lock("task", "contender", ttl_seconds=60)
                if (lock or task) and time.monotonic() - taken_at < ttl_ms / 1000 - 0.2:
                    early_grants += 1
                time.sleep(0.05)
            assert early_grants == 0, "a live lock was granted before its TTL"
            assert task.fencing_token > token
        finally:
            os.kill(holder.pid, signal.SIGCONT)
        resumed.set()
        result = children.collect(RESULT, 1, 60)["holder"]
    assert result == {"fencing_accepted": False, "released": False}
