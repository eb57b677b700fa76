"""Child processes for the fault tests (importable: the "spawn" start method pickles targets by name)."""

from __future__ import annotations

import time
from typing import Any

from core.locks import LockService
from tests.backends import StoreSpec, open_store
from tests.child_processes import READY, report_errors


def lock_holder(spec: StoreSpec, resource: str, ttl_ms: int, restart_grace_ms: int, out: Any) -> None:
    """Take a lock, report it, then hold it (believing it is ours) until killed."""

    def body() -> None:
        import core.store.redis_store

        core.store.redis_store.RESTART_GRACE_MS = restart_grace_ms
        lock = LockService(open_store(spec), holder_id="holder").try_acquire(resource, ttl_ms=ttl_ms)
        out.put((READY, "holder", None if lock is None else lock.model_dump()))
        time.sleep(120)

    report_errors("holder", out, body)
