"""HeartbeatMonitor: heartbeats on a thread, stale workers marked offline and their locks recovered."""

from __future__ import annotations

import os
import signal
import time

import pytest

from core.clock import SYSTEM_CLOCK
from core.distributed import HeartbeatConfig, HeartbeatMonitor, LockingConfig, LockManager, WorkerError, WorkerRegistry

from . import workers as child

FAST_LOCKS = LockingConfig(retry_attempts=0, retry_delay_ms=0)


def register(registry, wid):
    return registry.register({"workerId": wid, "hostname": "h", "capacity": {"maxTasks": 4}})


@pytest.fixture
def fleet(store, clock):
    registry = WorkerRegistry(store, clock)
    locks = LockManager(store, FAST_LOCKS, clock)
    monitor = HeartbeatMonitor(registry, locks, interval_ms=1_000, stale_threshold_ms=5_000, clock=clock)
    yield registry, locks, monitor
    monitor.stop()


def wait_for(condition, timeout=10.0, step=0.01):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def test_config_defaults_and_validation():
    assert HeartbeatConfig() == HeartbeatConfig(interval_ms=30_000, stale_threshold_ms=120_000)
    with pytest.raises(ValueError):
        HeartbeatConfig(interval_ms=0)
    with pytest.raises(ValueError):
        HeartbeatConfig(interval_ms=1_000, stale_threshold_ms=1_000)


def test_send_heartbeat_records_health_metadata(fleet, clock):
    registry, _, monitor = fleet
    register(registry, "w")
    clock.advance(500)
    info = monitor.send_heartbeat("w", {"cpu": 1.5, "activeTasks": 2, "healthStatus": "healthy"})
    assert info.heartbeat_ms == clock.now_ms() and info.metadata["healthStatus"] == "healthy"
    with pytest.raises(WorkerError):
        monitor.send_heartbeat("ghost")


def test_check_stale_workers_marks_and_recovers_exactly_after_the_threshold(fleet, clock):
    registry, locks, monitor = fleet
    register(registry, "silent")
    register(registry, "alive")
    locks.acquire_lock("t1", "silent")
    locks.acquire_lock("t2", "silent")
    locks.acquire_lock("t3", "alive")
    clock.advance(5_000)
    monitor.send_heartbeat("alive")
    assert monitor.check_stale_workers() == []  # exactly at the threshold
    clock.advance(1)
    assert monitor.check_stale_workers() == ["silent"]
    assert registry.get_worker("silent").status == "offline"
    assert [lock.task_id for lock in locks.list_locks()] == ["t3"]
    assert locks.acquire_lock("t1", "alive") is not None  # at once, not when the TTL runs out
    assert monitor.check_stale_workers() == []


def test_recover_stale_locks_counts(fleet):
    registry, locks, monitor = fleet
    for task in ("a", "b", "c"):
        locks.acquire_lock(task, "dead")
    assert monitor.recover_stale_locks("dead") == 3
    assert monitor.recover_stale_locks("dead") == 0


def test_start_heartbeats_on_a_thread_until_stopped(store):
    registry = WorkerRegistry(store)
    register(registry, "w")
    monitor = HeartbeatMonitor(registry, LockManager(store), interval_ms=20, stale_threshold_ms=1_000)
    with pytest.raises(WorkerError):
        monitor.start("ghost")
    assert not monitor.running
    first = registry.get_worker("w").heartbeat_ms
    monitor.start("w")
    monitor.start("w")  # again for the same worker: nothing changes
    with pytest.raises(RuntimeError):
        monitor.start("other")
    assert monitor.running
    wait_for(lambda: registry.get_worker("w").heartbeat_ms >= first + 60)
    monitor.stop()
    assert not monitor.running
    stopped_at = registry.get_worker("w").heartbeat_ms
    time.sleep(0.1)
    assert registry.get_worker("w").heartbeat_ms == stopped_at


def test_a_silent_worker_is_recovered_within_the_timeout_by_another_monitor(store):
    """Real time: a's monitor stops (as if it hung); b's monitor notices within threshold + interval."""
    interval, threshold = 40, 400
    registry = WorkerRegistry(store, SYSTEM_CLOCK)
    locks = LockManager(store, FAST_LOCKS, SYSTEM_CLOCK)
    for wid in ("a", "b"):
        register(registry, wid)
    silent = HeartbeatMonitor(registry, locks, interval, threshold, check_stale=False)
    watcher = HeartbeatMonitor(registry, locks, interval, threshold)
    silent.start("a")
    watcher.start("b")
    try:
        assert locks.acquire_lock("job", "a") is not None
        time.sleep(3 * interval / 1000)
        assert registry.get_worker("a").status == "active"
        silent.stop()
        last = registry.get_worker("a").heartbeat_ms
        wait_for(lambda: not locks.is_locked("job"), timeout=5)
        noticed = SYSTEM_CLOCK.now_ms()
        assert registry.get_worker("a").status == "offline" and registry.get_worker("b").status == "active"
        assert threshold < noticed - last <= threshold + interval + 500  # slack for a loaded 2-core machine
    finally:
        silent.stop()
        watcher.stop()


@pytest.mark.slow
def test_a_killed_worker_process_loses_its_locks(store, store_spec, processes):
    interval, threshold = 30, 300
    registry = WorkerRegistry(store)
    locks = LockManager(store, FAST_LOCKS)
    register(registry, "survivor")
    doomed = processes.spawn(child.doomed_worker, store_spec, "doomed", ["job-1", "job-2"], interval)
    processes.get(timeout=90)
    assert {lock.task_id for lock in locks.list_locks(worker_id="doomed")} == {"job-1", "job-2"}
    monitor = HeartbeatMonitor(registry, locks, interval, threshold)
    monitor.start("survivor")
    try:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(10)
        killed_at = SYSTEM_CLOCK.now_ms()
        wait_for(lambda: not locks.list_locks(worker_id="doomed"), timeout=5)
        assert SYSTEM_CLOCK.now_ms() - killed_at <= threshold + interval + 750
        assert registry.get_worker("doomed").status == "offline"
        assert locks.acquire_lock("job-1", "survivor") is not None
    finally:
        monitor.stop()
