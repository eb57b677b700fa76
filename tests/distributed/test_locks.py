"""LockManager: acquisition, retries, release errors, renewal, listing, recovery and fencing tokens."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.clock import SYSTEM_CLOCK
from core.distributed import Lock, LockError, LockErrorCode, LockingConfig, LockManager, NotFoundError
from core.store import FENCING, TASK_LOCKS, InvalidKey, StoreError

from tests.helpers import AgingClock

from .conftest import ProxyStore, Sleeps

FAST = LockingConfig(ttl_seconds=30, retry_attempts=0, retry_delay_ms=0)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> AgingClock:
    """Task locks expire by their entries' age as well: the store's entries age as the
    injected clock moves (tests without a store get a clock that ages nothing)."""
    return AgingClock(*([request.getfixturevalue("store")] if "store" in request.fixturenames else []))


def manager(store, clock, config=FAST, sleeps=None) -> LockManager:
    return LockManager(store, config, clock, sleep=sleeps if sleeps is not None else Sleeps())


def test_a_lock_is_written_camel_case_with_metadata_and_a_token(store, clock):
    lock = manager(store, clock).acquire_lock("task-123", "worker-001", {"hostname": "h1", "pid": 42, "taskType": "build", "region": "eu"})
    assert lock is not None and lock.worker_id == "worker-001" and lock.task_id == "task-123"
    on_disk = json.loads(store.read(TASK_LOCKS, "task-123").data)
    assert on_disk["taskId"] == "task-123" and on_disk["workerId"] == "worker-001"
    assert on_disk["metadata"] == {"hostname": "h1", "pid": 42, "taskType": "build", "region": "eu"}
    assert on_disk["acquiredAt"].endswith("Z") and on_disk["fencingToken"] == lock.fencing_token
    assert lock.expires_ms - lock.acquired_ms == 30_000 and lock.acquired_ms == clock.now_ms()
    assert lock.metadata.get("region") == "eu" and lock.metadata.task_type == "build"
    assert Lock.from_json(store.read(TASK_LOCKS, "task-123").data) == lock


def test_default_config_is_seed_003s():
    assert LockingConfig() == LockingConfig(ttl_seconds=300, retry_attempts=3, retry_delay_ms=1000)
    with pytest.raises(ValueError):
        LockingConfig(ttl_seconds=0)
    with pytest.raises(ValueError):
        LockingConfig(retry_attempts=-1)


def test_a_held_lock_is_refused_until_it_expires_then_taken_over(store, clock):
    locks = manager(store, clock)
    first = locks.acquire_lock("t", "a", ttl_seconds=1)
    clock.advance(999)
    assert locks.acquire_lock("t", "b") is None
    assert locks.acquire_lock("t", "a") is None  # not re-entrant: the holder is refused too
    clock.advance(1)
    taken = locks.acquire_lock("t", "b")
    assert taken is not None and taken.worker_id == "b"
    assert taken.fencing_token > first.fencing_token


def test_acquisition_retries_with_the_configured_delay(store, clock):
    sleeps = Sleeps()
    locks = manager(store, clock, LockingConfig(ttl_seconds=30, retry_attempts=2, retry_delay_ms=250), sleeps)
    manager(store, clock).acquire_lock("t", "holder")
    assert locks.acquire_lock("t", "w") is None
    assert sleeps == [0.25, 0.25]  # 1 try + 2 retries


def test_a_retry_wins_once_the_holder_lets_go(store, clock):
    holder = manager(store, clock)
    holder.acquire_lock("t", "holder")
    sleeps = Sleeps(hook=lambda n: n == 2 and holder.release_lock("t", "holder"))
    locks = manager(store, clock, LockingConfig(retry_attempts=3, retry_delay_ms=10), sleeps)
    lock = locks.acquire_lock("t", "w")
    assert lock is not None and lock.worker_id == "w" and len(sleeps) == 2


def test_release_removes_the_callers_lock(store, clock):
    locks = manager(store, clock)
    locks.acquire_lock("t", "a")
    assert locks.is_locked("t")
    assert locks.release_lock("t", "a") is None
    assert not locks.is_locked("t") and locks.get_lock("t") is None


def test_release_errors_have_seed_003s_codes(store, clock):
    locks = manager(store, clock)
    with pytest.raises(NotFoundError) as missing:
        locks.release_lock("t", "a")
    assert isinstance(missing.value, LockError) and missing.value.code == "NOT_FOUND" and missing.value.task_id == "t"
    locks.acquire_lock("t", "a", ttl_seconds=1)
    with pytest.raises(LockError) as other:
        locks.release_lock("t", "b")
    assert other.value.code == LockErrorCode.INVALID_OWNER and "'a'" in str(other.value)
    assert locks.is_locked("t")
    clock.advance(1_000)
    with pytest.raises(LockError) as expired:
        locks.release_lock("t", "a")
    assert expired.value.code == "LOCK_EXPIRED"
    assert locks.get_lock("t") is None  # still the caller's, so it was removed


def test_releasing_an_expired_lock_never_removes_the_next_holders(store, clock):
    locks = manager(store, clock)
    locks.acquire_lock("t", "a", ttl_seconds=1)
    clock.advance(1_000)
    taken = locks.acquire_lock("t", "b")
    with pytest.raises(LockError) as exc:
        locks.release_lock("t", "a")
    assert exc.value.code == "INVALID_OWNER"
    assert locks.get_lock("t") == taken


def test_an_expired_lock_that_changes_hands_during_release_is_left_alone(store, clock):
    proxy = ProxyStore(store)
    locks = manager(proxy, clock)
    locks.acquire_lock("t", "a", ttl_seconds=1)
    clock.advance(1_000)
    other = manager(store, clock)

    def takeover(space, key, expected):
        proxy.before.pop("delete_if")
        other.acquire_lock("t", "b")

    proxy.before["delete_if"] = takeover
    with pytest.raises(LockError) as exc:
        locks.release_lock("t", "a")
    assert exc.value.code == "LOCK_EXPIRED"
    assert locks.get_lock("t").worker_id == "b"


def test_renew_extends_the_callers_lock_and_keeps_its_token(store, clock):
    locks = manager(store, clock)
    lock = locks.acquire_lock("t", "a", ttl_seconds=1)
    clock.advance(900)
    renewed = locks.renew_lock("t", "a", 5)
    assert renewed.fencing_token == lock.fencing_token and renewed.acquired_at == lock.acquired_at
    assert renewed.expires_ms == clock.now_ms() + 5_000 and locks.get_lock("t") == renewed
    clock.advance(4_999)
    assert locks.check_fencing("t", lock.fencing_token)
    with pytest.raises(LockError) as owner:
        locks.renew_lock("t", "b")
    assert owner.value.code == "INVALID_OWNER"
    clock.advance(1)
    with pytest.raises(LockError) as expired:
        locks.renew_lock("t", "a")
    assert expired.value.code == "LOCK_EXPIRED"
    with pytest.raises(NotFoundError):
        locks.renew_lock("none", "a")


def test_list_locks_filters_by_worker_and_expiry(store, clock):
    locks = manager(store, clock)
    locks.acquire_lock("t2", "a", ttl_seconds=10)
    locks.acquire_lock("t1", "a", ttl_seconds=1)
    locks.acquire_lock("t3", "b", ttl_seconds=10)
    assert [l.task_id for l in locks.list_locks()] == ["t1", "t2", "t3"]
    assert [l.task_id for l in locks.list_locks(worker_id="a")] == ["t1", "t2"]
    clock.advance(1_000)
    assert [l.task_id for l in locks.list_locks(worker_id="a")] == ["t2"]
    assert [l.task_id for l in locks.list_locks("a", include_expired=True)] == ["t1", "t2"]


def test_cleanup_removes_only_expired_locks(store, clock):
    locks = manager(store, clock)
    locks.acquire_lock("short", "a", ttl_seconds=1)
    locks.acquire_lock("long", "a", ttl_seconds=10)
    assert locks.cleanup_stale_locks() == 0
    clock.advance(1_000)
    assert locks.cleanup_stale_locks() == 1
    assert [l.task_id for l in locks.list_locks(include_expired=True)] == ["long"]
    assert locks.cleanup_stale_locks() == 0


def test_release_worker_locks_removes_all_of_one_workers_locks(store, clock):
    locks = manager(store, clock)
    for task in ("t1", "t2"):
        locks.acquire_lock(task, "dead", ttl_seconds=1)
    locks.acquire_lock("t3", "alive")
    clock.advance(5_000)  # expired ones count too
    assert locks.release_worker_locks("dead") == 2
    assert [l.task_id for l in locks.list_locks(include_expired=True)] == ["t3"]
    assert locks.release_worker_locks("dead") == 0


def test_a_corrupt_lock_blocks_until_its_grace_then_is_broken(store, clock):
    store.write(TASK_LOCKS, "t", b"{not json")
    clock.set(store.read(TASK_LOCKS, "t").modified_ms + 1_000)
    locks = manager(store, clock)
    assert locks.is_locked("t") and locks.acquire_lock("t", "a") is None
    with pytest.raises(LockError) as exc:
        locks.get_lock("t")
    assert exc.value.code == "LOCK_CORRUPT"
    with pytest.raises(LockError) as release:
        locks.release_lock("t", "a")
    assert release.value.code == "LOCK_CORRUPT"
    assert locks.list_locks(include_expired=True) == [] and locks.cleanup_stale_locks() == 0
    clock.advance(60_000)
    assert not locks.is_locked("t")
    assert locks.acquire_lock("t", "a") is not None


# ------------------------------------------------------------------ fencing
def test_fencing_tokens_strictly_increase_across_acquire_expire_and_takeover(store, clock):
    locks = manager(store, clock)
    tokens = []
    for worker in ("a", "b", "a", "c"):
        lock = locks.acquire_lock("t", worker, ttl_seconds=1)
        tokens.append(lock.fencing_token)
        if worker == "b":
            locks.release_lock("t", "b")  # released rather than expired
        else:
            clock.advance(1_000)
    assert tokens == sorted(set(tokens)) and tokens[0] >= clock.now_ms() - 3_000
    assert locks.latest_fencing_token("t") == tokens[-1]
    assert locks.latest_fencing_token("never") is None


def test_check_fencing_refuses_a_stale_holder(store, clock):
    locks = manager(store, clock)
    old = locks.acquire_lock("t", "a", ttl_seconds=1)
    assert locks.check_fencing("t", old.fencing_token)
    clock.advance(1_000)
    assert not locks.check_fencing("t", old.fencing_token)  # expired: the lease is over
    new = locks.acquire_lock("t", "b")
    assert locks.check_fencing("t", new.fencing_token)
    assert not locks.check_fencing("t", old.fencing_token)  # taken over
    locks.release_lock("t", "b")
    assert not locks.check_fencing("t", new.fencing_token)  # released
    assert not locks.check_fencing("other", new.fencing_token)


def test_tokens_keep_increasing_if_the_counters_are_lost(store, clock):
    locks = manager(store, clock)
    first = locks.acquire_lock("t", "a")
    locks.release_lock("t", "a")
    store.delete(FENCING, "t")
    clock.advance(1)  # tokens follow the clock, so a lost counter restarts above the old ones
    assert locks.acquire_lock("t", "a").fencing_token > first.fencing_token


def test_same_millisecond_acquisitions_get_distinct_increasing_tokens(store, clock):
    locks = manager(store, clock)
    tokens = []
    for _ in range(5):
        tokens.append(locks.acquire_lock("t", "a").fencing_token)
        locks.release_lock("t", "a")
    assert tokens == list(range(tokens[0], tokens[0] + 5))


def test_a_token_drawn_before_a_newer_acquisition_is_replaced(store, clock):
    """A draws a token, stalls; B draws a later one, locks and unlocks; A's lock then lands.
    A must not hold a token older than B's: it draws a new one while holding the lock."""
    proxy = ProxyStore(store)
    slow = manager(proxy, clock)
    fast = manager(store, clock)
    seen = {}

    def b_acquires_and_releases(space, key, data):
        if space is TASK_LOCKS:
            proxy.before.pop("create")
            seen["b"] = fast.acquire_lock("t", "b").fencing_token
            fast.release_lock("t", "b")

    proxy.before["create"] = b_acquires_and_releases
    lock = slow.acquire_lock("t", "a")
    assert lock.fencing_token > seen["b"]
    assert slow.get_lock("t") == lock and slow.check_fencing("t", lock.fencing_token)


