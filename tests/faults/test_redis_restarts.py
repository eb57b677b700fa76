"""Redis restarted, with and without persistence, while another process holds a lock.

A lock that lived only in a server that lost its data must not be granted to a
second holder, however recently the contender last looked at the server: the
restart is noticed by the create itself, not by a timer.  The grace a
non-persistent server gets is shortened here (60 s in production) so that
the tests start from a server past it.
"""

from __future__ import annotations

import time

import pytest

from core.locks import LockService
from core.store.redis_store import RedisStore
from tests.child_processes import READY, fleet
from tests.redis_server import RedisServer, redis_available

from . import workers

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed; .ci/run installs it")

TTL_MS = 30_000
GRACE_MS = 2_000


@pytest.fixture
def short_grace(monkeypatch):
    monkeypatch.setattr("core.store.redis_store.RESTART_GRACE_MS", GRACE_MS)


def restart(server: RedisServer) -> None:
    server.kill()
    server.start()  # same port; without persistence, empty


def granted_after_grace(locks: LockService, resource: str) -> float:
    """Seconds until ``resource`` is granted (creates are refused while the server is young)."""
    began = time.monotonic()
    while locks.try_acquire(resource, TTL_MS) is None:
        assert time.monotonic() - began < 30, "creates never resumed"
        time.sleep(0.05)
    return time.monotonic() - began


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "appendonly"])
def test_a_held_lock_is_not_granted_again_after_a_restart(tmp_path, short_grace, persistent):
    server = RedisServer(tmp_path / "redis", persistent=persistent)
    server.start()
    try:
        contender = RedisStore(server.url, prefix="restart")
        contender_locks = LockService(contender, "contender")
        granted_after_grace(contender_locks, "warm-up")  # connections open, the server past its grace
        with fleet() as children:
            spec = ("redis", server.url, contender.prefix)
            children.spawn(workers.lock_holder, spec, "job", TTL_MS, GRACE_MS)
            assert children.collect(READY, 1, 60)["holder"] is not None, "the holder did not get the lock"
            contender.check()  # looked just now: a timer would not look again for a while
            restart(server)
            second = contender_locks.try_acquire("job", TTL_MS)
        overlapping_grants = 0 if second is None else 1
        assert overlapping_grants == 0, "a lock held across the restart was granted to a second holder"
    finally:
        server.stop()


@pytest.mark.slow
def test_without_persistence_creates_wait_out_the_grace_then_resume(tmp_path, short_grace):
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    try:
        locks = LockService(RedisStore(server.url, prefix="grace"), "me")
        granted_after_grace(locks, "before")
        restart(server)
        waited = granted_after_grace(locks, "after")
        # uptime is counted in whole seconds: the wait is at least the grace less one second
        assert waited >= (GRACE_MS - 1000) / 1000, f"granted {waited:.2f} s after the restart"
    finally:
        server.stop()


@pytest.mark.slow
def test_with_persistence_creates_go_on_at_once(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    try:
        locks = LockService(RedisStore(server.url, prefix="aof"), "me")
        assert locks.try_acquire("held", TTL_MS) is not None
        restart(server)
        assert locks.try_acquire("held", TTL_MS) is None, "the held lock was lost across an append-only restart"
        assert locks.try_acquire("new", TTL_MS) is not None, "a persistent server froze creates"
    finally:
        server.stop()


FENCED_GRACE_MS = 6_000
FENCED_TTL_MS = 3_000  # shorter than the grace, as every TTL must be
AHEAD_MS = 4_000  # the holder's clock: its token lies this far ahead of the contender's clock


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "appendonly"])
def test_a_fencing_counter_never_goes_back_across_a_restart(tmp_path, monkeypatch, persistent):
    """A holder (its clock 4 s fast) draws a fencing token; Redis restarts; a contender that
    adopted the server's token just before tries the task at once and until it is granted.

    Without persistence the counter is gone.  Drawn again at once, from the contender's clock,
    it would restart below the holder's token (a stale holder's writes would then outrank the
    new holder's); so it is started afresh only after the grace, and no lock is granted while
    the holder may still believe it holds one."""
    from core.distributed import LockError, LockManager

    server = RedisServer(tmp_path / "redis", persistent=persistent)
    server.start()
    try:
        monkeypatch.setattr("core.store.redis_store.RESTART_GRACE_MS", 0)  # the server long past its grace
        contender = LockManager(RedisStore(server.url, prefix="fenced"))
        assert contender.acquire_lock("warm-up", "contender") is not None  # the server's token adopted
        with fleet() as children:
            children.spawn(workers.fenced_holder, ("redis", server.url, "fenced"), "task", FENCED_TTL_MS, AHEAD_MS)
            held = children.collect(READY, 1, 60)["holder"]
            monkeypatch.setattr("core.store.redis_store.RESTART_GRACE_MS", FENCED_GRACE_MS)
            restart(server)
            counters, refusals, granted, granted_at = [], 0, None, 0.0
            began = time.monotonic()
            while granted is None and time.monotonic() - began < (3 if persistent else 30):
                try:
                    granted = contender.acquire_lock("task", "contender", ttl_seconds=FENCED_TTL_MS / 1000)
                except LockError:
                    refusals += 1  # typed: the counter is not started afresh yet
                granted_at = time.time_ns() / 1_000_000
                counters.append(contender.latest_fencing_token("task"))
                time.sleep(0.05)
        behind = [c for c in counters if c is not None and c < held["token"]]
        overlapping = int(granted is not None and granted_at < held["believed_until_ms"])
        print(
            f"\nfencing across a restart ({'appendonly' if persistent else 'no persistence'}): {len(counters)} tries, "
            f"{refusals} typed refusals, {len(behind)} counter values below the holder's token, {overlapping} overlapping grants"
        )
        assert behind == [], f"the fencing counter went back below the holder's token {held['token']}: {behind[:3]}"
        assert overlapping == 0, "the task was granted while its holder still held it"
        if persistent:
            assert granted is None and set(counters) == {held["token"]}, "a persistent server lost the lock or its counter"
        else:
            assert granted is not None and granted.fencing_token > held["token"], "creates never resumed"
    finally:
        server.stop()
