"""Fixtures shared by every test module."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.store import DirectoryStore

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One redis-server for the session (on CI it must exist: .ci/run installs it)."""
    from tests.redis_server import RedisServer, redis_available

    if not redis_available():
        pytest.skip("redis-server is not installed; .ci/run installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh, empty store of the given backend (a new key prefix per test on Redis)."""
    if backend == "directory":
        root = tmp_path / "runtime"
        root.mkdir(mode=0o700, exist_ok=True)
        return DirectoryStore(root)
    from core.store.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    return RedisStore(server.url, prefix=f"t{os.getpid()}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty coordination directory."""
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def store(root: Path) -> DirectoryStore:
    return DirectoryStore(root)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(autouse=True)
def _no_pi_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never see the developer's own pi settings, nor pi-dash's remembered ones."""
    for var in list(os.environ):
        if var.startswith("PI_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
