"""WorkerRegistry: registration, status and capacity, heartbeats, filters, staleness, concurrency."""

from __future__ import annotations

import json

import pytest

from core.distributed import WorkerCapacity, WorkerError, WorkerRegistry
from core.store import WORKERS

from . import workers as child


def seed_worker(worker_id: str = "worker-001", **overrides):
    """Seed 003's registration example."""
    worker = {
        "workerId": worker_id,
        "hostname": "worker-1.example.com",
        "capacity": {"maxTasks": 10, "activeTasks": 0, "availableSlots": 10},
        "capabilities": {"cpuCores": 4, "memoryMb": 8192, "supportedTaskTypes": ["build", "test", "deploy"]},
        "metadata": {"region": "us-east-1", "version": "1.0.0"},
    }
    worker.update(overrides)
    return worker


@pytest.fixture
def registry(store, clock) -> WorkerRegistry:
    return WorkerRegistry(store, clock)


def test_register_writes_seed_003s_worker_camel_case(registry, store, clock):
    info = registry.register(seed_worker())
    assert info.status == "active" and info.heartbeat_ms == clock.now_ms()
    assert info.capabilities.supported_task_types == ("build", "test", "deploy")
    on_disk = json.loads(store.read(WORKERS, "worker-001").data)
    assert on_disk["workerId"] == "worker-001" and on_disk["status"] == "active"
    assert on_disk["capacity"] == {"maxTasks": 10, "activeTasks": 0, "availableSlots": 10}
    assert on_disk["capabilities"]["memoryMb"] == 8192 and on_disk["metadata"]["region"] == "us-east-1"
    assert on_disk["registeredAt"] == on_disk["lastHeartbeat"] and on_disk["lastHeartbeat"].endswith("Z")
    assert registry.get_worker("worker-001") == info


def test_register_derives_available_slots_and_accepts_snake_case_or_a_model(registry, clock):
    info = registry.register({"worker_id": "w", "capacity": {"max_tasks": 3, "active_tasks": 1, "available_slots": 99}})
    assert info.capacity.available_slots == 2 and info.hostname == ""
    again = registry.register(info.model_copy(update={"status": "busy"}))
    assert again.status == "busy" and registry.get_worker("w").status == "busy"


def test_register_rejects_invalid_workers(registry):
    with pytest.raises(WorkerError) as bad_status:
        registry.register(seed_worker(status="sleeping"))
    assert bad_status.value.worker_id == "worker-001"
    with pytest.raises(WorkerError):
        registry.register(seed_worker(capacity={"maxTasks": -1}))


def test_unknown_keys_survive_updates(registry, store):
    registry.register(seed_worker())
    raw = json.loads(store.read(WORKERS, "worker-001").data)
    raw["fromTheFuture"] = {"x": 1}
    store.write(WORKERS, "worker-001", json.dumps(raw).encode())
    registry.update_status("worker-001", "busy")
    assert json.loads(store.read(WORKERS, "worker-001").data)["fromTheFuture"] == {"x": 1}


def test_deregister(registry):
    registry.register(seed_worker())
    assert registry.deregister("worker-001") is True
    assert registry.deregister("worker-001") is False
    assert registry.get_worker("worker-001") is None


def test_update_status_merges_capacity_and_keeps_slots_consistent(registry):
    registry.register(seed_worker())
    info = registry.update_status("worker-001", "active", {"activeTasks": 2, "availableSlots": 8})  # seed's call
    assert (info.status, info.capacity.active_tasks, info.capacity.available_slots) == ("active", 2, 8)
    info = registry.update_status("worker-001", "busy", {"availableSlots": 3})
    assert (info.capacity.active_tasks, info.capacity.available_slots) == (7, 3)
    info = registry.update_status("worker-001", "busy", {"active_tasks": 4, "availableSlots": 1})  # active wins
    assert (info.capacity.active_tasks, info.capacity.available_slots) == (4, 6)
    info = registry.update_status("worker-001", "draining", WorkerCapacity(max_tasks=2, active_tasks=4))
    assert (info.status, info.capacity.max_tasks, info.capacity.available_slots) == ("draining", 2, 0)
    assert registry.get_worker("worker-001") == info


def test_update_status_errors(registry):
    with pytest.raises(WorkerError) as unknown:
        registry.update_status("ghost", "active")
    assert unknown.value.worker_id == "ghost" and "not registered" in str(unknown.value)
    registry.register(seed_worker())
    with pytest.raises(WorkerError):
        registry.update_status("worker-001", "sleeping")
    with pytest.raises(WorkerError):
        registry.update_status("worker-001", "active", {"maxSlots": 3})
    with pytest.raises(WorkerError):
        registry.update_status("worker-001", "active", {"activeTasks": -1})
    with pytest.raises(WorkerError):
        registry.update_status("worker-001", "active", {"activeTasks": True})


def test_adjust_active_tasks_is_relative_and_never_negative(registry):
    registry.register(seed_worker())
    assert registry.adjust_active_tasks("worker-001", +3, status="busy").capacity.available_slots == 7
    info = registry.adjust_active_tasks("worker-001", -5)
    assert (info.status, info.capacity.active_tasks, info.capacity.available_slots) == ("busy", 0, 10)
    with pytest.raises(WorkerError):
        registry.adjust_active_tasks("ghost", 1)


