"""Task locks with fencing tokens (seed 003's ``LockManager``), on any :class:`Store`.

Safety comes from the store's atomic primitives, never from "check, then write":

* a free lock is taken with ``create`` (create-if-absent): of two workers
  racing for it exactly one wins;
* an expired lock is taken over with ``replace_if`` on the exact bytes that
  were read, so two workers that both saw it expire cannot both take it, and a
  holder that renewed meanwhile keeps it;
* release and forced removal are ``delete_if`` on the exact bytes read, so a
  lock that changed hands in between is never removed.

A lock that expires can still be in use by a holder that stalled (GC pause,
suspended VM) and does not know it lost the lock.  Expiry alone cannot stop
that holder; fencing tokens can.  Every acquisition carries a token that is
larger than the token of every acquisition of the same task before it, so a
resource that keeps the largest token it has accepted (or asks
:meth:`LockManager.check_fencing` before acting) refuses the stale holder.

How tokens stay ordered: a per-task counter in the ``FENCING`` space is bumped
with ``update`` (atomic read-modify-write) to ``max(last + 1, now_ms)``, so it
never repeats and keeps increasing even if the counter were lost.  A token is
drawn just before the create/replace that places the lock; if, once the lock
is ours, the counter has moved past our token (someone drew one in between,
possibly for an acquisition that came and went before ours landed), we draw a
new one while holding the lock and swap it in.  Either way the final token is
the counter's value at a moment we held the lock, which orders it after every
earlier holder's token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_from_ms
from ..locks import CORRUPT_LOCK_GRACE_MS, outlived_lease
from ..models import CorruptRecord
from ..store import FENCING, TASK_LOCKS, Blob, EntryUnreadable, Store
from .errors import LockError, LockErrorCode, NotFoundError, lock_code_for, translated
from .models import FencingCounter, Lock, LockingConfig, LockMetadata

log = logging.getLogger("pi_dash.core.distributed.locks")

_RACE_ROUNDS = 8  # re-reads when the entry changes between our read and our compare-and-swap


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")


def _metadata(metadata: LockMetadata | Mapping[str, Any] | None) -> LockMetadata:
    if metadata is None:
        return LockMetadata()
    if isinstance(metadata, LockMetadata):
        return metadata
    return LockMetadata.model_validate(dict(metadata))


def _counter_value(data: bytes | None) -> int:
    if not data:
        return 0
    try:
        return FencingCounter.from_json(data).last_token
    except CorruptRecord:
        return 0  # a damaged counter restarts at now_ms, still above every earlier token


class LockManager:
    """Acquire, release, renew and inspect task locks for any number of workers."""

    def __init__(
        self,
        store: Store,
        config: LockingConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.config = config or LockingConfig()
        self.clock = clock
        self._sleep = sleep  # real time between retries (never the injected clock): tests pass a fake

    # ------------------------------------------------------------ helpers
    def _errors(self, task_id: str | None):
        return translated(self.store, lambda message, exc: LockError(message, lock_code_for(exc), task_id))

    def _ttl_ms(self, ttl_seconds: float | None) -> int:
        ttl = self.config.ttl_seconds if ttl_seconds is None else ttl_seconds
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        return max(1, round(ttl * 1000))

    def _issue_token(self, task_id: str, now_ms: int) -> int:
        """Draw the next fencing token of ``task_id``: ``max(last + 1, now_ms)``, atomically."""

        def bump(data: bytes | None) -> bytes:
            token = max(_counter_value(data) + 1, now_ms)
            return FencingCounter(task_id=task_id, last_token=token).to_json()

        return _counter_value(self.store.update(FENCING, task_id, bump))

    def _read(self, task_id: str) -> tuple[Lock | None, Blob] | None:
        """The current entry: ``(lock, blob)``, ``(None, blob)`` if it does not parse, or ``None``."""
        blob = self.store.read(TASK_LOCKS, task_id)
        if blob is None:
            return None
        try:
            return Lock.from_json(blob.data), blob
        except CorruptRecord as exc:
            log.warning("lock of task %r is corrupt: %s", task_id, exc.reason)
            return None, blob

    def _read_owned(self, task_id: str, worker_id: str) -> tuple[Lock, Blob]:
        """The caller's lock, or the :class:`LockError` that says why it is not."""
        try:
            found = self._read(task_id)
        except EntryUnreadable as exc:
            raise LockError(f"lock of task {task_id!r} is unreadable: {exc.reason}", LockErrorCode.LOCK_CORRUPT, task_id) from exc
        if found is None:
            raise NotFoundError(f"task {task_id!r} is not locked", task_id)
        lock, blob = found
        if lock is None:
            raise LockError(f"lock of task {task_id!r} is corrupt", LockErrorCode.LOCK_CORRUPT, task_id)
        if lock.worker_id != worker_id:
            raise LockError(
                f"task {task_id!r} is locked by {lock.worker_id!r}, not {worker_id!r}", LockErrorCode.INVALID_OWNER, task_id
            )
        return lock, blob

    def _breakable(self, lock: Lock | None, blob: Blob, now_ms: int) -> bool:
        if lock is not None:
            # Past expiresAt on our clock, and as old as its lease on the store's (core.locks):
            # a worker whose clock is off never breaks a live lock.
            return lock.is_expired(now_ms) and outlived_lease(lock.lease_ms(), blob.modified_ms, self.store.now_ms())
        # Our own writes are atomic, so a corrupt entry is damage, not a write in
        # progress; still, leave it alone for a while in case a peer is mid-repair.
        return now_ms - blob.modified_ms >= CORRUPT_LOCK_GRACE_MS

    # ---------------------------------------------------------- acquiring
    def acquire_lock(
        self,
        task_id: str,
        worker_id: str,
        metadata: LockMetadata | Mapping[str, Any] | None = None,
        *,
        ttl_seconds: float | None = None,
    ) -> Lock | None:
        """Lock ``task_id`` for ``worker_id``; ``None`` if it stays held by anyone (the worker too)
        through ``1 + retry_attempts`` tries.  Raises :class:`LockError` when the store fails."""
        _check_id(task_id, "task_id")
        _check_id(worker_id, "worker_id")
        meta = _metadata(metadata)
        ttl_ms = self._ttl_ms(ttl_seconds)
        with self._errors(task_id):
            for attempt in range(1 + self.config.retry_attempts):
                if attempt:
                    self._sleep(self.config.retry_delay_ms / 1000)
                lock = self._try_acquire(task_id, worker_id, meta, ttl_ms)
                if lock is not None:
                    return lock
        return None

    def _try_acquire(self, task_id: str, worker_id: str, meta: LockMetadata, ttl_ms: int) -> Lock | None:
        for _ in range(_RACE_ROUNDS):
            try:
                found = self._read(task_id)
            except EntryUnreadable:
                return None  # something is there that we cannot read: not ours to take
            now = self.clock.now_ms()
            if found is not None and not self._breakable(*found, now):
                return None  # held (looking first spares the counter a token per refused try)
            lock = Lock(
                task_id=task_id,
                worker_id=worker_id,
                acquired_at=utc_from_ms(now),
                expires_at=utc_from_ms(now + ttl_ms),
                fencing_token=self._issue_token(task_id, now),
                metadata=meta,
            )
            data = lock.to_json()
            if found is None:
                placed = self.store.create(TASK_LOCKS, task_id, data)
            else:
                placed = self.store.replace_if(TASK_LOCKS, task_id, found[1].data, data)
            if placed:
                return self._confirm_token(lock, data)
            # Lost a race (created, released or taken over meanwhile): look again.
        return None

    def _confirm_token(self, lock: Lock, data: bytes) -> Lock | None:
        """Make sure the token of a lock we just placed is ordered after every earlier holder's."""
        counter = self.store.read(FENCING, lock.task_id)
        latest = _counter_value(None if counter is None else counter.data)
        if latest == lock.fencing_token:
            return lock
        # Someone drew a token after ours and before our lock landed: draw again now
        # that we hold the lock, so ours is the newest, and swap it in.
        fresh = lock.model_copy(update={"fencing_token": self._issue_token(lock.task_id, self.clock.now_ms())})
        if self.store.replace_if(TASK_LOCKS, lock.task_id, data, fresh.to_json()):
            return fresh
        return None  # it expired and changed hands already

    # ---------------------------------------------------------- releasing
    def release_lock(self, task_id: str, worker_id: str) -> None:
        """Release the caller's lock.

        Raises :class:`NotFoundError` if the task is not locked, :class:`LockError`
        ``INVALID_OWNER`` if another worker holds it, and ``LOCK_EXPIRED`` if the
        caller's lock had expired (it is then removed too, unless it changed
        hands meanwhile: removal is compare-and-delete on what was read).
        """
        _check_id(task_id, "task_id")
        _check_id(worker_id, "worker_id")
        with self._errors(task_id):
            for _ in range(_RACE_ROUNDS):
                lock, blob = self._read_owned(task_id, worker_id)
                if lock.is_expired(self.clock.now_ms()):
                    self.store.delete_if(TASK_LOCKS, task_id, blob.data)
                    raise LockError(
                        f"lock of task {task_id!r} held by {worker_id!r} expired at {lock.expires_at.isoformat()}",
                        LockErrorCode.LOCK_EXPIRED,
                        task_id,
                    )
                if self.store.delete_if(TASK_LOCKS, task_id, blob.data):
                    return
        raise LockError(f"lock of task {task_id!r} kept changing; not released", LockErrorCode.LOCK_CONTENDED, task_id)

    def renew_lock(self, task_id: str, worker_id: str, ttl_seconds: float | None = None) -> Lock:
        """Extend the caller's lock to ``now + ttl`` (same fencing token); errors as :meth:`release_lock`.

        An expired lock is not renewed (``LOCK_EXPIRED``): others may already
        have seen it free, so the caller must acquire it again (and gets a new token).
        """
        _check_id(task_id, "task_id")
        _check_id(worker_id, "worker_id")
        ttl_ms = self._ttl_ms(ttl_seconds)
        with self._errors(task_id):
            for _ in range(_RACE_ROUNDS):
                lock, blob = self._read_owned(task_id, worker_id)
                now = self.clock.now_ms()
                if lock.is_expired(now):
                    raise LockError(
                        f"lock of task {task_id!r} held by {worker_id!r} expired at {lock.expires_at.isoformat()}",
                        LockErrorCode.LOCK_EXPIRED,
                        task_id,
                    )
                renewed = lock.model_copy(update={"expires_at": utc_from_ms(now + ttl_ms), "written_at": utc_from_ms(now)})
                if self.store.replace_if(TASK_LOCKS, task_id, blob.data, renewed.to_json()):
                    return renewed
        raise LockError(f"lock of task {task_id!r} kept changing; not renewed", LockErrorCode.LOCK_CONTENDED, task_id)

    # ---------------------------------------------------------- inspecting
    def is_locked(self, task_id: str) -> bool:
        """Whether an acquisition would be refused now (held, or unreadable/corrupt and not yet breakable)."""
        _check_id(task_id, "task_id")
        with self._errors(task_id):
            try:
                found = self._read(task_id)
            except EntryUnreadable:
                return True
            return found is not None and not self._breakable(*found, self.clock.now_ms())

    def get_lock(self, task_id: str) -> Lock | None:
        """The lock entry of ``task_id`` (expired or not: see :meth:`Lock.is_expired`), or ``None``."""
        _check_id(task_id, "task_id")
        with self._errors(task_id):
            try:
                found = self._read(task_id)
            except EntryUnreadable as exc:
                raise LockError(f"lock of task {task_id!r} is unreadable: {exc.reason}", LockErrorCode.LOCK_CORRUPT, task_id) from exc
        if found is None:
            return None
        if found[0] is None:
            raise LockError(f"lock of task {task_id!r} is corrupt", LockErrorCode.LOCK_CORRUPT, task_id)
        return found[0]

    def _entries(self) -> list[tuple[str, Lock | None, Blob]]:
        entries = []
        for key, blob in self.store.read_all(TASK_LOCKS).items():
            if isinstance(blob, EntryUnreadable):
                log.warning("lock of task %r is unreadable: %s", key, blob.reason)
                continue
            try:
                entries.append((key, Lock.from_json(blob.data), blob))
            except CorruptRecord as exc:
                log.warning("lock of task %r is corrupt: %s", key, exc.reason)
                entries.append((key, None, blob))
        return entries

    def list_locks(self, worker_id: str | None = None, include_expired: bool = False) -> list[Lock]:
        """Locks (by task id), optionally one worker's; corrupt entries are skipped (and logged)."""
        now = self.clock.now_ms()
        with self._errors(None):
            entries = self._entries()
        return sorted(
            (
                lock
                for _, lock, _ in entries
                if lock is not None
                and (worker_id is None or lock.worker_id == worker_id)
                and (include_expired or not lock.is_expired(now))
            ),
            key=lambda lock: lock.task_id,
        )

    def cleanup_stale_locks(self) -> int:
        """Remove expired locks (and corrupt ones past their grace); returns how many this call removed."""
        now = self.clock.now_ms()
        removed = 0
        with self._errors(None):
            for key, lock, blob in self._entries():
                if self._breakable(lock, blob, now) and self.store.delete_if(TASK_LOCKS, key, blob.data):
                    removed += 1
        return removed

    def release_worker_locks(self, worker_id: str) -> int:
        """Remove every lock ``worker_id`` holds, expired or not (recovery of a dead worker)."""
        _check_id(worker_id, "worker_id")
        removed = 0
        with self._errors(None):
            for key, lock, blob in self._entries():
                if lock is not None and lock.worker_id == worker_id and self.store.delete_if(TASK_LOCKS, key, blob.data):
                    removed += 1
        return removed

    # ------------------------------------------------------------ fencing
    def check_fencing(self, task_id: str, token: int) -> bool:
        """Whether ``token`` belongs to the current, unexpired holder of ``task_id``.

        A resource guard calls this before acting for a holder: a holder whose
        lock expired, was released, recovered or taken over gets ``False``.
        (A guard that can store state should also keep the largest token it
        accepted and refuse smaller ones: tokens only grow per task.)
        """
        _check_id(task_id, "task_id")
        with self._errors(task_id):
            try:
                found = self._read(task_id)
            except EntryUnreadable:
                return False
        if found is None or found[0] is None:
            return False
        lock = found[0]
        return lock.fencing_token == token and not lock.is_expired(self.clock.now_ms())

    def latest_fencing_token(self, task_id: str) -> int | None:
        """The largest token issued for ``task_id`` so far (``None`` if never locked)."""
        _check_id(task_id, "task_id")
        with self._errors(task_id):
            blob = self.store.read(FENCING, task_id)
        return None if blob is None else _counter_value(blob.data) or None

    # -------------------------------------------------------------- async
    # Each store call is short and blocking, so the async forms run the sync
    # ones in a worker thread (asyncio.to_thread); acquisition sleeps between
    # tries on the event loop instead, so it can be cancelled while it waits.
    async def acquire_lock_async(
        self,
        task_id: str,
        worker_id: str,
        metadata: LockMetadata | Mapping[str, Any] | None = None,
        *,
        ttl_seconds: float | None = None,
    ) -> Lock | None:
        _check_id(task_id, "task_id")
        _check_id(worker_id, "worker_id")
        meta = _metadata(metadata)
        ttl_ms = self._ttl_ms(ttl_seconds)
        for attempt in range(1 + self.config.retry_attempts):
            if attempt:
                await asyncio.sleep(self.config.retry_delay_ms / 1000)
            lock = await self._attempt_async(task_id, worker_id, meta, ttl_ms)
            if lock is not None:
                return lock
        return None

    async def _attempt_async(self, task_id: str, worker_id: str, meta: LockMetadata, ttl_ms: int) -> Lock | None:
        def attempt() -> Lock | None:
            with self._errors(task_id):
                return self._try_acquire(task_id, worker_id, meta, ttl_ms)

        future = asyncio.ensure_future(asyncio.to_thread(attempt))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be stopped; if it wins the lock after all, give it back.
            future.add_done_callback(lambda done: self._give_back(done, worker_id))
            raise

    def _give_back(self, done: asyncio.Future, worker_id: str) -> None:
        if done.cancelled() or done.exception() is not None or done.result() is None:
            return
        lock = done.result()
        try:
            self.release_lock(lock.task_id, worker_id)
        except LockError as exc:
            log.warning("could not give back lock of task %r after cancellation: %s", lock.task_id, exc)

    async def release_lock_async(self, task_id: str, worker_id: str) -> None:
        await asyncio.to_thread(self.release_lock, task_id, worker_id)

    async def renew_lock_async(self, task_id: str, worker_id: str, ttl_seconds: float | None = None) -> Lock:
        return await asyncio.to_thread(self.renew_lock, task_id, worker_id, ttl_seconds)

    async def list_locks_async(self, worker_id: str | None = None, include_expired: bool = False) -> list[Lock]:
        return await asyncio.to_thread(self.list_locks, worker_id, include_expired)

    async def get_lock_async(self, task_id: str) -> Lock | None:
        return await asyncio.to_thread(self.get_lock, task_id)

    async def is_locked_async(self, task_id: str) -> bool:
        return await asyncio.to_thread(self.is_locked, task_id)

    async def check_fencing_async(self, task_id: str, token: int) -> bool:
        return await asyncio.to_thread(self.check_fencing, task_id, token)
