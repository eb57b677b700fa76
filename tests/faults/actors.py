"""One fleet operation in a process of its own, for the fault tests to stop, kill or starve.

``python -m tests.faults.actors '{"action": ..., "root": ..., ...}'`` runs one
action on a :class:`DirectoryStore` and prints one JSON line: ``{"ok": value}``,
or ``{"error": "StoreBusy", "message": ...}`` when the store raised one of its
typed errors.  Anything else (a raw ``OSError``, a bug) escapes with its
traceback and exit status 1, which the tests count as an untyped error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

PROVIDER = "openai"
MODEL = "gpt-4o"
RPM = 6  # one request every 10 s once the burst is spent: a test never earns a new one by waiting
BURST = 10
SETTINGS = {"crossInstance": {"providers": {PROVIDER: {"requestsPerMinute": RPM, "burst": BURST}}}}


def _space(name: str) -> Any:
    from core.store import ALL_SPACES

    return next(space for space in ALL_SPACES if space.name == name)


def _limiter(store: Any) -> Any:
    from core.provider_config import parse_settings
    from core.ratelimit import SharedRateLimiter

    return SharedRateLimiter(store, parse_settings(SETTINGS, "faults"), instance_name="faults")


def stop_self(value: bytes) -> Any:
    """An updater that stops its own process (as Ctrl-Z would) while the store holds its guard."""

    stopped: list[bool] = []

    def updater(_: bytes | None) -> bytes:
        if not stopped:  # once: a store may run an updater again
            stopped.append(True)
            print(json.dumps({"stopping": os.getpid()}), flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return value

    return updater


def run(spec: dict[str, Any]) -> Any:
    from core.backoff import BackoffBoard
    from core.locks import LockService
    from core.store import DirectoryStore

    store = DirectoryStore(spec["root"], **spec.get("store", {}))
    action = spec["action"]
    data = spec.get("data", "{}").encode()
    if action == "stop-in-update":
        return store.update(_space(spec["space"]), spec["key"], stop_self(data)).decode()
    if action == "update":
        return store.update(_space(spec["space"]), spec["key"], lambda _: data).decode()
    if action == "write":
        store.write(_space(spec["space"]), spec["key"], data)
        return True
    if action == "create":
        return store.create(_space(spec["space"]), spec["key"], data)
    if action == "append":
        for line in spec["lines"]:
            store.append_event(line.encode())
        return len(spec["lines"])
    if action == "take-over":
        lock = LockService(store, spec["holder"]).try_acquire(spec["resource"], ttl_ms=spec.get("ttl_ms", 60_000))
        return None if lock is None else lock.holder
    if action == "contend":
        # Try a lock (pi's, or with "task": a task lock) `times` times, `pause_s` apart;
        # report the grants and this process's clock.
        import time

        from core.distributed import LockManager, LockingConfig

        ttl_ms = spec.get("ttl_ms", 60_000)
        if spec.get("task"):
            tasks = LockManager(store, LockingConfig(retry_attempts=0))
            take = lambda: tasks.acquire_lock(spec["resource"], spec["holder"], ttl_seconds=ttl_ms / 1000)  # noqa: E731
        else:
            service = LockService(store, spec["holder"])
            take = lambda: service.try_acquire(spec["resource"], ttl_ms=ttl_ms)  # noqa: E731
        granted = 0
        for attempt in range(spec["times"]):
            if attempt:
                time.sleep(spec.get("pause_s", 0.05))
            if take() is not None:
                granted += 1
        return {"granted": granted, "clock_ms": time.time_ns() // 1_000_000}
    if action == "reserve":
        limiter = _limiter(store)
        granted = 0
        for _ in range(spec["times"]):
            if limiter.reserve(PROVIDER, MODEL, max_wait_ms=spec.get("max_wait_ms")) is not None:
                granted += 1
        return granted
    if action == "rate-429":
        return _limiter(store).report_429(PROVIDER).effective_requests_per_minute
    if action == "backoff-429":
        board = BackoffBoard(store, spec["instance"])
        return board.report_429(PROVIDER, MODEL, spec.get("retry_after_ms")).until
    raise ValueError(f"unknown action {action!r}")


def main() -> None:
    from core.store import StoreError

    spec = json.loads(sys.argv[1])
    try:
        result: dict[str, Any] = {"ok": run(spec)}
    except StoreError as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
