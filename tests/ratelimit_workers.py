"""Worker functions for tests/test_ratelimit_processes.py (real child processes).

They live in an importable module because the "spawn" start method pickles a
child's target by name.  Every worker reports through a queue as
``(tag, worker_name, payload)``; a worker that raises reports
``("error", worker_name, traceback_text)`` so the test fails with the child's
traceback instead of timing out.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tests.child_processes import ERROR, READY, RESULT, report_errors  # noqa: F401 (tests use ph.RESULT...)

PROVIDER = "openai"
MODEL = "gpt-4o"


def wall_ms() -> float:
    return time.time_ns() / 1_000_000


# ----------------------------------------------------------------- test 1
def hammer(root: str, name: str, document: dict[str, Any], period_ms: int, seconds: float, start: Any, out: Any) -> None:
    """``limiter.acquire`` in a loop for ``seconds`` after the start barrier.

    Reports, per grant, the reserved start (``reservation.start_ms``) and the
    wall clock read right after ``acquire`` returned (after its sleep).
    """

    def body() -> dict[str, Any]:
        from core.provider_config import parse_settings
        from core.ratelimit import SharedRateLimiter
        from core.store import DirectoryStore

        limiter = SharedRateLimiter(DirectoryStore(root), parse_settings(document, "test"), period_ms=period_ms)
        out.put((READY, name, os.getpid()))
        start.wait()
        deadline = time.monotonic() + seconds
        grants: list[tuple[float, float, float]] = []
        while time.monotonic() < deadline:
            reservation = limiter.acquire(PROVIDER, MODEL)
            grants.append((reservation.start_ms, wall_ms(), reservation.wait_ms))
        return {"grants": grants}

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 2
def _coordinator(root: str, config: dict[str, int] | None = None) -> Any:
    from core.coordinator import Coordinator
    from core.provider_config import default_settings

    # Explicit settings: a developer's own ~/.pi/config.json must not leak in.
    return Coordinator(root=root, config=config, settings=default_settings())


def reporter_429(root: str, retry_after: float, go: Any, out: Any) -> None:
    """Instance B: once told, make one request and report a 429 with Retry-After."""

    def body() -> dict[str, Any]:
        from core.backoff import BackoffBoard

        coordinator = _coordinator(root)
        me = coordinator.register(heartbeat=False).instance_id
        out.put((READY, "B", me))
        go.wait()
        with coordinator.llm_slot(PROVIDER, MODEL) as slot:
            reported_at = wall_ms()
            slot.report_429(retry_after=retry_after)
        shared = BackoffBoard(coordinator.store, me).current(PROVIDER, MODEL)
        assert shared is not None
        return {
            "instance_id": me,
            "reported_at_ms": reported_at,
            "until": shared.until,
            "own_current": coordinator.adjuster.get_config(PROVIDER, MODEL).current_parallelism,
        }

    report_errors("B", out, body)


def follower_after_429(root: str, name: str, use_async: bool, go: Any, out: Any) -> None:
    """Instance A: one request before the 429, then (once told) the next one; report timings and state."""

    def body() -> dict[str, Any]:
        from core.backoff import BackoffBoard

        coordinator = _coordinator(root)
        me = coordinator.register(heartbeat=False).instance_id
        with coordinator.llm_slot(PROVIDER, MODEL):
            pass
        before = coordinator.adjuster.get_config(PROVIDER, MODEL)
        out.put((READY, name, {"instance_id": me, "current_before": before.current_parallelism}))
        go.wait()
        asked_at = wall_ms()
        if use_async:

            async def one_request() -> float:
                async with coordinator.llm_slot_async(PROVIDER, MODEL):
                    return wall_ms()

            entered_at = asyncio.run(one_request())
        else:
            with coordinator.llm_slot(PROVIDER, MODEL):
                entered_at = wall_ms()
        config = coordinator.adjuster.get_config(PROVIDER, MODEL)
        health = coordinator.adjuster.get_health(PROVIDER, MODEL)
        shared = BackoffBoard(coordinator.store, me).current(PROVIDER, MODEL)
        return {
            "instance_id": me,
            "asked_at_ms": asked_at,
            "entered_at_ms": entered_at,
            "current": config.current_parallelism,
            "reason": config.adjustment_reason,
            "effective": coordinator.adjuster.get_parallelism(PROVIDER, MODEL),
            "recent429": health.recent429_count,
            "healthy": health.healthy,
            "until_seen": None if shared is None else shared.until,
        }

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 3
def doomed_slot_holder(root: str, config: dict[str, int], out: Any) -> None:
    """Register (heartbeating), hold two nested LLM slots, report, then wait to be SIGKILLed."""

    def body() -> None:
        coordinator = _coordinator(root, config)
        me = coordinator.register().instance_id
        with coordinator.llm_slot(PROVIDER, MODEL):
            with coordinator.llm_slot(PROVIDER, MODEL):
                out.put((READY, "doomed", {"instance_id": me, "pid": os.getpid()}))
                time.sleep(120)  # never returns normally: the test kills us

    report_errors("doomed", out, body)


def parallelism_probe(root: str, config: dict[str, int], out: Any) -> None:
    """A newcomer: register, make one request, report the parallelism it was given."""

    def body() -> dict[str, Any]:
        coordinator = _coordinator(root, config)
        me = coordinator.register(heartbeat=False).instance_id
        with coordinator.llm_slot(PROVIDER, MODEL):
            effective = coordinator.adjuster.get_parallelism(PROVIDER, MODEL)
        result = {
            "instance_id": me,
            "effective": effective,
            "current": coordinator.adjuster.get_config(PROVIDER, MODEL).current_parallelism,
            "instances_for_model": coordinator.instances_for_model(PROVIDER, MODEL),
        }
        coordinator.unregister()
        return result

    report_errors("probe", out, body)
