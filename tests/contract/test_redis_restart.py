"""Redis killed and restarted under a running fleet: clear errors, reconnection, no lock
granted twice, work resumes; the dashboard says the backend is unreachable."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis

from core.store import StoreUnavailable
from core.store.redis_store import RedisStore
from pi_dashboard.source import FleetSource
from tests.redis_server import RedisServer, redis_available

from . import workers

CTX = multiprocessing.get_context("spawn")

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed; .ci/run installs it")


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_no_lock_is_granted_twice_across_a_restart(server):
    spec = ("redis", server.url, "restart")  # a StoreSpec
    start, out = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=workers.contend_through_outages, args=(spec, f"w{n}", 6.0, start, out)) for n in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    # Spawned children take seconds to start on a loaded machine: kill the
    # server only once they have been taking the lock for a while.
    watcher = redis.Redis(port=server.port)
    deadline = time.monotonic() + 60
    while watcher.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) < 400:
        assert time.monotonic() < deadline, "the workers never took the lock"
        time.sleep(0.05)
    killed_at = time.monotonic_ns()
    server.kill()
    time.sleep(1.0)
    server.start()  # same port, same append-only file
    restarted_at = time.monotonic_ns()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    holds = sorted(h for _, hs, _ in results for h in hs)
    overlaps = [(a, b) for a, b in zip(holds, holds[1:]) if b[0] < a[1]]
    assert overlaps == [], "two holders at once"
    assert sum(errors for _, _, errors in results) > 0, "nobody noticed the outage"
    assert any(began < killed_at for began, _ in holds), "no work before the outage"
    assert sum(1 for began, _ in holds if began > restarted_at) > 20, "work did not resume"


def test_an_unreachable_server_is_a_clear_error(server):
    store = RedisStore(server.url, prefix="gone")
    store.check()
    server.kill()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.check()
    server.start()
    store.check()  # reconnects by itself


def test_the_dashboard_source_reports_the_outage_and_recovers(server):
    store = RedisStore(server.url, prefix="dash")
    source = FleetSource(store, lambda: None)
    assert source.build_now().snapshot is not None
    server.kill()
    state = source.build_now()
    assert state.snapshot is None and "unreachable" in state.error and "Traceback" not in state.error
    server.start()
    assert source.build_now().error is None
