"""The storage backends every contract test runs against, and how a child process reopens one.

A store crosses into a spawned process as a *spec*: ``("directory", root)`` or
``("redis", url, prefix)``.
"""

from __future__ import annotations

from core.store import DirectoryStore, Store

BACKENDS = ("directory", "redis")
StoreSpec = tuple[str, ...]


def open_store(spec: StoreSpec, read_only: bool = False) -> Store:
    kind, *where = spec
    if kind == "directory":
        return DirectoryStore(where[0], read_only=read_only)
    if kind == "redis":
        from core.store.redis_store import RedisStore

        url, prefix = where
        return RedisStore(url, prefix=prefix, read_only=read_only)
    raise ValueError(f"unknown store backend {kind!r}")


def spec_of(store: Store) -> StoreSpec:
    if isinstance(store, DirectoryStore):
        return ("directory", str(store.root))
    return ("redis", store.url, store.prefix)  # type: ignore[attr-defined]
