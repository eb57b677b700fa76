"""Small builders shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

from core.clock import Clock, ManualClock, utc_from_ms
from core.models import StealableQueueEntry
from core.store import ALL_SPACES, DirectoryStore, Store


def stealable_entries(owner: str, clock: Clock, n: int, priority: str = "normal") -> list[StealableQueueEntry]:
    return [
        StealableQueueEntry(
            id=f"task-{i}", tool_name="bash", priority=priority, instance_id=owner, enqueued_at=utc_from_ms(clock.now_ms())
        )
        for i in range(n)
    ]


def write_dated(path: Path, data: bytes, written_ms: int) -> None:
    """Write a file as if it had been written at ``written_ms`` (its mtime says so): a fixture
    whose records say they were written minutes ago must not sit in a file written just now,
    since locks are judged by their file's age as well as by the times they record."""
    path.write_bytes(data)
    os.utime(path, ns=(written_ms * 1_000_000, written_ms * 1_000_000))


def age_entries(store: Store, ms: int) -> None:
    """Make every entry of ``store`` ``ms`` older on the store's own clock: the files'
    mtimes of a directory, the modification-time hashes of a Redis prefix."""
    if isinstance(store, DirectoryStore):
        for folder, _, names in os.walk(store.root):
            for name in names:
                path = os.path.join(folder, name)
                st = os.stat(path, follow_symlinks=False)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - ms * 1_000_000), follow_symlinks=False)
        return
    client = store._client  # type: ignore[attr-defined]
    for space in ALL_SPACES:
        stamps = client.hgetall(store._modified_key(space))  # type: ignore[attr-defined]
        if stamps:
            client.hset(store._modified_key(space), mapping={k: int(v) - ms for k, v in stamps.items()})  # type: ignore[attr-defined]


class AgingClock(ManualClock):
    """A :class:`ManualClock` whose passing time also ages the stores' entries.

    ``advance(ms)`` is time passing: every entry grows ``ms`` older on its store's
    clock too, as it would have, so a lock the injected clock says expired is
    also as old as its lease.  ``set`` is a clock being set, and ages nothing."""

    def __init__(self, *stores: Store, now_ms: int | None = None) -> None:
        super().__init__() if now_ms is None else super().__init__(now_ms)
        self.stores = stores

    def advance(self, ms: int) -> None:
        super().advance(ms)
        for store in self.stores:
            age_entries(store, ms)
