"""Every test here runs once per storage backend: the directory and a real Redis server."""

from __future__ import annotations

import pytest

from tests.backends import BACKENDS
from tests.conftest import make_store


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_store(backend: str, request: pytest.FixtureRequest, tmp_path):
    store = make_store(backend, request, tmp_path)
    yield store
    if backend == "redis":
        store.flush_prefix()
