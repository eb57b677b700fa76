"""Distributed execution (seed 003) on the :class:`core.store.Store` interface.

Task locks with fencing tokens, a worker registry, shared memory with
watches, load balancing and heartbeats, for workers in any number of
processes sharing one store (a directory today, Redis tomorrow: this package
only ever talks to the store's interface).

Example::

    store = DirectoryStore(root)
    registry = WorkerRegistry(store)
    registry.register({"workerId": "w1", "hostname": "h", "capacity": {"maxTasks": 4},
                       "capabilities": {"supportedTaskTypes": ["build"]}})
    locks = LockManager(store)
    if (lock := locks.acquire_lock("task-1", "w1", {"taskType": "build"})):
        try:
            run(lock.fencing_token)     # a guard refuses stale tokens: locks.check_fencing
        finally:
            locks.release_lock("task-1", "w1")
"""

from .balancer import STRATEGIES, LoadBalancer, can_run, pick_next_task, plan_rebalance
from .errors import DistributedError, LockError, LockErrorCode, NotFoundError, SyncError, WorkerError
from .heartbeat import HeartbeatMonitor
from .locks import LockManager
from .memory import MemorySyncManager
from .models import (
    WORKER_STATUSES,
    HeartbeatConfig,
    LoadDistribution,
    Lock,
    LockingConfig,
    LockMetadata,
    MemoryEntry,
    RebalanceResult,
    Task,
    TaskMove,
    TaskRequirements,
    WorkerCapabilities,
    WorkerCapacity,
    WorkerInfo,
    WorkerLoad,
    WorkerStatus,
)
from .registry import WorkerRegistry

__all__ = [
    "STRATEGIES",
    "WORKER_STATUSES",
    "DistributedError",
    "HeartbeatConfig",
    "HeartbeatMonitor",
    "LoadBalancer",
    "LoadDistribution",
    "Lock",
    "LockError",
    "LockErrorCode",
    "LockManager",
    "LockMetadata",
    "LockingConfig",
    "MemoryEntry",
    "MemorySyncManager",
    "NotFoundError",
    "RebalanceResult",
    "SyncError",
    "Task",
    "TaskMove",
    "TaskRequirements",
    "WorkerCapabilities",
    "WorkerCapacity",
    "WorkerError",
    "WorkerInfo",
    "WorkerLoad",
    "WorkerRegistry",
    "WorkerStatus",
    "can_run",
    "pick_next_task",
    "plan_rebalance",
]
