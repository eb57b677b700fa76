"""Typed access to a store: blobs in, validated records out, problems reported.

:class:`RecordCache` keeps the parsed records of one space and, on refresh,
re-reads only the entries whose version changed (or only the keys a file
watcher named), which is what makes rebuilding a snapshot of a large fleet
cheap.  A blob that fails to parse is re-read once at once, because pi rewrites
its files in place and a reader can catch one half-written; if it is still bad
it is reported as corrupt, and the last good record for that key is kept
alongside so the fleet view does not flicker.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, NamedTuple, TypeVar

from ..models import FORMAT_VERSION, CorruptRecord, Record
from .base import Blob, EntryUnreadable, Space, Store, StoreError, Version

R = TypeVar("R", bound=Record)

# However still a space's listing token stays, every entry is looked at this often:
# a foreign program rewriting a file of pi-dash's in place is seen within that.
LISTING_TRUSTED_S = 10.0


class Loaded(NamedTuple, Generic[R]):
    """One entry of a space as last read: its record, or why there is none.

    A tuple rather than a dataclass: a cold read of a big fleet makes thousands.
    """

    key: str
    record: R | None
    raw: bytes | None
    version: Version
    modified_ms: int
    problem: str | None = None
    last_good: R | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a bulk load allocates.

    Records hold no reference cycles, so the collector finds nothing in them,
    but it runs every 700 allocations and its full passes walk every record
    kept so far: a cold read of 10,000 instances spent a third of its time
    there.  Reference counting still frees everything as usual.  Whoever
    paused it turns it back on, so nested and concurrent pauses are harmless.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_blob(model: type[R], blob: Blob) -> R:
    """Validate one blob as ``model``; raises :class:`CorruptRecord`."""
    if not blob.data.strip():
        raise CorruptRecord("empty file")
    return model.from_json(blob.data)


def read_record(store: Store, space: Space, key: str, model: type[R]) -> tuple[R, Blob] | None:
    """Read and validate one record; ``None`` when absent.

    Raises :class:`CorruptRecord` or :class:`EntryUnreadable` when it cannot be used.
    """
    blob = store.read(space, key)
    if blob is None:
        return None
    return parse_blob(model, blob), blob


def _version_problem(record: Record) -> str | None:
    if not record.VERSIONED:
        return None  # one of pi's own records: they carry no version
    version = record.format_version  # type: ignore[attr-defined]
    if version > FORMAT_VERSION:
        return f"format version {version} is newer than this pi-dash understands ({FORMAT_VERSION})"
    return None


class RecordCache(Generic[R]):
    """The parsed contents of one space, refreshed incrementally."""

    def __init__(self, store: Store, space: Space, model: type[R]) -> None:
        self.store = store
        self.space = space
        self.model = model
        self.entries: dict[str, Loaded[R]] = {}
        self.problems: dict[str, Loaded[R]] = {}  # the entries with a problem, kept as they change
        self.generation = 0
        self._listing: tuple[Version, float] | None = None  # the store's listing token, and when it was taken

    def refresh(self, changed: Iterable[str] | None = None) -> bool:
        """Bring the cache up to date; returns whether anything changed.

        With ``changed`` (keys a watcher reported) only those keys are looked
        at; without it every version is compared.
        """
        if changed is None:
            dirty = self._scan()
        else:
            dirty = False
            for key in changed:
                dirty |= self._load(key, None)
        if dirty:
            self.generation += 1
        return dirty

    def _scan(self) -> bool:
        token = self.store.listing_token(self.space)
        now = time.monotonic()
        if token is not None and self._listing is not None:
            known, since = self._listing
            if token == known and now - since < LISTING_TRUSTED_S:
                return False  # nothing added, removed or replaced since the last listing
        dirty = self._rescan()
        # Kept only once the listing it vouches for is in: a failed one is tried again.
        self._listing = None if token is None else (token, now)
        return dirty

    def _rescan(self) -> bool:
        if not self.entries:
            # Nothing cached yet: every entry must be read anyway, and reads
            # return versions, so one bulk read replaces listing + stat + read.
            return self._load_all()
        current = self.store.versions(self.space)
        dirty = False
        for key in self.entries.keys() - current.keys():
            self._forget(key)
            dirty = True
        for key, version in current.items():
            known = self.entries.get(key)
            if known is None or known.version != version:
                dirty |= self._load(key, version)
        return dirty

    def _load_all(self) -> bool:
        with cyclic_gc_paused():
            return self._parse_all()

    def _parse_all(self) -> bool:
        for key, blob in self.store.read_all(self.space).items():
            if isinstance(blob, EntryUnreadable):
                self._keep(Loaded(key, None, None, ("unreadable", blob.reason), 0, blob.reason))
                continue
            try:
                record = parse_blob(self.model, blob)
            except CorruptRecord:
                self._load(key, None)  # the careful path: look again before calling it corrupt
                continue
            self._keep(Loaded(key, record, blob.data, blob.version, blob.modified_ms, _version_problem(record)))
        return bool(self.entries)

    def _keep(self, loaded: Loaded[R]) -> None:
        self.entries[loaded.key] = loaded
        if loaded.problem is None:
            self.problems.pop(loaded.key, None)
        else:
            self.problems[loaded.key] = loaded

    def _forget(self, key: str) -> bool:
        self.problems.pop(key, None)
        return self.entries.pop(key, None) is not None

    def _load(self, key: str, version: Version | None) -> bool:
        previous = self.entries.get(key)
        loaded = self._read(key, version, previous)
        if loaded is None:
            return self._forget(key)
        if previous is not None and previous.version == loaded.version and previous.raw == loaded.raw:
            return False
        self._keep(loaded)
        return True

    def _read(self, key: str, version: Version | None, previous: Loaded[R] | None) -> Loaded[R] | None:
        last_good = (previous.record or previous.last_good) if previous else None
        for attempt in range(2):
            try:
                blob = self.store.read(self.space, key)
            except EntryUnreadable as exc:
                token = version if version is not None else ("unreadable", exc.reason)
                return Loaded(key, None, None, token, 0, exc.reason, last_good)
            except StoreError as exc:  # a name no key can stand for, and the like
                token = version if version is not None else ("unreadable", str(exc))
                return Loaded(key, None, None, token, 0, str(exc), last_good)
            if blob is None:
                return None
            try:
                record = parse_blob(self.model, blob)
            except CorruptRecord as exc:
                if attempt == 0:
                    continue  # maybe caught mid-write by an in-place writer: look again
                return Loaded(key, None, blob.data, blob.version, blob.modified_ms, exc.reason, last_good)
            return Loaded(key, record, blob.data, blob.version, blob.modified_ms, _version_problem(record))
        raise AssertionError("unreachable")

    def records(self) -> list[R]:
        return [entry.record for entry in self.entries.values() if entry.record is not None]
