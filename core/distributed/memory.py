"""Shared memory for a fleet (seed 003's ``MemorySyncManager``): JSON values by namespace and key.

Each value is one entry of the ``MEMORY`` space under ``{namespace}/{key}``,
wrapped in a small record (when and by whom it was written).  Writes go to the
store at once and atomically (readers see the old or the new value), so there
is nothing to flush: :meth:`MemorySyncManager.sync` checks that the store
answers and waits until the watchers have seen everything written before the
call, which is what a caller of seed 003's ``sync()`` relies on.

Watching polls: one background thread per manager, shared by all its watches,
lists the space's versions (one cheap call whatever the number of watches)
and reads only the watched entries whose version moved.  A callback gets the
newest value (``None`` once deleted); writes that come and go between two
polls are coalesced.  A callback that raises is logged and the thread goes on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_from_ms
from ..models import CorruptRecord
from ..store import MEMORY, EntryUnreadable, Store, Version
from .errors import SyncError, translated
from .models import MemoryEntry

log = logging.getLogger("pi_dash.core.distributed.memory")

DEFAULT_NAMESPACE = "global"
SEPARATOR = "/"


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not namespace or SEPARATOR in namespace:
        raise SyncError(f"namespace must be a non-empty string without {SEPARATOR!r}: {namespace!r}", str(namespace))


def _entry_key(key: str, namespace: str) -> str:
    _check_namespace(namespace)
    if not isinstance(key, str) or not key:
        raise SyncError(f"key must be a non-empty string: {key!r}", namespace)
    return f"{namespace}{SEPARATOR}{key}"


def _check_json(value: Any, key: str, namespace: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SyncError(f"value of {namespace}/{key} is not JSON-serialisable: {exc}", namespace) from None


def _value_of(data: bytes | None, where: str) -> Any:
    if data is None:
        return None
    try:
        return MemoryEntry.from_json(data).value
    except CorruptRecord as exc:
        raise SyncError(f"{where} is corrupt: {exc.reason}", where.partition(SEPARATOR)[0]) from exc


@dataclass(eq=False)
class _Watch:
    entry_key: str
    namespace: str
    callback: Callable[[Any], None]
    version: Version | None
    data: bytes | None
    active: bool = field(default=True)


class MemorySyncManager:
    """Get, set and watch JSON values shared by every process on the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval_s: float = 0.1,
        writer_id: str | None = None,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError("poll_interval_s must be positive")
        self.store = store
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.writer_id = writer_id or f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._rounds = threading.Condition(self._lock)
        self._started = 0  # poll rounds begun
        self._finished = 0  # poll rounds completed

    def _errors(self, namespace: str | None):
        return translated(self.store, lambda message, exc: SyncError(message, namespace))

    def _entry(self, key: str, value: Any, namespace: str) -> bytes:
        return MemoryEntry(
            namespace=namespace, key=key, value=value, updated_at=utc_from_ms(self.clock.now_ms()), updated_by=self.writer_id
        ).to_json()

    # -------------------------------------------------------------- values
    def set(self, key: str, value: Any, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Store ``value`` (anything ``json.dumps`` accepts; else :class:`SyncError`)."""
        entry_key = _entry_key(key, namespace)
        _check_json(value, key, namespace)
        with self._errors(namespace):
            self.store.write(MEMORY, entry_key, self._entry(key, value, namespace), durable=False)

    def get(self, key: str, namespace: str = DEFAULT_NAMESPACE, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        entry_key = _entry_key(key, namespace)
        with self._errors(namespace):
            try:
                blob = self.store.read(MEMORY, entry_key)
            except EntryUnreadable as exc:
                raise SyncError(f"{entry_key} is unreadable: {exc.reason}", namespace) from exc
        return default if blob is None else _value_of(blob.data, entry_key)

    def update(self, key: str, change: Callable[[Any], Any], namespace: str = DEFAULT_NAMESPACE) -> Any:
        """Replace the value with ``change(current)`` atomically (``current`` is ``None`` if absent);
        returns the new value.  ``change`` may run more than once and must be pure."""
        entry_key = _entry_key(key, namespace)
        problem: list[SyncError] = []

        def updater(data: bytes | None) -> bytes | None:
            problem.clear()
            try:
                value = change(_value_of(data, entry_key))
                _check_json(value, key, namespace)
            except SyncError as exc:
                problem.append(exc)
                return None
            return self._entry(key, value, namespace)

        with self._errors(namespace):
            data = self.store.update(MEMORY, entry_key, updater)
        if problem:
            raise problem[0]
        return _value_of(data, entry_key)

    def delete(self, key: str, namespace: str = DEFAULT_NAMESPACE) -> bool:
        """Remove the value; ``True`` if there was one."""
        entry_key = _entry_key(key, namespace)
        with self._errors(namespace):
            return self.store.delete(MEMORY, entry_key)

    def list(self, namespace: str = DEFAULT_NAMESPACE, prefix: str | None = None) -> list[str]:
        """The keys of ``namespace`` (sorted), those starting with ``prefix`` if given."""
        _check_namespace(namespace)
        head = namespace + SEPARATOR + (prefix or "")
        with self._errors(namespace):
            keys = self.store.keys(MEMORY)
        return sorted(key[len(namespace) + 1 :] for key in keys if key.startswith(head))

    def sync(self, namespace: str | None = None, timeout_s: float = 5.0) -> None:
        """Check that the store answers, then wait until every watch has seen the writes made before now.

        Writes need no flushing (each is on the store when ``set`` returns), so
        this is the only waiting ``sync`` does.  Raises :class:`SyncError` if the
        store is unreachable or the watchers do not catch up within ``timeout_s``.
        """
        if namespace is not None:
            _check_namespace(namespace)
        with self._errors(namespace):
            self.store.check()
            self.store.versions(MEMORY)
        with self._lock:
            if self._thread is None or self._thread is threading.current_thread():
                return  # nobody watching, or called from a callback: nothing to wait for
            target = self._started + 1
            self._wake.set()
            if not self._rounds.wait_for(lambda: self._finished >= target or self._thread is None, timeout_s):
                raise SyncError(f"watchers did not catch up within {timeout_s} s", namespace)

    # ------------------------------------------------------------ watching
    def watch(self, key: str, callback: Callable[[Any], None], namespace: str = DEFAULT_NAMESPACE) -> Callable[[], None]:
        """Call ``callback(value)`` from a background thread whenever the value changes
        (``None`` once deleted); returns a function that stops this watch."""
        entry_key = _entry_key(key, namespace)
        with self._errors(namespace):
            try:
                blob = self.store.read(MEMORY, entry_key)
            except EntryUnreadable:
                blob = None
        watch = _Watch(entry_key, namespace, callback, None if blob is None else blob.version, None if blob is None else blob.data)
        with self._lock:
            self._watches.append(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll_loop, name="pi-dash-memory-watch", daemon=True)
                self._thread.start()

        def unwatch() -> None:
            with self._lock:
                watch.active = False
                if watch in self._watches:
                    self._watches.remove(watch)
            self._wake.set()

        return unwatch

    def close(self) -> None:
        """Stop every watch and the polling thread."""
        with self._lock:
            for watch in self._watches:
                watch.active = False
            self._watches.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def __enter__(self) -> MemorySyncManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll_loop(self) -> None:
        while True:
            with self._lock:
                if not self._watches:
                    self._thread = None  # the next watch starts a new thread
                    self._rounds.notify_all()
                    return
                watches = list(self._watches)
                self._started += 1
            try:
                self._poll(watches)
            except Exception:  # noqa: BLE001 - the watch thread must outlive any one bad round
                log.exception("memory watch round failed")
            with self._lock:
                self._finished = self._started
                self._rounds.notify_all()
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _poll(self, watches: list[_Watch]) -> None:
        try:
            versions = self.store.versions(MEMORY)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not end the watches
            log.warning("cannot poll shared memory: %s", exc)
            return
        fresh: dict[str, bytes | None] = {}
        for watch in watches:
            version = versions.get(watch.entry_key)
            if version == watch.version and version is not None:
                continue
            if version is None and watch.data is None:
                watch.version = None
                continue
            if watch.entry_key not in fresh:
                try:
                    blob = None if version is None else self.store.read(MEMORY, watch.entry_key)
                except Exception as exc:  # noqa: BLE001
                    log.warning("cannot read %s: %s", watch.entry_key, exc)
                    continue
                fresh[watch.entry_key] = None if blob is None else blob.data
            data = fresh[watch.entry_key]
            watch.version = version
            if data == watch.data:
                continue  # the version moved but the bytes did not (or a backend's tokens differ)
            watch.data = data
            try:
                value = _value_of(data, watch.entry_key)
            except SyncError as exc:
                log.warning("watched value %s", exc)
                continue
            if watch.active:
                try:
                    watch.callback(value)
                except Exception:  # noqa: BLE001 - a bad callback must not kill the others
                    log.exception("watch callback for %s raised", watch.entry_key)