def test_heartbeat_moves_the_timestamp_and_merges_metadata(registry, clock):
    registry.register(seed_worker())
    clock.advance(1_500)
    info = registry.heartbeat("worker-001", {"cpu": 0.5, "healthStatus": "healthy"})
    assert info.heartbeat_ms == clock.now_ms()
    assert info.metadata == {"region": "us-east-1", "version": "1.0.0", "cpu": 0.5, "healthStatus": "healthy"}
    clock.advance(-1_000)  # another process's clock, behind: the heartbeat never goes back
    assert registry.heartbeat("worker-001").heartbeat_ms == clock.now_ms() + 1_000
    with pytest.raises(WorkerError):
        registry.heartbeat("ghost")


def test_list_workers_filters(registry):
    registry.register(seed_worker("a"))
    registry.register(seed_worker("b", capabilities={"supportedTaskTypes": ["test"]}))
    registry.register(seed_worker("c", capacity={"maxTasks": 1, "activeTasks": 1}))
    registry.register(seed_worker("d"))
    registry.update_status("d", "draining")
    ids = lambda **kw: [w.worker_id for w in registry.list_workers(**kw)]  # noqa: E731
    assert ids() == ["a", "b", "c", "d"]
    assert ids(status="active") == ["a", "b", "c"]
    assert ids(status=["draining", "busy"]) == ["d"]
    assert ids(has_capacity=True) == ["a", "b", "d"]
    assert ids(has_capacity=False) == ["c"]
    assert ids(supported_task_type="build") == ["a", "c", "d"]
    assert ids(status="active", has_capacity=True, supported_task_type="build") == ["a"]
    with pytest.raises(WorkerError):
        registry.list_workers(status="sleeping")


def test_corrupt_records_are_reported_by_get_and_skipped_by_list(registry, store):
    registry.register(seed_worker("a"))
    store.write(WORKERS, "broken", b"{")
    assert [w.worker_id for w in registry.list_workers()] == ["a"]
    with pytest.raises(WorkerError) as exc:
        registry.get_worker("broken")
    assert "corrupt" in str(exc.value) and exc.value.worker_id == "broken"
    with pytest.raises(WorkerError):
        registry.heartbeat("broken")
    assert store.read(WORKERS, "broken").data == b"{"


def test_mark_stale_marks_silent_workers_offline_once(registry, clock):
    registry.register(seed_worker("quiet"))
    registry.register(seed_worker("gone"))
    registry.update_status("gone", "offline")
    clock.advance(60_000)
    registry.register(seed_worker("fresh"))
    assert registry.mark_stale(60_000) == []  # exactly at the threshold: not yet
    clock.advance(1)
    assert registry.mark_stale(60_000) == ["quiet"]
    quiet = registry.get_worker("quiet")
    assert quiet.status == "offline" and quiet.stale_since is not None
    assert registry.mark_stale(60_000) == []  # reported once
    assert registry.get_worker("fresh").status == "active"


def test_a_stale_worker_comes_back_with_its_next_heartbeat_but_one_gone_on_purpose_does_not(registry, clock):
    registry.register(seed_worker("paused"))
    registry.register(seed_worker("retired"))
    registry.update_status("retired", "offline")
    clock.advance(10_000)
    assert registry.mark_stale(5_000) == ["paused"]
    assert registry.heartbeat("paused").status == "active"
    assert registry.get_worker("paused").stale_since is None
    assert registry.heartbeat("retired").status == "offline"


def test_store_failures_become_worker_errors(down, clock):
    registry = WorkerRegistry(down, clock)
    for call in (
        lambda: registry.register(seed_worker()),
        lambda: registry.deregister("worker-001"),
        lambda: registry.update_status("worker-001", "busy"),
        lambda: registry.heartbeat("worker-001"),
        lambda: registry.get_worker("worker-001"),
    ):
        with pytest.raises(WorkerError) as exc:
            call()
        assert exc.value.worker_id == "worker-001" and "connection refused" in str(exc.value)
    with pytest.raises(WorkerError) as listing:
        registry.list_workers()
    assert listing.value.worker_id is None


@pytest.mark.slow
def test_four_processes_updating_one_worker_lose_nothing(store, store_spec, processes):
    rounds = 40
    WorkerRegistry(store).register(seed_worker("shared", capacity={"maxTasks": 1000}))
    from .conftest import SPAWN

    start = SPAWN.Event()
    for index in range(4):
        processes.spawn(child.registry_hammer, store_spec, "shared", index, rounds, start)
    start.set()
    for _ in range(4):
        processes.get(timeout=90)
    worker = WorkerRegistry(store).get_worker("shared")
    assert worker.capacity.active_tasks == 4 * rounds
    assert worker.capacity.available_slots == 1000 - 4 * rounds
    assert {f"p{i}": rounds for i in range(4)}.items() <= worker.metadata.items()
    assert worker.metadata["region"] == "us-east-1"
