"""The Coordinator's lifecycle, cleanup rules and stealing, on a real directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.clock import ManualClock, utc_from_ms
from core.coordinator import Coordinator, NotRegistered, generate_instance_id, pid_from_instance_id
from core.models import InstanceInfo, StealingStats
from core.semantics import QUEUE_FRESH_MS
from core.store import INSTANCES, QUEUES, STEALING_STATS, read_record
from tests.helpers import stealable_entries


def test_instance_id_has_pi_shape():
    instance_id = generate_instance_id("0123456789abcdef", 4242, 1_771_373_735_675)
    assert instance_id.startswith("sess-01234567-pid4242-")
    stamp, suffix = instance_id.split("-")[3:]
    assert int(stamp, 36) == 1_771_373_735_675 and len(suffix) == 4
    assert pid_from_instance_id(instance_id) == 4242


def test_register_writes_file_and_unregister_removes_it(root):
    coordinator = Coordinator(root=root)
    info = coordinator.register("session-1", "/work", heartbeat=False)
    path = root / "instances" / f"{info.instance_id}.lock"
    assert json.loads(path.read_text())["cwd"] == "/work"
    coordinator.broadcast_queue_state(0)
    coordinator.unregister()
    assert not path.exists()
    assert not (root / "queue-states" / f"{info.instance_id}.json").exists()
    assert not coordinator.is_initialized


def test_operations_needing_identity_say_so(root):
    coordinator = Coordinator(root=root)
    with pytest.raises(NotRegistered):
        coordinator.try_acquire_lock("r")
    assert coordinator.active_instance_count() == 1  # never less than one


def test_heartbeat_thread_keeps_the_file_fresh(root):
    coordinator = Coordinator(root=root, config={"heartbeat_interval_ms": 50})
    info = coordinator.register()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            on_disk = InstanceInfo.from_json((root / "instances" / f"{info.instance_id}.lock").read_bytes())
            if on_disk.last_heartbeat > info.last_heartbeat:
                break
            time.sleep(0.02)
        assert on_disk.last_heartbeat > info.last_heartbeat
    finally:
        coordinator.unregister()


def test_heartbeat_recreates_a_file_another_process_removed(root, clock):
    coordinator = Coordinator(root=root, clock=clock)
    info = coordinator.register(heartbeat=False)
    (root / "instances" / f"{info.instance_id}.lock").unlink()
    clock.advance(1000)
    coordinator.heartbeat()
    assert (root / "instances" / f"{info.instance_id}.lock").exists()


def _spawn_registered_child(root) -> tuple[subprocess.Popen, str]:
    code = (
        "import sys, time; from core.coordinator import Coordinator;"
        f"c = Coordinator(root={str(root)!r}); i = c.register(heartbeat=False);"
        "print(i.instance_id, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


def test_a_killed_instance_is_removed_at_once_by_pid_not_after_60s(root):
    child, child_id = _spawn_registered_child(root)
    me = Coordinator(root=root)
    me.register(heartbeat=False)
    try:
        assert me.cleanup_dead_instances() == []  # alive: kept
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert me.cleanup_dead_instances() == [child_id]
        assert not (root / "instances" / f"{child_id}.lock").exists()
    finally:
        child.kill()
        me.unregister()


def test_a_reused_pid_does_not_keep_a_dead_instance_alive(root, clock):
    me = Coordinator(root=root)
    me.register(heartbeat=False)
    # An instance that registered long before this process (our pid) started:
    # the pid now belongs to someone else.
    ghost = me.info.model_copy(
        update={
            "instance_id": "sess-ghost000-pid1-x-abcd",
            "started_at": utc_from_ms(1_000_000_000_000),
            "process_started_at": None,
            "hostname": None,
            "pid": os.getppid(),
        }
    )
    me.store.write(INSTANCES, ghost.instance_id, ghost.to_json())
    assert me.cleanup_dead_instances() == [ghost.instance_id]
    me.unregister()


def test_old_heartbeat_in_a_freshly_written_file_is_skew_not_death(root):
    now = int(time.time() * 1000)
    clock = ManualClock(now)
    me = Coordinator(root=root, clock=clock)
    me.register(heartbeat=False)
    skewed = me.info.model_copy(  # on another host: only the heartbeat and the file's age can tell
        update={
            "instance_id": "sess-skewed00-pid1-x-abcd",
            "last_heartbeat": utc_from_ms(now - 3_600_000),
            "hostname": "another-host",
        }
    )
    me.store.write(INSTANCES, skewed.instance_id, skewed.to_json())
    assert me.cleanup_dead_instances() == []
    os.utime(root / "instances" / f"{skewed.instance_id}.lock", (now / 1000 - 120, now / 1000 - 120))
    assert me.cleanup_dead_instances() == [skewed.instance_id]
    me.unregister()


def test_dynamic_limit_and_model_limits_follow_pi(root, clock):
    a, b = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    a.register(heartbeat=False)
    b.register(heartbeat=False)
    assert a.my_parallel_limit() == 3
    a.update_workload(3)
    # shares 1/4 and 1/1 of 6: round(6 * 0.25/1.25) = round(1.2) = 1; round(4.8) = 5
    assert a.dynamic_parallel_limit() == 1
    assert b.dynamic_parallel_limit() == 5
    a.set_active_model("OpenAI", "GPT-4o")
    b.set_active_model("openai", "gpt-4o-mini")
    assert a.info.active_models[0].model == "gpt-4o"
    assert a.instances_for_model("openai", "gpt-4o") == 2  # prefix matches either way
    assert a.instances_for_model("openai", "gpt-4o-mini") == 2
    assert a.instances_for_model("openai", "gpt-4o-m*") == 1
    assert a.model_parallel_limit("openai", "gpt-4o-m*", 8) == 8
    assert a.model_parallel_limit("openai", "gpt-4o", 8) == 4
    a.clear_active_model("openai", "gpt-4o")
    assert a.instances_for_model("openai", "gpt-4o-m*") == 1 and not a.info.active_models


def test_stealing_claims_each_entry_once_and_the_owner_sees_it(root, clock):
    owner, thief = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    thief.register(heartbeat=False)
    owner.update_workload(5)
    entries = stealable_entries(owner.instance_id, clock, 3)
    entries[2] = entries[2].model_copy(update={"priority": "critical"})
    owner.broadcast_queue_state(5, 1, entries)
    assert thief.should_attempt_work_stealing()
    assert thief.steal_work() is None  # pi's thieves, which do not claim, are offered nothing
    stolen = [thief.safe_steal_work() for _ in range(4)]
    assert [s.entry.id for s in stolen if s] == ["task-0", "task-1", "task-2"]
    assert stolen[3] is None
    assert not owner.claim_own("task-1")  # stolen: the owner must not run it
    stats = thief.stealing_stats()
    assert (stats.total_attempts, stats.successful_steals, stats.failed_attempts) == (4, 3, 1)
    persisted, _ = read_record(thief.store, STEALING_STATS, thief.instance_id, StealingStats)
    assert persisted == stats


def test_a_busy_instance_does_not_steal(root, clock):
    owner, busy = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    busy.register(heartbeat=False)
    owner.broadcast_queue_state(5, 1, stealable_entries(owner.instance_id, clock, 3))
    busy.update_workload(1)
    assert busy.safe_steal_work() is None
    assert busy.stealing_stats().total_attempts == 0


def test_work_stealing_can_be_switched_off(root, clock):
    owner = Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    owner.update_workload(5)
    owner.broadcast_queue_state(5, 1, stealable_entries(owner.instance_id, clock, 3))
    thief = Coordinator(root=root, clock=clock, env={"PI_ENABLE_WORK_STEALING": "false"})
    thief.register(heartbeat=False)
    assert not thief.should_attempt_work_stealing()
    assert thief.safe_steal_work() is None and thief.steal_work() is None


def test_queue_states_are_ignored_after_two_intervals_and_removed_after_timeout(root, clock):
    owner, other = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    other.register(heartbeat=False)
    owner.broadcast_queue_state(5, 1, stealable_entries(owner.instance_id, clock, 3))
    clock.advance(30_000)
    assert len(other.remote_queue_states()) == 1
    clock.advance(1)
    assert other.remote_queue_states() == []
    assert other.cleanup_queue_states() == []
    clock.advance(30_000)
    assert other.cleanup_queue_states() == [owner.instance_id]
    assert owner.store.read(QUEUES, owner.instance_id) is None


def test_a_claim_lives_until_its_owner_has_learnt_it_is_done(root, clock):
    owner, thief = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    thief.register(heartbeat=False)
    owner.broadcast_queue_state(5, 1, stealable_entries(owner.instance_id, clock, 3))
    stolen = thief.safe_steal_work()
    assert stolen is not None

    def a_while_later() -> None:
        clock.advance(owner.config.heartbeat_timeout_ms + QUEUE_FRESH_MS + 1)
        owner.heartbeat()
        thief.heartbeat()

    a_while_later()
    assert thief.cleanup_claims() == [] and owner.cleanup_claims() == []  # running: kept
    assert thief.finish(stolen)
    a_while_later()
    assert thief.cleanup_claims() == [] and owner.cleanup_claims() == []  # done, the owner does not know yet
    assert owner.done_entries() == {stolen.entry.id}
    assert not owner.claim_own(stolen.entry)
    a_while_later()
    assert thief.cleanup_claims() == []  # only the owner forgets its own entries' claims
    assert owner.cleanup_claims() == [f"{owner.instance_id}/{stolen.entry.id}"]


def test_config_file_and_environment_precedence(root):
    (root / "coordinator.json").write_text('{"totalMaxLlm": 8, "heartbeatIntervalMs": "fast"}')
    env = {"PI_HEARTBEAT_TIMEOUT_MS": "90000", "PI_TOTAL_MAX_LLM": "-3"}
    coordinator = Coordinator(root=root, env=env)
    assert coordinator.config.total_max_llm == 8
    assert coordinator.config.heartbeat_interval_ms == 15_000
    assert coordinator.config.heartbeat_timeout_ms == 90_000
    problems = " | ".join(map(str, coordinator.config_problems))
    assert "heartbeatIntervalMs" in problems and "PI_TOTAL_MAX_LLM" in problems
    explicit = Coordinator(root=root, env={"PI_TOTAL_MAX_LLM": "12"}, config={"total_max_llm": 4})
    assert explicit.config.total_max_llm == 4
    assert Coordinator(root=root, env={"PI_TOTAL_MAX_LLM": "12"}).config.total_max_llm == 12


def test_malformed_config_keeps_defaults(root):
    (root / "coordinator.json").write_text("{not json")
    coordinator = Coordinator(root=root)
    assert coordinator.config.total_max_llm == 6
    assert "malformed JSON" in str(coordinator.config_problems[0])


def test_claimed_entries_tell_the_owner_what_to_drop(root, clock):
    owner, thief = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    thief.register(heartbeat=False)
    owner.update_workload(5)
    owner.broadcast_queue_state(5, 1, stealable_entries(owner.instance_id, clock, 3))
    assert owner.claimed_entries() == set()
    stolen = thief.safe_steal_work()
    assert owner.claim_own("task-2")
    assert owner.claimed_entries() == {stolen.entry.id, "task-2"}


def test_derived_values_follow_updates_of_the_own_record(root, clock):
    coordinator = Coordinator(root=root, clock=clock)
    coordinator.register(heartbeat=False)
    before = coordinator.info.heartbeat_ms
    assert coordinator.info.model_keys == frozenset()
    clock.advance(90_000)
    coordinator.heartbeat()
    coordinator.set_active_model("openai", "gpt-4o")
    assert coordinator.info.heartbeat_ms == before + 90_000  # not the copy's stale cached value
    assert coordinator.info.model_keys == {("openai", "gpt-4o")}
    assert coordinator.active_instances() == [coordinator.info]


@pytest.mark.parametrize("spelling", ["record", "camelCase", "snake_case", "id"])
def test_claim_own_takes_whatever_broadcast_queue_state_takes(root, clock, spelling):
    owner, thief = Coordinator(root=root, clock=clock), Coordinator(root=root, clock=clock)
    owner.register(heartbeat=False)
    thief.register(heartbeat=False)
    owner.update_workload(5)
    records = stealable_entries(owner.instance_id, clock, 3)
    given = {
        "record": records,
        "camelCase": [r.model_dump(mode="json", by_alias=True) for r in records],
        "snake_case": [r.model_dump() for r in records],
        "id": [r.id for r in records],
    }[spelling]
    owner.broadcast_queue_state(5, 1, records if spelling == "id" else given)
    assert thief.safe_steal_work().entry == records[0]
    assert [owner.claim_own(entry) for entry in given] == [False, True, True]
    assert [owner.claim_own(entry) for entry in given] == [False, False, False]
