"""The storage interface every engine in ``core`` is written against.

A store holds small blobs (one JSON record each) in a few named spaces.  It
offers exactly the atomic operations the engines need, so that a backend can
implement each one with its native primitive: on a directory, ``os.replace``,
``link`` and a ``flock`` guard; on Redis, single commands and Lua scripts.

The store moves bytes, not records: parsing and validation belong to the
layer above (:mod:`core.store.records`), so a corrupt blob is reported there
and never silently dropped here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Space:
    """A named collection of blobs.

    ``verbatim`` spaces are pi's own: the key *is* the file name stem
    (``instances/{instanceId}.lock``), so pi finds our files and we find its.
    Other spaces belong to pi-dash, and their keys may be any string: the
    backend encodes them as it needs.
    """

    name: str
    suffix: str
    verbatim: bool = False
    in_place: bool = False
    """Hot state updated many times a second: backends may update it in place
    instead of replacing it (readers still never see a torn value, and a writer
    killed mid-update leaves the previous value)."""
    monotonic: bool = False
    """Counters that must never go back (fencing tokens): a backend that may have lost
    one (a Redis restarted without persistence) starts it afresh only once every lock
    granted before has expired, as it grants locks again only then."""


INSTANCES = Space("instances", ".lock", verbatim=True)
QUEUES = Space("queue-states", ".json", verbatim=True)
LOCKS = Space("locks", ".lock", verbatim=True)
STEALING_STATS = Space("pi-dash/stealing-stats", ".json")
CLAIMS = Space("pi-dash/claims", ".json")
PARALLELISM = Space("pi-dash/parallelism", ".json")
BACKOFF = Space("pi-dash/backoff", ".json", in_place=True)
RATE_LIMITS = Space("pi-dash/rate-limits", ".json", in_place=True)
CONTROL = Space("pi-dash/control", ".json")
# The distributed execution API (seed 003): task locks, workers, shared memory, fencing counters.
TASK_LOCKS = Space("pi-dash/dist/locks", ".json")
WORKERS = Space("pi-dash/dist/workers", ".json")
MEMORY = Space("pi-dash/dist/memory", ".json")
FENCING = Space("pi-dash/dist/fencing", ".json", in_place=True, monotonic=True)

ALL_SPACES = (
    INSTANCES,
    QUEUES,
    LOCKS,
    STEALING_STATS,
    CLAIMS,
    PARALLELISM,
    BACKOFF,
    RATE_LIMITS,
    CONTROL,
    TASK_LOCKS,
    WORKERS,
    MEMORY,
    FENCING,
)

Updater = Callable[[bytes | None], bytes | None]
"""Maps the current bytes (``None`` if absent) to the new bytes (``None``: leave as is)."""

Version = Hashable
"""A token that changes whenever a blob's content may have changed."""

VANISHED: Version = ("vanished",)
REFUSED: Version = ("refused",)


@dataclass(frozen=True, slots=True)
class Blob:
    key: str
    data: bytes
    version: Version
    modified_ms: int


class ChangeFeed(Protocol):
    """Changes a store announces, as ``(space, key)`` pairs."""

    def get(self, timeout: float) -> list[tuple[Space, str]]:
        """What was announced within ``timeout`` seconds (raises :class:`StoreError` if the feed broke)."""

    def close(self) -> None: ...


class StoreError(Exception):
    """Base of every storage failure; its message is meant for the user."""


class StoreUnavailable(StoreError):
    """The store as a whole cannot be used (missing root, no permission, server down)."""


class StoreBusy(StoreError):
    """Another process has held an entry's guard longer than a guard may be held (it is
    stopped, or starved of CPU): nothing was changed, and the caller may try again."""


