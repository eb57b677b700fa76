"""Reusing judgments (core.judgments) is invisible: a builder that keeps them gives, at
every step of any history, the snapshot a builder judging everything from scratch gives."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import core.procs
from core.clock import ManualClock, utc_from_ms
from core.locks import lock_key
from core.models import (
    ActiveModelInfo,
    BroadcastQueueState,
    DistributedLock,
    InstanceInfo,
    InstanceParallelism,
    ModelParallelism,
    StealingStats,
)
from core.procs import Liveness, LivenessCache
from core.snapshot import FleetSnapshot, SnapshotBuilder, Status
from core.stealing import steal_resource
from core.store import INSTANCES, LOCKS, PARALLELISM, QUEUES, STEALING_STATS, DirectoryStore, Space

KEYS = [f"inst-{n}" for n in range(5)]
PIDS = [4_001, 4_002, 4_003]
MODELS = [(), (("openai", "gpt-4o"),), (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet"))]
CONFIGS = [(15_000, 60_000), (5_000, 20_000)]  # heartbeat interval, timeout
START = 1_900_000_000_000

write = st.tuples(
    st.just("write"),
    st.sampled_from(KEYS),
    # heartbeat and file mtime from now: either side of each threshold (stale, timeout, skew)
    st.one_of(st.sampled_from([-61_000, -59_000, -31_000, -29_000, -1_000, 7_000]), st.integers(-130_000, 12_000)),
    st.one_of(st.sampled_from([-61_000, -59_000, 0]), st.integers(-130_000, 0)),
    st.integers(0, 4),  # pending
    st.sampled_from(range(len(MODELS))),
    st.sampled_from(PIDS),
    st.booleans(),  # on another host: only ages tell
    st.booleans(),  # draining
)
ops = st.lists(
    st.one_of(
        write,
        st.tuples(st.just("remove"), st.sampled_from(KEYS)),
        st.tuples(st.just("corrupt"), st.sampled_from(KEYS)),
        st.tuples(st.just("queue"), st.sampled_from(KEYS), st.integers(0, 4)),
        st.tuples(st.just("stats"), st.sampled_from(KEYS), st.integers(0, 3)),
        st.tuples(st.just("adjuster"), st.sampled_from(KEYS), st.integers(1, 4)),
        st.tuples(st.just("steal lock"), st.sampled_from(KEYS), st.integers(-40_000, 40_000)),
        st.tuples(st.just("advance"), st.one_of(st.sampled_from([1, 999, 1_000, 2_000, 15_000, 30_000, -1_000, -5_000]), st.integers(-3_000, 70_000))),
        st.tuples(st.just("kill"), st.sampled_from(PIDS)),
        st.tuples(st.just("config"), st.sampled_from(range(len(CONFIGS)))),
    ),
    min_size=1,
    max_size=40,
)


class World:
    """A directory, a clock and a process table that the steps change (instance files,
    and the records of others that an instance's view shows: its queue state, stealing
    statistics, adjuster and the lock on its queue)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = DirectoryStore(root)
        self.clock = ManualClock(START)
        self.dead: set[int] = set()
        self.writes = 0

    def check(self, pid: int, **kwargs: Any) -> Liveness:
        if kwargs.get("hostname") not in (None, core.procs.HOSTNAME):
            return Liveness.UNKNOWN
        return Liveness.DEAD if pid in self.dead else Liveness.ALIVE

    def put(self, space: Space, key: str, data: bytes, mtime_from_now_ms: int = 0) -> None:
        """Write a file, its mtime as given and never one it had before (a rescan compares mtimes)."""
        self.store.write(space, key, data)
        self.writes += 1
        mtime_ns = (self.clock.now_ms() + mtime_from_now_ms) * 1_000_000 + self.writes
        path = self.root / space.name / f"{key}{space.suffix}"
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def step(self, op: tuple[Any, ...]) -> dict[Space, list[str]]:
        """Do ``op``; returns the keys it changed, as a watcher would name them."""
        now = self.clock.now_ms()
        kind, *args = op
        if kind == "write":
            key, beat, mtime, pending, models, pid, elsewhere, draining = args
            info = InstanceInfo(
                instance_id=key,
                pid=pid,
                session_id="s",
                started_at=utc_from_ms(START - 10_000),
                last_heartbeat=utc_from_ms(now + beat),
                cwd="/w",
                active_models=tuple(
                    ActiveModelInfo(provider=p, model=m, since=utc_from_ms(START)) for p, m in MODELS[models]
                ),
                pending_task_count=pending,
                hostname="another-host" if elsewhere else None,
                draining_since=now if draining else None,
            )
            self.put(INSTANCES, key, info.to_json(), mtime)
        elif kind == "remove":
            (self.root / INSTANCES.name / f"{args[0]}{INSTANCES.suffix}").unlink(missing_ok=True)
        elif kind == "corrupt":
            self.put(INSTANCES, args[0], b'{"instanceId": "torn", "pid": 1')
        elif kind == "queue":
            key, pending = args
            state = BroadcastQueueState(instance_id=key, timestamp=utc_from_ms(now), pending_task_count=pending)
            self.put(QUEUES, key, state.to_json())
            return {QUEUES: [key]}
        elif kind == "stats":
            key, attempts = args
            self.put(STEALING_STATS, key, StealingStats(instance_id=key, total_attempts=attempts).to_json())
            return {STEALING_STATS: [key]}
        elif kind == "adjuster":
            key, limit = args
            model = ModelParallelism(
                provider="openai",
                model="gpt-4o",
                base_parallelism=limit,
                current_parallelism=limit,
                min_parallelism=1,
                max_parallelism=4,
                effective_parallelism=limit,
                active_requests=1,
            )
            adjuster = InstanceParallelism(instance_id=key, updated_at=now, models={"openai:gpt-4o": model})
            self.put(PARALLELISM, key, adjuster.to_json())
            return {PARALLELISM: [key]}
        elif kind == "steal lock":
            key, expires = args
            resource = steal_resource(key)
            lock = DistributedLock(lock_id=key, acquired_at=now - 1_000, expires_at=now + expires, resource=resource)
            self.put(LOCKS, lock_key(resource), lock.to_json())
            return {LOCKS: [lock_key(resource)]}
        elif kind == "advance":
            self.clock.advance(args[0])
        elif kind == "kill":
            self.dead.add(args[0])
        elif kind == "config":
            interval, timeout = CONFIGS[args[0]]
            config = {"heartbeatIntervalMs": interval, "heartbeatTimeoutMs": timeout}
            (self.root / "coordinator.json").write_text(json.dumps(config))
        return {INSTANCES: [args[0]]} if kind in ("write", "remove", "corrupt") else {}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops, check_pids=st.booleans(), hinted=st.booleans())
