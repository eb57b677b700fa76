"""Operator actions: drain with acknowledgement, guarded lock release, removing a dead instance."""

from __future__ import annotations

import os
import time

from core.clock import ManualClock
from core.control import FleetControl
from core.coordinator import Coordinator
from core.snapshot import SnapshotBuilder, Status
from core.store import CONTROL, INSTANCES, LOCKS
from tests.helpers import AgingClock


def _status(store, clock=None) -> dict[str, Status]:
    builder = SnapshotBuilder(store, clock=clock) if clock else SnapshotBuilder(store)
    return {v.key: v.status for v in builder.build().instances}


def test_drain_is_acknowledged_then_the_instance_goes_offline(root):
    worker = Coordinator(root=root)
    worker.register(heartbeat=False)
    worker_id = worker.instance_id
    control = FleetControl(worker.store, "pi-dash@test")
    assert control.request_drain(worker_id).done
    assert not control.request_drain(worker_id).done  # one pending request at a time
    worker.check_control()
    assert worker.draining and worker.safe_steal_work() is None and not worker.should_attempt_work_stealing()
    assert _status(worker.store)[worker_id] is Status.DRAINING
    worker.finish_drain()
    assert _status(worker.store)[worker_id] is Status.OFFLINE
    kinds = [e.message for e in worker.events.read()[0] if e.kind == "drain"]
    assert len(kinds) == 3 and "went offline" in kinds[-1]


def test_the_heartbeat_thread_acknowledges_within_a_second_or_two(root):
    worker = Coordinator(root=root, config={"heartbeat_interval_ms": 60_000})
    worker.register()
    try:
        FleetControl(worker.store, "pi-dash@test").request_drain(worker.instance_id)
        deadline = time.monotonic() + 3
        while not worker.draining and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.draining
    finally:
        worker.unregister()


def test_an_instance_that_ignores_control_is_flagged_not_acknowledged(root, store):
    pi_like = Coordinator(root=root)
    pi_like.register(heartbeat=False)  # never calls check_control, like pi's TypeScript instances
    FleetControl(store, "pi-dash@test").request_drain(pi_like.instance_id)
    later = ManualClock(int(time.time() * 1000) + 31_000)  # two 15 s heartbeat intervals
    snapshot = SnapshotBuilder(store, clock=later).build()
    assert [c.state for c in snapshot.controls] == ["not-acknowledged"]
    assert "not-acknowledged" in [p.kind for p in snapshot.problems]


def test_release_lock_never_removes_a_lock_that_changed_hands(root, store):
    clock = AgingClock(store, now_ms=int(time.time() * 1000))
    holder = Coordinator(root=root, clock=clock)
    holder.register(heartbeat=False)
    seen = holder.try_acquire_lock("steal:x", ttl_ms=1_000)
    control = FleetControl(store, "pi-dash@test", clock)
    clock.advance(1_000)
    other = Coordinator(root=root, clock=clock)
    other.register(heartbeat=False)
    taken = other.try_acquire_lock("steal:x")
    result = control.release_lock(seen)  # the dashboard still shows the old lock
    assert not result.done and "held by" in result.message
    assert store.read(LOCKS, "steal_x") is not None
    assert control.release_lock(taken).done
    assert store.read(LOCKS, "steal_x") is None
    assert "lock-release" in [e.kind for e in control.events.read()[0]]


def test_remove_instance_files_only_while_unchanged(root, store):
    dead = Coordinator(root=root)
    dead.register(heartbeat=False)
    dead.broadcast_queue_state(0)
    key = dead.instance_id
    seen = store.read(INSTANCES, key).data
    control = FleetControl(store, "pi-dash@test")
    time.sleep(0.005)  # a heartbeat in the same millisecond writes the same bytes: nothing changed
    dead.heartbeat()  # it came back to life after the snapshot
    assert not control.remove_instance_files(key, seen).done
    assert store.read(INSTANCES, key) is not None
    current = store.read(INSTANCES, key).data
    assert control.remove_instance_files(key, current).done
    assert store.read(INSTANCES, key) is None and not os.listdir(root / "queue-states")
    assert store.read(CONTROL, key) is None
