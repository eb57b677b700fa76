"""Code shared by the tests and the processes they spawn.

Spawned children unpickle their target by module name, so everything they run
lives here (imported as ``tests.distributed.workers``).  A store is passed to
a child as a *spec* and reopened with :func:`open_store`: adding a backend to
the suite means adding a branch to ``tests/backends.py``.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from tests.backends import StoreSpec, open_store
from tests.child_processes import report_errors

def registry_hammer(spec: StoreSpec, worker_id: str, index: int, rounds: int, start: Any, out: Any) -> None:
    """Change one shared worker ``rounds`` times in three ways; lost updates show in the totals."""

    def body() -> int:
        from core.distributed import WorkerRegistry

        registry = WorkerRegistry(open_store(spec))
        start.wait(30)
        for n in range(1, rounds + 1):
            registry.adjust_active_tasks(worker_id, +1)
            registry.heartbeat(worker_id, {f"p{index}": n})
            registry.update_status(worker_id, "busy" if n % 2 else "active")
        return rounds

    report_errors(f"hammer-{index}", out, body)


def memory_writer(spec: StoreSpec, key: str, namespace: str, values: list[Any], gap_s: float, out: Any) -> None:
    """Set ``key`` to each of ``values`` in turn, then delete it."""

    def body() -> int:
        from core.distributed import MemorySyncManager

        memory = MemorySyncManager(open_store(spec))
        for value in values:
            memory.set(key, value, namespace)
            time.sleep(gap_s)
        memory.delete(key, namespace)
        return os.getpid()

    report_errors("writer", out, body)


def doomed_worker(spec: StoreSpec, worker_id: str, tasks: list[str], interval_ms: int, out: Any) -> None:
    """Register, heartbeat, take locks, report ready, then wait to be killed."""
    try:
        from core.distributed import HeartbeatMonitor, LockManager, WorkerRegistry

        store = open_store(spec)
        registry = WorkerRegistry(store)
        locks = LockManager(store)
        registry.register(
            {"workerId": worker_id, "hostname": "doomed", "capacity": {"maxTasks": 4}, "capabilities": {}}
        )
        monitor = HeartbeatMonitor(registry, locks, interval_ms=interval_ms, stale_threshold_ms=interval_ms * 100, check_stale=False)
        monitor.start(worker_id)
        for task in tasks:
            assert locks.acquire_lock(task, worker_id, {"pid": os.getpid()}, ttl_seconds=600) is not None
        out.put(("ready", worker_id, os.getpid()))
        time.sleep(600)
    except BaseException:  # noqa: BLE001
        out.put(("error", worker_id, traceback.format_exc()))
