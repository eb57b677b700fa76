"""Fixtures of the distributed-execution tests.

Every test runs against the ``store`` fixture, parametrised over ``BACKENDS``:
a directory, and Redis (the session's throw-away ``redis_server`` from
``tests/conftest.py``, a fresh key prefix per test; skipped where
redis-server is not installed).  Tests that start processes pass
``store_spec`` to the child, which reopens the same store with
:func:`tests.distributed.workers.open_store`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.store import Store, StoreUnavailable
from tests.backends import BACKENDS, StoreSpec, open_store

SPAWN = mp.get_context("spawn")


@pytest.fixture(params=BACKENDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if request.param == "directory":
        root = tmp_path / "runtime"
        root.mkdir(mode=0o700)
        return ("directory", str(root))
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return ("redis", server.url, f"dist-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    raise ValueError(request.param)


@pytest.fixture
def store(store_spec: StoreSpec) -> Store:
    return open_store(store_spec)


class Sleeps(list):
    """A stand-in for ``time.sleep`` that records the delays (and may run a hook per call)."""

    def __init__(self, hook: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.hook = hook

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.hook is not None:
            self.hook(len(self))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


class ProxyStore(Store):
    """Delegates every call to ``inner``; ``before[name]`` runs first (to inject races or failures)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.before: dict[str, Callable[..., None]] = {}

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        hook = self.before.get(name)
        if hook is not None:
            hook(*args, **kwargs)
        return getattr(self.inner, name)(*args, **kwargs)

    def describe(self) -> str:
        return "proxy of " + self.inner.describe()

    def check(self):
        return self._call("check")

    def versions(self, space):
        return self._call("versions", space)

    def keys(self, space):
        return self._call("keys", space)

    def read(self, space, key):
        return self._call("read", space, key)

    def read_all(self, space):
        return self._call("read_all", space)

    def write(self, space, key, data, *, durable=False):
        return self._call("write", space, key, data, durable=durable)

    def create(self, space, key, data):
        return self._call("create", space, key, data)

    def replace_if(self, space, key, expected, data):
        return self._call("replace_if", space, key, expected, data)

    def delete_if(self, space, key, expected):
        return self._call("delete_if", space, key, expected)

    def delete(self, space, key):
        return self._call("delete", space, key)

    def update(self, space, key, updater):
        return self._call("update", space, key, updater)

    def append_event(self, data):
        return self._call("append_event", data)

    def read_events(self, cursor=0, limit=1000):
        return self._call("read_events", cursor, limit)

    def read_config(self):
        return self._call("read_config")

    def fail_everything(self, exc: Exception) -> None:
        def boom(*args: Any, **kwargs: Any) -> None:
            raise exc

        for name in ("check", "versions", "keys", "read", "read_all", "write", "create", "replace_if",
                     "delete_if", "delete", "update"):
            self.before[name] = boom


@pytest.fixture
def proxy(store: Store) -> ProxyStore:
    return ProxyStore(store)


@pytest.fixture
def down(store: Store) -> ProxyStore:
    """A store whose every operation fails as an unreachable server would."""
    failing = ProxyStore(store)
    failing.fail_everything(StoreUnavailable("connection refused (test)"))
    return failing


class Processes:
    """Spawned children, a result queue, and cleanup that never leaves one running."""

    def __init__(self) -> None:
        self.out = SPAWN.Queue()
        self.children: list[Any] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> Any:
        child = SPAWN.Process(target=target, args=(*args, self.out), daemon=True)
        child.start()
        self.children.append(child)
        return child

    def get(self, timeout: float = 60) -> tuple[str, str, Any]:
        try:
            tag, name, payload = self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no news from the child processes") from None
        if tag == "error":
            raise AssertionError(f"child {name} failed:\n{payload}")
        return tag, name, payload

    def close(self) -> None:
        for child in self.children:
            if child.is_alive():
                child.kill()
            child.join(10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.close()
