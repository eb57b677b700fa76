"""Lock semantics with an injected clock: acquire, expiry, takeover, release by compare-and-delete."""

from __future__ import annotations

import os

import pytest

from core.locks import CORRUPT_LOCK_GRACE_MS, LockService, lock_key
from core.models import DistributedLock
from core.store import LOCKS, RecordCache
from tests.helpers import AgingClock


@pytest.fixture
def clock(store) -> AgingClock:
    """Locks expire by their files' age as well: the files age as the injected clock moves."""
    return AgingClock(store)


def test_lock_file_is_named_and_shaped_as_pi_writes_it(store, clock, root):
    lock = LockService(store, "sess-a", clock).try_acquire("steal:sess-b/x", ttl_ms=30_000)
    path = root / "locks" / "steal_sess-b_x.lock"
    assert lock_key("steal:sess-b/x") == "steal_sess-b_x"
    on_disk = DistributedLock.from_json(path.read_bytes())
    assert on_disk == lock
    assert on_disk.expires_at - on_disk.acquired_at == 30_000
    assert on_disk.lock_id.startswith("sess-a-") and on_disk.holder == "sess-a"
    assert path.read_bytes().startswith(b'{\n  "lockId": "sess-a-')


def test_a_held_lock_is_refused_until_it_expires(store, clock):
    mine = LockService(store, "a", clock).try_acquire("r", ttl_ms=1_000)
    other = LockService(store, "b", clock)
    assert mine is not None
    clock.advance(999)
    assert other.try_acquire("r") is None
    clock.advance(1)
    taken = other.try_acquire("r")
    assert taken is not None and taken.holder == "b"


def test_release_never_removes_a_lock_that_changed_hands(store, clock):
    first = LockService(store, "a", clock)
    lock = first.try_acquire("r", ttl_ms=100)
    clock.advance(100)
    second = LockService(store, "b", clock).try_acquire("r", ttl_ms=1_000)
    assert second is not None
    result = first.release_if_current(lock)
    assert not result.released and "held by b" in result.reason
    assert store.read(LOCKS, "r") is not None


def test_same_millisecond_reacquisitions_get_distinct_lock_ids(store, clock):
    service = LockService(store, "a", clock)
    ids = set()
    for _ in range(5):
        lock = service.try_acquire("r")
        ids.add(lock.lock_id)
        assert service.release(lock)
    assert len(ids) == 5


def test_renew_extends_only_our_own_lock(store, clock):
    service = LockService(store, "a", clock)
    lock = service.try_acquire("r", ttl_ms=1_000)
    clock.advance(900)
    renewed = service.renew(lock, ttl_ms=1_000)
    assert renewed is not None and renewed.expires_at == clock.now_ms() + 1_000
    clock.advance(500)
    assert LockService(store, "b", clock).try_acquire("r") is None


def test_a_corrupt_lock_is_broken_only_after_its_grace(store, clock, root):
    (root / "locks").mkdir()
    (root / "locks" / "r.lock").write_bytes(b'{"lockId": "x-1", "acq')
    service = LockService(store, "a", clock)
    clock.set(os.stat(root / "locks" / "r.lock").st_mtime_ns // 1_000_000 + 10)
    assert service.try_acquire("r") is None
    clock.advance(CORRUPT_LOCK_GRACE_MS)
    assert service.try_acquire("r") is not None


def test_cleanup_removes_expired_locks_only(store, clock):
    service = LockService(store, "a", clock)
    service.try_acquire("short", ttl_ms=10)
    service.try_acquire("long", ttl_ms=10_000)
    clock.advance(10)
    cache = RecordCache(store, LOCKS, DistributedLock)
    cache.refresh()
    assert service.cleanup_expired(cache.entries) == ["short"]
    assert store.read(LOCKS, "long") is not None


def test_a_refused_acquisition_changes_nothing_in_the_directory(store, clock, root, monkeypatch):
    """Contenders retrying a held lock must not slow its holder: no temporary file, no link."""
    mine = LockService(store, "a", clock).try_acquire("r", ttl_ms=30_000)
    changes: list[str] = []
    for name in ("link", "unlink", "replace"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *args, _real=real, _name=name, **kw: changes.append(_name) or _real(*args, **kw))
    assert LockService(store, "b", clock).try_acquire("r") is None
    assert changes == [] and sorted(p.name for p in (root / "locks").iterdir()) == ["r.lock"]
    assert LockService(store, "a", clock).release(mine)
