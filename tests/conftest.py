"""Fixtures shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.store import DirectoryStore

FIXTURES = Path(__file__).parent / "fixtures"


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
def _no_pi_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own pi settings."""
    for var in list(os.environ):
        if var.startswith("PI_"):
            monkeypatch.delenv(var, raising=False)
