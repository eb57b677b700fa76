"""How a watcher learns of changes is each backend's to declare (``watched_directory``,
``locate``, ``subscribe``): the dashboard's source follows whatever the store offers, and a
store that offers nothing is polled.  Each case: a heartbeat reaches a delivered snapshot."""

from __future__ import annotations

import threading
import time

from core.coordinator import Coordinator
from core.store import INSTANCES
from pi_dashboard.source import FleetSource
from tests.distributed.conftest import ProxyStore

EXPECTED_WATCH = {"directory": "inotify", "redis": "pub/sub"}


def _pending_seen(source: FleetSource, arrived: threading.Event, instance_id: str, pending: int, timeout: float) -> float:
    """Seconds until a delivered snapshot shows ``pending`` for the instance."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        arrived.wait(0.05)
        arrived.clear()
        state = source.take()
        if state is None or state.snapshot is None:
            continue
        view = next((v for v in state.snapshot.instances if v.instance_id == instance_id), None)
        if view is not None and view.pending == pending:
            return time.monotonic() - start
    raise AssertionError(f"pending {pending} not seen within {timeout} s ({source.watching})")


def _follow(store, watched_by: str) -> None:
    coordinator = Coordinator(store)
    coordinator.register(cwd="/w", heartbeat=False)
    arrived = threading.Event()
    source = FleetSource(store, arrived.set, check_pids=False)
    source.start()
    try:
        _pending_seen(source, arrived, coordinator.instance_id, 0, 5)
        coordinator.update_workload(5)
        took = _pending_seen(source, arrived, coordinator.instance_id, 5, 5)
        assert source.watching == watched_by
    finally:
        source.stop()
        coordinator.unregister()
    if watched_by != "polling":
        assert took < 0.9, f"{took:.2f} s: the change was not announced, it waited for the tick"


def test_the_source_follows_what_the_store_announces(any_store, backend):
    assert (any_store.watched_directory() is not None) == (backend == "directory")
    _follow(any_store, EXPECTED_WATCH[backend])


def test_a_store_that_announces_nothing_is_polled(any_store):
    proxy = ProxyStore(any_store)
    assert proxy.watched_directory() is None and proxy.subscribe() is None
    _follow(proxy, "polling")
    assert proxy.locate("anything") is None
    assert INSTANCES.name  # the proxy reads the same entries as the store it wraps
