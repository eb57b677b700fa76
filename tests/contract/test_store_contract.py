"""The storage contract: every backend gives the engines the same guarantees."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from core.clock import ManualClock, utc_from_ms
from core.control import FleetControl
from core.coordinator import Coordinator
from core.events import EventLog
from core.locks import LockService
from core.models import StealableQueueEntry
from core.provider_config import parse_settings
from core.ratelimit import SharedRateLimiter
from core.snapshot import SnapshotBuilder, Status
from core.store import CLAIMS, CONTROL, INSTANCES, LOCKS, RATE_LIMITS

from tests.backends import spec_of
from tests.helpers import AgingClock

from . import workers

CTX = multiprocessing.get_context("spawn")


def test_write_read_versions_delete(any_store):
    assert any_store.read(INSTANCES, "a") is None
    any_store.write(INSTANCES, "a", b"one")
    first = any_store.read(INSTANCES, "a")
    assert first.data == b"one" and any_store.keys(INSTANCES) == ["a"]
    any_store.write(INSTANCES, "a", b"two")
    assert any_store.versions(INSTANCES)["a"] != first.version
    assert any_store.read_all(INSTANCES)["a"].data == b"two"
    assert any_store.delete(INSTANCES, "a") and not any_store.delete(INSTANCES, "a")
    assert any_store.versions(INSTANCES) == {}


def test_create_is_exclusive_and_compare_operations_compare_bytes(any_store):
    assert any_store.create(LOCKS, "r", b"first")
    assert not any_store.create(LOCKS, "r", b"second")
    assert not any_store.replace_if(LOCKS, "r", b"other", b"x")
    assert any_store.replace_if(LOCKS, "r", b"first", b"third")
    assert not any_store.delete_if(LOCKS, "r", b"first")
    assert any_store.delete_if(LOCKS, "r", b"third")
    assert any_store.read(LOCKS, "r") is None


def test_keys_may_be_any_text(any_store):
    key = "sess-x/entry: ü [bold]"
    any_store.write(CLAIMS, key, b"{}")
    assert any_store.keys(CLAIMS) == [key] and any_store.read(CLAIMS, key).data == b"{}"


def test_update_is_an_atomic_read_modify_write(any_store):
    for _ in range(5):
        any_store.update(RATE_LIMITS, "p", lambda raw: b"1" if raw is None else str(int(raw) + 1).encode())
    assert any_store.read(RATE_LIMITS, "p").data == b"5"
    assert any_store.update(RATE_LIMITS, "p", lambda raw: None) == b"5"


def test_events_come_back_in_order_from_a_cursor(any_store):
    assert any_store.read_events() == ([], 0)
    for n in range(5):
        any_store.append_event(b'{"n": %d}' % n)
    first, cursor = any_store.read_events(0, limit=2)
    rest, cursor = any_store.read_events(cursor)
    assert first + rest == [b'{"n": %d}' % n for n in range(5)]
    assert any_store.read_events(cursor) == ([], cursor)


def test_lock_semantics(any_store):
    clock = AgingClock(any_store, now_ms=1_900_000_000_000)
    mine = LockService(any_store, "a", clock).try_acquire("steal:x", ttl_ms=1_000)
    other = LockService(any_store, "b", clock)
    assert mine is not None and other.try_acquire("steal:x") is None
    clock.advance(1_000)
    taken = other.try_acquire("steal:x")
    assert taken is not None
    assert not LockService(any_store, "a", clock).release(mine)  # changed hands: left alone
    assert other.release(taken)


def test_rate_limiter_is_exact_on_every_backend(any_store):
    clock = ManualClock(1_900_000_000_000)
    settings = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 600, "burst": 5}}}}, "t")
    limiter = SharedRateLimiter(any_store, settings, clock=clock)
    waits = [limiter.reserve("openai", "gpt-4o").wait_ms for _ in range(8)]
    assert waits == [0, 0, 0, 0, 0, 100, 200, 300]  # burst 5, then one per 100 ms
    assert limiter.state("openai").used_last_minute(clock.now_ms()) == 8


def test_the_snapshot_reads_either_backend(any_store):
    coordinator = Coordinator(any_store, env={})
    coordinator.register(session_id="contract", cwd="/w", heartbeat=False)
    with coordinator.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=5)
    snapshot = SnapshotBuilder(any_store).build()
    assert [v.status for v in snapshot.instances] == [Status.ALIVE]
    assert [b.model for b in snapshot.backoffs] == ["gpt-4o"] and snapshot.rate_limits
    assert {e.kind for e in snapshot.events} >= {"429", "parallelism"}
    coordinator.unregister()
    assert SnapshotBuilder(any_store).build().instances == ()


@pytest.mark.slow
def test_eight_processes_never_hold_one_lock_at_once(any_store):
    spec = spec_of(any_store)
    start, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=workers.contend, args=(spec, f"w{n}", 2.0, start, out)) for n in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(10)
    holds = sorted(h for hs in results.values() for h in hs)
    assert all(isinstance(h[0], int) for h in holds), "a release failed"
    overlaps = [(a, b) for a, b in zip(holds, holds[1:]) if b[0] < a[1]]
    assert overlaps == [] and len(holds) > 100 and all(results.values())


@pytest.mark.slow
def test_eight_thieves_claim_every_entry_exactly_once(any_store):
    clock_now = ManualClock().now_ms  # entries' enqueue time does not matter
    owner = Coordinator(any_store, env={})
    owner.register(session_id="owner", heartbeat=False)
    owner.update_workload(300)
    entries = [
        StealableQueueEntry(
            id=f"e{i}", tool_name="bash", priority="normal", instance_id=owner.instance_id, enqueued_at=utc_from_ms(clock_now())
        )
        for i in range(300)
    ]
    owner.broadcast_queue_state(300, 1, entries)
    spec = spec_of(any_store)
    start, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=workers.thief, args=(spec, f"t{n}", start, out)) for n in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(10)
    taken = [entry for _, got, _ in results for entry in got]
    assert sorted(taken) == sorted(e.id for e in entries), "every entry stolen exactly once"
    assert len(set(taken)) == len(taken) == 300


def _statuses(store) -> dict[str, Status]:
    return {view.key: view.status for view in SnapshotBuilder(store, check_pids=False).build().instances}


def test_a_cancelled_drain_is_withdrawn_and_the_instance_resumes(any_store):
    worker = Coordinator(any_store, env={})
    worker.register(heartbeat=False)
    iid = worker.instance_id
    control = FleetControl(any_store, "pi-dash@test")
    assert control.cancel_drain(iid).message == f"no drain request for {iid} to cancel"
    assert control.request_drain(iid).done
    worker.check_control()
    assert worker.draining and _statuses(any_store)[iid] is Status.DRAINING
    result = control.cancel_drain(iid)
    assert result.done and any_store.read(CONTROL, iid) is None
    worker.check_control()
    assert not worker.draining and _statuses(any_store)[iid] is Status.ALIVE
    worker.check_control()  # nothing asked now: it stays as it is
    assert not worker.draining
    assert control.request_drain(iid).done  # drained again, to the end this time
    worker.check_control()
    worker.finish_drain()
    assert not control.cancel_drain(iid).done and any_store.read(CONTROL, iid) is not None  # too late: offline
    drains = [e.message for e in EventLog(any_store).read()[0] if e.kind == "drain"]
    assert drains == [
        f"drain requested for {iid}",
        f"{iid} is draining (requested by pi-dash@test)",
        f"drain of {iid} cancelled by pi-dash@test",
        f"{iid} resumes: its drain was cancelled",
        f"drain requested for {iid}",
        f"{iid} is draining (requested by pi-dash@test)",
        f"{iid} drained and went offline",
    ]


def test_a_drain_asked_again_before_the_instance_saw_the_cancel_still_holds(any_store):
    worker = Coordinator(any_store, env={})
    worker.register(heartbeat=False)
    iid = worker.instance_id
    control = FleetControl(any_store, "pi-dash@test")
    control.request_drain(iid)
    worker.check_control()
    assert control.cancel_drain(iid).done and control.request_drain(iid).done  # within one poll
    worker.check_control()
    assert worker.draining  # the new request is acknowledged, the drain goes on
    stored = any_store.read(CONTROL, iid)
    assert stored is not None and b"acknowledgedAt" in stored.data


@pytest.mark.slow
def test_a_real_instance_resumes_taking_work_when_its_drain_is_cancelled(any_store):
    """A separate process, its heartbeat thread polling for control: it drains, takes no work
    while draining (though work is there), and steals once the drain is cancelled."""
    spec = spec_of(any_store)
    out, done = CTX.Queue(), CTX.Event()
    proc = CTX.Process(target=workers.drains_then_resumes, args=(spec, 30.0, out, done))
    proc.start()
    try:
        kind, iid = out.get(timeout=30)
        assert kind == "registered"
        control = FleetControl(any_store, "pi-dash@test")
        assert control.request_drain(iid).done
        assert out.get(timeout=5) == ("draining", None)
        owner = Coordinator(any_store, env={})
        owner.register(session_id="owner", heartbeat=False)
        owner.update_workload(5)
        now = utc_from_ms(ManualClock().now_ms())
        entries = [StealableQueueEntry(id=f"e{n}", tool_name="bash", priority="normal", instance_id=owner.instance_id, enqueued_at=now) for n in range(5)]
        owner.broadcast_queue_state(5, 1, entries)
        time.sleep(0.5)  # the draining worker tries to steal all this while
        assert out.empty(), "a draining instance took work"
        cancelled_at = time.monotonic()
        assert control.cancel_drain(iid).done
        kind, entry = out.get(timeout=5)
        resumed_in = time.monotonic() - cancelled_at
        assert kind == "stole" and entry.startswith("e"), (kind, entry)
        print(f"\n{spec[0]}: stole {resumed_in:.2f} s after the drain was cancelled (it polls every second)")
        assert resumed_in < 2.5
        assert _statuses(any_store)[iid] is Status.ALIVE
    finally:
        done.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
