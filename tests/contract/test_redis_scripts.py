"""The Redis store's own script connections: reloaded scripts, threads, forks."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis

from core.store import LOCKS, StoreError
from tests.conftest import make_store


@pytest.fixture
def store(request, tmp_path):
    store = make_store("redis", request, tmp_path)
    yield store
    store.flush_prefix()


def test_scripts_are_loaded_again_when_the_server_forgot_them(store, redis_server):
    assert store.create(LOCKS, "a", b"1")
    redis.Redis(port=redis_server.port).script_flush()
    assert store.delete_if(LOCKS, "a", b"1") and store.create(LOCKS, "a", b"2")


def _churn(store, name: str, rounds: int = 300) -> list[str]:
    """Take and give back one lock ``rounds`` times: the failed rounds."""
    failures = []
    for n in range(rounds):
        data = f"{name}-{n}".encode()
        if not (store.create(LOCKS, name, data) and store.delete_if(LOCKS, name, data)):
            failures.append(f"{name} {n}")
    return failures


def test_threads_never_share_a_connection(store):
    failures: list[str] = []
    threads = [threading.Thread(target=lambda n=n: failures.extend(_churn(store, f"t{n}"))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and store.keys(LOCKS) == []


def _churn_in_child(store, out) -> None:
    out.put(_churn(store, "child"))


def test_a_forked_child_never_uses_the_parents_connection(store):
    assert _churn(store, "parent", 1) == []  # leaves an idle connection behind
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_churn_in_child, args=(store, out))
    child.start()
    assert _churn(store, "parent") == [] and out.get(timeout=30) == []
    child.join(10)
    assert store.keys(LOCKS) == []


def test_an_error_reply_is_a_store_error_and_the_next_call_works(store, redis_server):
    redis.Redis(port=redis_server.port).set(f"{store.prefix}:v:{LOCKS.name}", b"not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.create(LOCKS, "a", b"1")
    redis.Redis(port=redis_server.port).delete(f"{store.prefix}:v:{LOCKS.name}")
    assert store.create(LOCKS, "b", b"1")  # ("a" was set: Redis never undoes half a script)
