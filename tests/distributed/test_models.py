"""Records on disk: camelCase, ISO-8601 times, unknown keys kept; errors that cross processes."""

from __future__ import annotations

import json
import pickle

import core.distributed as dist
from core.clock import utc_from_ms
from core.distributed import Lock, LockError, SyncError, Task, WorkerError, WorkerInfo


def test_lock_round_trips_and_keeps_unknown_keys():
    raw = {
        "formatVersion": 1,
        "taskId": "task-123",
        "workerId": "worker-001",
        "acquiredAt": "2026-02-18T00:15:35.675Z",
        "expiresAt": "2026-02-18T00:20:35.675Z",
        "fencingToken": 7,
        "metadata": {"hostname": "h", "pid": 1, "taskType": "build", "custom": [1]},
        "addedLater": True,
    }
    lock = Lock.from_json(json.dumps(raw, indent=2))
    assert lock.expires_ms - lock.acquired_ms == 300_000 and lock.metadata.get("custom") == [1]
    assert json.loads(lock.to_json()) == raw
    assert lock.is_expired(lock.expires_ms) and not lock.is_expired(lock.expires_ms - 1)
    assert lock.ttl_left_ms(lock.expires_ms - 5) == 5


def test_worker_info_is_camel_case_and_derives_free_slots():
    info = WorkerInfo.model_validate(
        {
            "workerId": "w",
            "registeredAt": utc_from_ms(1_771_373_734_675),
            "lastHeartbeat": utc_from_ms(1_771_373_735_675),
            "capacity": {"maxTasks": 4, "activeTasks": 1},
        }
    )
    assert info.free_slots == 3 and info.heartbeat_ms == 1_771_373_735_675 and info.load == 0.25
    assert info.capacity.consistent().available_slots == 3
    data = json.loads(info.to_json())
    assert data["lastHeartbeat"] == "2026-02-18T00:15:35.675Z" and "staleSince" not in data
    assert data["capabilities"] == {"cpuCores": 0, "memoryMb": 0, "supportedTaskTypes": []}


def test_task_accepts_seed_003s_shape():
    task = Task.model_validate(
        {"id": "t", "type": "build", "priority": 3, "estimatedDuration": 1.5,
         "requirements": {"minCpuCores": 2, "requiredCapabilities": ["gpu"]}}
    )
    assert task.requirements.min_cpu_cores == 2 and task.requirements.required_capabilities == ("gpu",)


def test_errors_keep_their_fields_through_pickle():
    for error in (WorkerError("w gone", "w"), SyncError("bad", "ns"), LockError("x", "INVALID_OWNER")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.__dict__ == error.__dict__ and str(copy) == str(error)


def test_public_names():
    for name in dist.__all__:
        assert getattr(dist, name) is not None
