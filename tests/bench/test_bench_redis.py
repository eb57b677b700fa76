"""Benchmark: the Redis backend beside redis-py's own Lock and ``limits`` on the same server.

Run with ``pytest tests/bench -m bench -s -k redis``.  One redis-server (append-only
file, fsync every second: Redis's usual durable setting) serves every row, so the
figures differ only by client.  Each row runs ~2 s per process after a start barrier.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from typing import Any

import pytest
import redis

from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.bench, pytest.mark.skipif(not redis_available(), reason="needs redis-server")]
CTX = multiprocessing.get_context("spawn")
SECONDS = 2.0


def _lock_ops(kind: str, url: str, prefix: str) -> Any:
    """A function doing one acquire+release; ``False`` when the lock was busy."""
    if kind == "core":
        from core.locks import LockService
        from core.store.redis_store import RedisStore

        service = LockService(RedisStore(url, prefix=prefix), uuid.uuid4().hex[:8])

        def once() -> bool:
            lock = service.try_acquire("bench", ttl_ms=30_000)
            return lock is not None and service.release(lock)

        return once
    client = redis.Redis.from_url(url)

    def once_redis_py() -> bool:
        lock = client.lock(f"{prefix}:bench", timeout=30)
        if not lock.acquire(blocking=False):
            return False
        lock.release()
        return True

    return once_redis_py


def _decision(kind: str, url: str, prefix: str) -> Any:
    """A function making one rate-limit decision on a limit that never binds."""
    if kind == "core":
        from core.provider_config import parse_settings
        from core.ratelimit import SharedRateLimiter
        from core.store.redis_store import RedisStore

        settings = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 1e9, "burst": 10**9}}}}, "b")
        limiter = SharedRateLimiter(RedisStore(url, prefix=prefix), settings)
        return lambda: limiter.reserve("openai", "gpt-4o") is not None
    import limits
    import limits.storage
    import limits.strategies

    storage = limits.storage.RedisStorage(url)
    strategy = {
        "limits-moving-window": limits.strategies.MovingWindowRateLimiter,
        "limits-fixed-window": limits.strategies.FixedWindowRateLimiter,
    }[kind](storage)
    item = limits.parse("1000000000/minute")
    return lambda: strategy.hit(item, prefix)


def _worker(make: Any, kind: str, url: str, prefix: str, barrier: Any, out: Any) -> None:
    once = make(kind, url, prefix)
    for _ in range(50):
        once()  # warm: connections, scripts loaded
    barrier.wait()
    done = 0
    deadline = time.perf_counter() + SECONDS
    while time.perf_counter() < deadline:
        done += bool(once())
    out.put(done)


def _rate(make: Any, kind: str, url: str, processes: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    barrier, out = CTX.Barrier(processes), CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(make, kind, url, prefix, barrier, out)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    total = sum(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
    return total / SECONDS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("bench-redis"))
    server.start()
    redis.Redis(port=server.port).config_set("appendfsync", "everysec")
    yield server
    server.stop()


def _table(title: str, rows: list[tuple[str, int, float, str]]) -> None:
    print(f"\n{title}")
    print(f"{'implementation':<34}{'procs':>6}{'ops/s':>12}{'core/peer':>11}")
    for name, procs, rate, ratio in rows:
        print(f"{name:<34}{procs:>6}{rate:>12,.0f}{ratio:>11}")


def test_lock_throughput_beside_redis_py_lock(server) -> None:
    rows, ratios = [], []
    for processes in (1, 4):
        core = statistics.median(_rate(_lock_ops, "core", server.url, processes) for _ in range(2))
        peer = statistics.median(_rate(_lock_ops, "redis-py", server.url, processes) for _ in range(2))
        ratios.append(core / peer)
        rows += [
            ("core LockService on RedisStore", processes, core, ""),
            ("redis-py Lock (SET NX PX + Lua)", processes, peer, f"{core / peer:.2f}x"),
        ]
    _table("Redis: successful lock acquire+release per second", rows)
    assert all(ratio >= 0.9 for ratio in ratios), f"slower than redis-py's Lock: {ratios}"


def test_rate_limit_decisions_beside_limits(server) -> None:
    rows, ratios = [], []
    for processes in (1, 4):
        core = statistics.median(_rate(_decision, "core", server.url, processes) for _ in range(2))
        rows.append(("core GCRA (one Lua script)", processes, core, ""))
        for peer_name in ("limits-moving-window", "limits-fixed-window"):
            peer = statistics.median(_rate(_decision, peer_name, server.url, processes) for _ in range(2))
            ratios.append((peer_name, processes, core / peer))
            rows.append((peer_name, processes, peer, f"{core / peer:.2f}x"))
    _table("Redis: rate-limit decisions per second (limit never binds)", rows)
    slower = [r for r in ratios if r[2] < 0.9]
    assert not slower, f"slower than limits: {slower}"