# A file written after its heartbeat expired, and a clock set back: the judgment of a
# moment ago stands only from the instant its problem went away.
@example(
    steps=[("write", KEYS[0], -61_000, -59_000, 0, 0, PIDS[0], False, False), ("advance", 2_000), ("advance", -1_500)],
    check_pids=False,
    hinted=False,
)
def test_reused_judgments_equal_judging_from_scratch(
    steps: list[tuple[Any, ...]],
    check_pids: bool,
    hinted: bool,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(tmp_path_factory.mktemp("runtime"))
    # Both builders ask the same process table through one cache of answers: what
    # differs between them is only what the reusing one kept from its earlier builds.
    answers = LivenessCache()
    reusing = SnapshotBuilder(world.store, clock=world.clock, check_pids=check_pids, liveness=answers)
    monkeypatch.setattr(core.procs, "check", world.check)
    reusing.build()
    for op in steps:
        changed = world.step(op)
        kept = reusing.build(changed if hinted else None)
        fresh = SnapshotBuilder(world.store, clock=world.clock, check_pids=check_pids, liveness=answers).build()
        assert_same(kept, fresh)


def assert_same(kept: FleetSnapshot, fresh: FleetSnapshot) -> None:
    assert kept.instances == fresh.instances
    assert kept.figures == fresh.figures
    # The store's caches list unreadable files and locks in the order they were seen, a
    # fresh one in the directory's: these come in no particular order (FleetSnapshot).
    assert sorted(kept.problems, key=str) == sorted(fresh.problems, key=str)
    assert sorted(kept.locks, key=lambda v: v.key) == sorted(fresh.locks, key=lambda v: v.key)
    assert replace(kept, problems=(), locks=()) == replace(fresh, problems=(), locks=())


def test_a_dead_pid_is_seen_once_its_answer_expires(
    store: DirectoryStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judgment of an unchanged file is kept no longer than the answer about its pid."""
    pid = 4_004
    info = InstanceInfo(
        instance_id="a", pid=pid, session_id="s", started_at=utc_from_ms(clock.now_ms() - 1),
        last_heartbeat=utc_from_ms(clock.now_ms()), cwd="/w",
    )  # fmt: skip
    store.write(INSTANCES, "a", info.to_json())
    dead: set[int] = set()
    answers = LivenessCache(ttl_ms=2_000)
    monkeypatch.setattr(core.procs, "check", lambda p, **_: Liveness.DEAD if p in dead else Liveness.ALIVE)
    builder = SnapshotBuilder(store, clock=clock, liveness=answers)
    assert builder.build().instance("a").status is Status.ALIVE
    dead.add(pid)
    clock.advance(1_999)
    assert builder.build().instance("a").status is Status.ALIVE  # the answer stands for 2 s
    clock.advance(1)
    assert builder.build().instance("a").status is Status.DEAD