class EntryUnreadable(StoreError):
    """One entry exists but cannot be read as a blob (permissions, not a file, too big)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ReadOnlyStore(StoreError):
    """A write to a store opened read-only (``pi-dash --read-only``): refused, nothing written."""


class InvalidKey(StoreError, ValueError):
    """A key that cannot name an entry in this store.  The backends here accept every
    key (the directory backend gives bounded names to those no file could have)."""


class Store(ABC):
    """Atomic blob storage shared by every process of a fleet.

    A store opened with ``read_only=True`` refuses every write with
    :class:`ReadOnlyStore` before touching anything: each backend's mutating
    methods start with :meth:`_writable`, so a viewer cannot change the fleet
    even by mistake.
    """

    read_only: bool = False

    def _writable(self, operation: str) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{self.describe()} is open read-only: {operation} refused")

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for messages ("directory /home/u/.pi/runtime")."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreUnavailable` with a clear reason if the store cannot be read."""

    @abstractmethod
    def versions(self, space: Space) -> dict[str, Version]:
        """Every key of ``space`` with its change token, without reading contents."""

    def listed_key(self, space: Space, key: str) -> str:
        """The key a listing of ``space`` gives for what was written under ``key``: ``key``
        itself, unless the backend had to give it a bounded name (the directory backend,
        for a key too long or otherwise impossible as a file name)."""
        return key

    def keys(self, space: Space) -> list[str]:
        """Every key of ``space`` (cheaper than :meth:`versions` where a backend can)."""
        return list(self.versions(space))

    @abstractmethod
    def read(self, space: Space, key: str) -> Blob | None:
        """The blob under ``key``, or ``None`` when there is none.

        Raises :class:`EntryUnreadable` when something is there but is not a
        readable blob.
        """

    def read_all(self, space: Space) -> dict[str, Blob | EntryUnreadable]:
        """Every entry of ``space`` (the first full load of a cache); backends may do it faster."""
        found: dict[str, Blob | EntryUnreadable] = {}
        for key in self.keys(space):
            try:
                blob = self.read(space, key)
            except EntryUnreadable as exc:
                found[key] = exc
            else:
                if blob is not None:
                    found[key] = blob
        return found

    @abstractmethod
    def write(self, space: Space, key: str, data: bytes, *, durable: bool = False) -> None:
        """Replace the blob atomically: readers see the old or the new bytes, never a mix.

        Not durable across a power cut unless ``durable`` (an ``fsync``, milliseconds
        on a busy disk, which also stalls every other process's directory changes
        until the journal commits): runtime records die with the processes they
        describe, so they need atomicity, not durability.
        """

    @abstractmethod
    def create(self, space: Space, key: str, data: bytes) -> bool:
        """Store ``data`` only if ``key`` is absent; ``True`` if this call created it."""

    def create_or_read(self, space: Space, key: str, data: bytes) -> Blob | None:
        """:meth:`create`, and when that fails, what holds the key (one round trip where a
        backend can).  ``None`` if this call created it; a blob whose version is
        :data:`VANISHED` if the holder went away in between (try again), or
        :data:`REFUSED` if the backend will not create anything just now."""
        if self.create(space, key, data):
            return None
        return self.read(space, key) or Blob(key, b"", VANISHED, 0)

    @abstractmethod
    def replace_if(self, space: Space, key: str, expected: bytes, data: bytes) -> bool:
        """Compare-and-swap: replace only while the current bytes equal ``expected``."""

    @abstractmethod
    def delete_if(self, space: Space, key: str, expected: bytes) -> bool:
        """Compare-and-delete: remove only while the current bytes equal ``expected``."""

    @abstractmethod
    def delete(self, space: Space, key: str) -> bool:
        """Remove unconditionally (only for entries the caller owns); ``True`` if it existed."""

    @abstractmethod
    def update(self, space: Space, key: str, updater: Updater) -> bytes | None:
        """Atomic read-modify-write: no other update of ``key`` interleaves.

        ``updater`` may run more than once (backends with optimistic
        concurrency retry it), so it must be a pure function of its input.
        Returns the bytes now stored.
        """

    @abstractmethod
    def append_event(self, data: bytes) -> None:
        """Append one event (a single line of JSON) to the fleet's event log."""

    @abstractmethod
    def read_events(self, cursor: int = 0, limit: int = 1000) -> tuple[list[bytes], int]:
        """Events after ``cursor`` (oldest first, at most ``limit``) and the cursor to pass next.

        The log is bounded: old events are dropped, so a reader that falls far
        behind resumes at the oldest kept event.
        """

    @abstractmethod
    def read_config(self) -> bytes | None:
        """The raw fleet config (pi's ``coordinator.json``), or ``None`` when absent."""

    def listing_token(self, space: Space) -> Version | None:
        """A value that changes whenever an entry of ``space`` is added, removed or
        replaced, or ``None`` when the backend cannot vouch for that (then every
        entry's version is looked at).  Optional: it lets a rescan skip a space
        nothing touched."""
        return None

    def now_ms(self) -> int:
        """Now, on the clock that stamps :attr:`Blob.modified_ms` (epoch ms).

        A blob's age is this minus its ``modified_ms``: both readings come from
        one clock, so the age holds whatever the writer's or the reader's own
        clock says.  Here the local kernel's, which stamps a local directory's
        files; a backend whose blobs are stamped elsewhere overrides it.
        """
        return time.time_ns() // 1_000_000

    # ----------------------------------------------------------- changes
    # How a watcher learns of changes is the backend's to declare: a directory's files
    # are watched where they lie (inotify), a server announces them on a feed.  A store
    # with neither is polled.

    def watched_directory(self) -> Path | None:
        """The local directory whose file events are this store's changes, or ``None``. Optional."""
        return None

    def locate(self, path: str) -> tuple[Space, str] | None:
        """The entry a changed file under :meth:`watched_directory` is, or ``None``. Optional."""
        return None

    def subscribe(self) -> ChangeFeed | None:
        """A feed of the entries that change, or ``None`` if the store announces none. Optional."""
        return None

    def ensure_layout(self) -> None:
        """Make the store ready for an instance's writes (a directory creates its folders).
        Optional: a store whose keys need no containers has nothing to do."""

    def event_log_problems(self) -> list[tuple[str, str]]:
        """``(where, reason)`` for parts of the event log that cannot be read. Optional."""
        return []

    def layout_notice(self) -> str | None:
        """Why this store looks like no fleet's (a directory that holds other things), or
        ``None``. Optional: shown in the dashboard's header so a wrong ``--root`` is plain."""
        return None

    def strays(self, space: Space) -> list[str]:
        """Things in ``space`` that are no entry of it (to report, never to read). Optional."""
        return []

    def sweep(self, older_than_ms: int) -> int:
        """Remove leftovers of writers that died mid-write; returns how many. Optional."""
        return 0
