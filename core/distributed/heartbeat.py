"""Liveness (seed 003's ``HeartbeatMonitor``): a worker heartbeats; silent workers lose their locks.

``start(worker_id)`` runs a daemon thread that heartbeats every
``interval_ms`` and, unless ``check_stale=False``, also checks the fleet for
workers silent for more than ``stale_threshold_ms``: those are marked offline
and the locks they hold are removed, so their tasks can be taken again at once
instead of when each lock's TTL runs out.  A worker that dies is therefore
recovered within ``stale_threshold_ms + interval_ms`` of its last heartbeat,
as long as one monitor runs anywhere in the fleet.  Several monitors may
check at once: marking is an atomic update, so each stale worker is reported
(and its locks recovered) by one of them.

A worker marked stale that was only paused comes back with its next
heartbeat, but without its locks: its releases fail (``NOT_FOUND`` /
``INVALID_OWNER``) and its fencing tokens are refused, which is the point.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from .errors import DistributedError
from .locks import LockManager
from .models import HeartbeatConfig, WorkerInfo
from .registry import WorkerRegistry

log = logging.getLogger("pi_dash.core.distributed.heartbeat")


class HeartbeatMonitor:
    """Heartbeats for one worker, and recovery of the fleet's silent ones."""

    def __init__(
        self,
        registry: WorkerRegistry,
        lock_manager: LockManager,
        interval_ms: int = 30_000,
        stale_threshold_ms: int = 120_000,
        clock: Clock = SYSTEM_CLOCK,
        *,
        check_stale: bool = True,
    ) -> None:
        self.config = HeartbeatConfig(interval_ms=interval_ms, stale_threshold_ms=stale_threshold_ms)
        self.registry = registry
        self.lock_manager = lock_manager
        self.clock = clock
        self.check_stale = check_stale
        self._worker_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()

    @property
    def interval_ms(self) -> int:
        return self.config.interval_ms

    @property
    def stale_threshold_ms(self) -> int:
        return self.config.stale_threshold_ms

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, worker_id: str) -> None:
        """Heartbeat now (raising :class:`WorkerError` if ``worker_id`` is not registered), then
        every ``interval_ms`` on a daemon thread.  Starting again for the same worker does nothing."""
        with self._state:
            if self.running:
                if worker_id == self._worker_id:
                    return
                raise RuntimeError(f"already monitoring {self._worker_id!r}; stop() first")
            self.send_heartbeat(worker_id)
            self._worker_id = worker_id
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(worker_id, self._stop), name=f"pi-dash-worker-heartbeat-{worker_id}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop heartbeating (the worker stays registered: deregister it separately)."""
        with self._state:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._worker_id = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _loop(self, worker_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.config.interval_ms / 1000):
            try:
                self.send_heartbeat(worker_id)
            except Exception:  # noqa: BLE001 - the heartbeat thread must outlive any one bad round
                log.exception("heartbeat of worker %r failed", worker_id)
            if self.check_stale and not stop.is_set():
                try:
                    self.check_stale_workers()
                except Exception:  # noqa: BLE001
                    log.exception("stale-worker check failed")

    def send_heartbeat(self, worker_id: str, metadata: Mapping[str, Any] | None = None) -> WorkerInfo:
        """Record a heartbeat now; ``metadata`` (health data) is merged into the worker's metadata."""
        return self.registry.heartbeat(worker_id, metadata)

    def check_stale_workers(self) -> list[str]:
        """Mark offline the workers silent for more than ``stale_threshold_ms`` and recover their
        locks; returns the ids this call marked."""
        stale = self.registry.mark_stale(self.config.stale_threshold_ms)
        for worker_id in stale:
            try:
                recovered = self.recover_stale_locks(worker_id)
            except DistributedError as exc:
                log.warning("could not recover the locks of stale worker %r: %s", worker_id, exc)
                continue
            log.info("worker %r is stale: marked offline, %d lock(s) recovered", worker_id, recovered)
        return stale

    def recover_stale_locks(self, worker_id: str) -> int:
        """Remove every lock ``worker_id`` holds; returns how many."""
        return self.lock_manager.release_worker_locks(worker_id)