def test_threads_hold_the_lock_one_at_a_time_with_increasing_tokens(store):
    locks = LockManager(store, LockingConfig(ttl_seconds=30, retry_attempts=200, retry_delay_ms=1), SYSTEM_CLOCK)
    held: list[int] = []
    inside = threading.Semaphore(1)
    overlaps = []

    def worker(name: str) -> None:
        for _ in range(15):
            lock = locks.acquire_lock("shared", name)
            assert lock is not None
            if not inside.acquire(blocking=False):
                overlaps.append(name)
            held.append(lock.fencing_token)
            inside.release()
            locks.release_lock("shared", name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not overlaps and len(held) == 60
    assert held == sorted(held) and len(set(held)) == 60


operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from("abc"), st.integers(1, 3)),
        st.tuples(st.just("release"), st.sampled_from("abc"), st.just(0)),
        st.tuples(st.just("renew"), st.sampled_from("abc"), st.integers(1, 3)),
        st.tuples(st.just("advance"), st.just(""), st.integers(1, 2_500)),
        st.tuples(st.just("cleanup"), st.just(""), st.just(0)),
        st.tuples(st.just("recover"), st.sampled_from("abc"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_property_tokens_only_grow_and_only_the_current_holder_passes_the_fence(store, ops):
    clock = AgingClock(store)
    locks = manager(store, clock)
    task = f"task-{uuid.uuid4().hex}"  # the store is shared by every example
    granted: list[Lock] = []
    for op, worker, n in ops:
        if op == "acquire":
            lock = locks.acquire_lock(task, worker, ttl_seconds=n)
            if lock is not None:
                granted.append(lock)
        elif op == "release":
            try:
                locks.release_lock(task, worker)
            except LockError as exc:
                assert exc.code in ("NOT_FOUND", "INVALID_OWNER", "LOCK_EXPIRED")
        elif op == "renew":
            try:
                locks.renew_lock(task, worker, n)
            except LockError as exc:
                assert exc.code in ("NOT_FOUND", "INVALID_OWNER", "LOCK_EXPIRED")
        elif op == "advance":
            clock.advance(n)
        elif op == "cleanup":
            locks.cleanup_stale_locks()
        else:
            locks.release_worker_locks(worker)
        current = locks.get_lock(task)
        live = current is not None and not current.is_expired(clock.now_ms())
        for lock in granted:
            assert locks.check_fencing(task, lock.fencing_token) == (live and lock.fencing_token == current.fencing_token)
    tokens = [lock.fencing_token for lock in granted]
    assert tokens == sorted(set(tokens))


# --------------------------------------------------------------- failures
def test_store_failures_become_lock_errors(down, clock):
    locks = manager(down, clock)
    calls = [
        lambda: locks.acquire_lock("t", "a"),
        lambda: locks.release_lock("t", "a"),
        lambda: locks.renew_lock("t", "a"),
        lambda: locks.is_locked("t"),
        lambda: locks.get_lock("t"),
        lambda: locks.list_locks(),
        lambda: locks.cleanup_stale_locks(),
        lambda: locks.release_worker_locks("a"),
        lambda: locks.check_fencing("t", 1),
    ]
    for call in calls:
        with pytest.raises(LockError) as exc:
            call()
        assert exc.value.code == "STORE_UNAVAILABLE" and "connection refused" in str(exc.value)
        assert exc.value.__cause__ is not None


def test_other_store_errors_and_bad_keys_have_their_own_codes(proxy, clock):
    locks = manager(proxy, clock)
    proxy.fail_everything(StoreError("disk full"))
    with pytest.raises(LockError) as full:
        locks.acquire_lock("t", "a")
    assert full.value.code == "STORE_ERROR"
    proxy.fail_everything(InvalidKey("key too long"))
    with pytest.raises(LockError) as bad:
        locks.acquire_lock("t" * 300, "a")
    assert bad.value.code == "INVALID_KEY"
    with pytest.raises(ValueError):
        locks.acquire_lock("", "a")


def test_lock_errors_survive_pickling():
    import pickle

    for error in (LockError("m", "LOCK_EXPIRED", "t"), NotFoundError("gone", "t")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.code == error.code and str(copy) == str(error)


# -------------------------------------------------------------------- async
def test_async_forms(store, clock):
    locks = manager(store, clock)

    async def scenario():
        lock = await locks.acquire_lock_async("t", "a", {"taskType": "build"})
        assert lock is not None and await locks.is_locked_async("t")
        assert await locks.acquire_lock_async("t", "b") is None
        clock.advance(10)
        renewed = await locks.renew_lock_async("t", "a", 60)
        assert renewed.expires_ms == clock.now_ms() + 60_000
        assert [l.task_id for l in await locks.list_locks_async(worker_id="a")] == ["t"]
        assert (await locks.get_lock_async("t")) == renewed
        assert await locks.check_fencing_async("t", lock.fencing_token)
        await locks.release_lock_async("t", "a")
        with pytest.raises(NotFoundError):
            await locks.release_lock_async("t", "a")

    asyncio.run(scenario())


def test_async_acquisition_can_be_cancelled_while_it_waits(store, clock):
    manager(store, clock).acquire_lock("t", "holder")
    locks = manager(store, clock, LockingConfig(retry_attempts=100, retry_delay_ms=20))

    async def scenario():
        waiting = asyncio.ensure_future(locks.acquire_lock_async("t", "w"))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())
    assert locks.get_lock("t").worker_id == "holder"
