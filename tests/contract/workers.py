"""Worker functions for the contract suite's real processes (importable under spawn)."""

from __future__ import annotations

import os
import time
from typing import Any

from core.coordinator import Coordinator
from core.locks import LockService
from tests.backends import StoreSpec, open_store


def contend(spec: StoreSpec, name: str, seconds: float, start: Any, out: Any) -> None:
    """Take and release one lock for ``seconds``, recording each hold interval."""
    store = open_store(spec)
    service = LockService(store, name)
    holds = []
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lock = service.try_acquire("contended", ttl_ms=10_000)
        if lock is None:
            continue
        began = time.monotonic_ns()
        ended = time.monotonic_ns()
        holds.append((began, ended))
        if not service.release(lock):
            holds.append(("release failed", 0))
    out.put((name, holds))


def thief(spec: StoreSpec, name: str, start: Any, out: Any) -> None:
    """Steal until nothing is left to steal; report the entry ids taken."""
    store = open_store(spec)
    coordinator = Coordinator(store, env={})
    coordinator.register(session_id=name, heartbeat=False)
    start.wait()
    taken: list[str] = []
    misses = 0
    while misses < 20:
        work = coordinator.safe_steal_work()
        if work is None:
            misses += 1
            time.sleep(0.01)
            continue
        misses = 0
        taken.append(work.entry.id)
    out.put((name, taken, os.getpid()))


def contend_through_outages(spec: StoreSpec, name: str, seconds: float, start: Any, out: Any) -> None:
    """Like :func:`contend`, but the server may vanish: count the errors and keep going."""
    from core.store import StoreError

    store = open_store(spec)
    service = LockService(store, name)
    holds, errors = [], 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lock = service.try_acquire("contended", ttl_ms=1_000)
        except StoreError:
            errors += 1
            time.sleep(0.05)
            continue
        if lock is None:
            time.sleep(0.001)
            continue
        began = time.monotonic_ns()
        time.sleep(0.002)
        ended = time.monotonic_ns()
        holds.append((began, ended))
        try:
            service.release(lock)
        except StoreError:
            errors += 1  # it stays taken until its TTL passes: nobody else gets it before
    out.put((name, holds, errors))


def drains_then_resumes(spec: StoreSpec, seconds: float, out: Any, done: Any) -> None:
    """A core instance with its heartbeat thread (which looks for control requests every
    second): report when it starts draining, any work it takes while draining (there must
    be none), and the entry it steals once the drain is cancelled; leave when ``done``."""
    store = open_store(spec)
    coordinator = Coordinator(store, env={})
    coordinator.register(session_id="drained")
    out.put(("registered", coordinator.instance_id))
    was_draining = False
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            work = coordinator.safe_steal_work()
            if coordinator.draining:
                if not was_draining:
                    out.put(("draining", None))
                    was_draining = True
                if work is not None:
                    out.put(("stole while draining", work.entry.id))
            elif work is not None:
                out.put(("stole", work.entry.id) if was_draining else ("stole before draining", work.entry.id))
                done.wait(seconds)
                return
            time.sleep(0.02)
        out.put(("gave up", None))
    finally:
        coordinator.unregister()
