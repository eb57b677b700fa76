"""Distributed locks in pi's format (``locks/{resource}.lock``), acquired atomically.

pi checks whether the file exists and then writes it, so two instances can
both "hold" a lock.  Here acquisition is the store's atomic create-if-absent;
taking over an expired (or long-corrupt) lock and releasing are
compare-and-swap / compare-and-delete on the exact bytes that were read, so a
lock that changed hands in between is never removed.  A holder that dies keeps
its lock until ``expiresAt`` and not a moment longer.

Clocks may disagree: ``expiresAt`` is on the holder's clock and judged on the
taker's, so a taker 60 s ahead (or a holder whose clock was an hour behind)
would see a live lock as long expired.  So a lock is only free once the file
is also as old as its lease (:func:`outlived_lease`): the file's age is read
on one clock, the store's, and the lease is a span on one clock, the
holder's, so neither process's offset counts.  A holder whose clock runs
ahead keeps a lock it abandoned that much longer; that skew is a problem the
snapshot shows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .clock import SYSTEM_CLOCK, Clock
from .models import CorruptRecord, DistributedLock
from .store import LOCKS, REFUSED, VANISHED, EntryUnreadable, Loaded, Store, read_record

DEFAULT_TTL_MS = 30_000
# A lock file that does not parse is only broken once it is this old: pi
# writes lock files in place, and one may be caught half-written.
CORRUPT_LOCK_GRACE_MS = 60_000


def lock_key(resource: str) -> str:
    """pi's file name for a resource: every ``:`` and ``/`` becomes ``_``."""
    return resource.replace(":", "_").replace("/", "_")


def to_base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if number == 0:
        return "0"
    out = []
    while number:
        number, rem = divmod(number, 36)
        out.append(digits[rem])
    return "".join(reversed(out))


def outlived_lease(lease_ms: int, modified_ms: int, store_now_ms: int) -> bool:
    """Whether a lock's entry has been as old as its lease, both measured without the
    writer's or the reader's clock: the age on the store's clock (``store_now_ms``
    minus the entry's ``modified_ms``), the lease on the holder's (``expiresAt`` less
    when it wrote the lock).  Used by pi's locks and by task locks."""
    return store_now_ms - modified_ms >= lease_ms


@dataclass(frozen=True, slots=True)
class LockRelease:
    """What a forced release found: whether it removed the lock and why not."""

    released: bool
    reason: str


class LockService:
    """Acquire, renew and release locks on behalf of one holder."""

    def __init__(self, store: Store, holder_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.holder_id = holder_id
        self.clock = clock
        self._last_stamp = 0
        self._stamp_lock = threading.Lock()
        self._written: dict[str, bytes] = {}  # lockId -> the exact bytes we wrote, for release

    def _new_lock(self, resource: str, ttl_ms: int) -> DistributedLock:
        now = self.clock.now_ms()
        with self._stamp_lock:
            # lockIds must differ even for two acquisitions in one millisecond,
            # or a stale release could match a newer lock byte for byte.
            stamp = max(now, self._last_stamp + 1)
            self._last_stamp = stamp
        return DistributedLock(
            lock_id=f"{self.holder_id}-{to_base36(stamp)}",
            acquired_at=now,
            expires_at=now + ttl_ms,
            resource=resource,
        )

    def try_acquire(self, resource: str, ttl_ms: int = DEFAULT_TTL_MS) -> DistributedLock | None:
        """Take the lock if it is free or expired; ``None`` if someone holds it."""
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        key = lock_key(resource)
        lock = self._new_lock(resource, ttl_ms)
        data = lock.to_json()
        for _ in range(3):
            try:
                blob = self.store.create_or_read(LOCKS, key, data)
            except EntryUnreadable:
                return None
            if blob is None:
                return self._remember(lock, data)
            if blob.version == VANISHED:
                continue  # released between our attempt and our look: try again
            if blob.version == REFUSED:
                return None
            try:
                current = DistributedLock.from_json(blob.data)
                breakable = self._expired(current, blob.modified_ms, lock.acquired_at)
            except CorruptRecord:
                breakable = lock.acquired_at - blob.modified_ms >= CORRUPT_LOCK_GRACE_MS
            if not breakable:
                return None
            if self.store.replace_if(LOCKS, key, blob.data, data):
                return self._remember(lock, data)
        return None

    def _expired(self, lock: DistributedLock, modified_ms: int, now_ms: int) -> bool:
        """Past its ``expiresAt`` on our clock, and its file as old as its lease on the
        store's (asked only then: on a directory it costs a write)."""
        return lock.is_expired(now_ms) and outlived_lease(lock.lease_ms(), modified_ms, self.store.now_ms())

    def _remember(self, lock: DistributedLock, data: bytes) -> DistributedLock:
        if len(self._written) >= 1024:
            self._written.pop(next(iter(self._written)))
        self._written[lock.lock_id] = data
        return lock

    def release(self, lock: DistributedLock) -> bool:
        """Release a lock this holder took; ``False`` if it expired and changed hands."""
        return self.release_if_current(lock).released

    def release_if_current(self, lock: DistributedLock) -> LockRelease:
        """Remove ``lock`` only if the file still holds exactly this lock (by ``lockId``)."""
        key = lock_key(lock.resource)
        # The common case in one step: the file holds exactly the bytes we wrote.
        written = self._written.pop(lock.lock_id, None) or lock.to_json()
        if self.store.delete_if(LOCKS, key, written):
            return LockRelease(True, "released")
        try:
            found = read_record(self.store, LOCKS, key, DistributedLock)
        except (CorruptRecord, EntryUnreadable) as exc:
            return LockRelease(False, f"lock file unreadable: {exc}")
        if found is None:
            return LockRelease(False, "already released")
        current, blob = found
        if current.lock_id != lock.lock_id:
            return LockRelease(False, f"now held by {current.holder}")
        if self.store.delete_if(LOCKS, key, blob.data):
            return LockRelease(True, "released")
        return LockRelease(False, "changed while releasing")

    def renew(self, lock: DistributedLock, ttl_ms: int = DEFAULT_TTL_MS) -> DistributedLock | None:
        """Extend a held lock; ``None`` if it is no longer ours."""
        key = lock_key(lock.resource)
        try:
            found = read_record(self.store, LOCKS, key, DistributedLock)
        except (CorruptRecord, EntryUnreadable):
            return None
        if found is None or found[0].lock_id != lock.lock_id:
            return None
        now = self.clock.now_ms()
        renewed = lock.model_copy(update={"expires_at": now + ttl_ms, "written_at": now})
        data = renewed.to_json()
        if not self.store.replace_if(LOCKS, key, found[1].data, data):
            return None
        self._written.pop(lock.lock_id, None)
        return self._remember(renewed, data)

    def cleanup_expired(self, entries: dict[str, Loaded[DistributedLock]]) -> list[str]:
        """Remove expired locks, and corrupt ones past their grace; returns the keys removed."""
        now = self.clock.now_ms()
        store_now: int | None = None  # asked once, and only if some lock is past its expiresAt
        removed = []
        for key, entry in entries.items():
            if entry.raw is None:
                continue  # unreadable (permissions, not a file): not ours to touch
            if entry.record is not None:
                stale = entry.record.is_expired(now)
                if stale:
                    store_now = self.store.now_ms() if store_now is None else store_now
                    stale = outlived_lease(entry.record.lease_ms(), entry.modified_ms, store_now)
            else:
                stale = now - entry.modified_ms >= CORRUPT_LOCK_GRACE_MS
            if stale and self.store.delete_if(LOCKS, key, entry.raw):
                removed.append(key)
        return removed
