"""``llm_slot``: waits, records and always gives the slot back (in one process; see
test_ratelimit_processes.py for the cross-process behaviour)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from core.backoff import BackoffBoard
from core.coordinator import Coordinator
from core.provider_config import parse_settings
from core.slots import SlotTimeout

UNBOUND = parse_settings(
    {"crossInstance": {"providers": {"openai": {"requestsPerMinute": 6_000_000, "burst": 100_000}}}}, "test"
)


@pytest.fixture
def coordinator(root):
    c = Coordinator(root=root, settings=UNBOUND)
    c.register(heartbeat=False)
    yield c
    c.unregister()


def _peers_using_the_model(root, n: int) -> list[Coordinator]:
    """Other registered instances on openai/gpt-4o, which shrink this instance's share."""
    peers = [Coordinator(root=root, settings=UNBOUND) for _ in range(n)]
    for peer in peers:
        peer.register(heartbeat=False)
        peer.set_active_model("openai", "gpt-4o")
    return peers


def _active(c: Coordinator) -> int:
    return c.adjuster.get_health("openai", "gpt-4o").active_requests


def test_success_records_latency_and_registers_the_model(coordinator):
    with coordinator.llm_slot("OpenAI", "GPT-4o") as slot:
        assert _active(coordinator) == 1
        time.sleep(0.02)
    assert slot.outcome == "success" and _active(coordinator) == 0
    assert coordinator.adjuster.get_health("openai", "gpt-4o").avg_response_ms >= 20
    assert [(m.provider, m.model) for m in coordinator.info.active_models] == [("openai", "gpt-4o")]


@pytest.mark.parametrize(("error", "outcome", "current"), [(RuntimeError, "error", 3), (TimeoutError, "timeout", 3)])
def test_an_exception_is_recorded_and_the_slot_given_back(coordinator, error, outcome, current):
    with pytest.raises(error):
        with coordinator.llm_slot("openai", "gpt-4o") as slot:
            raise error("boom")
    assert slot.outcome == outcome and _active(coordinator) == 0
    assert coordinator.adjuster.get_config("openai", "gpt-4o").current_parallelism == current


def test_cancellation_gives_the_slot_back_without_counting_an_error(coordinator):
    async def body() -> None:
        async with coordinator.llm_slot_async("openai", "gpt-4o"):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(body())
        await asyncio.sleep(0.05)
        assert _active(coordinator) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _active(coordinator) == 0
    assert coordinator.adjuster.get_health("openai", "gpt-4o").healthy


def test_at_most_the_effective_parallelism_runs_at_once(root, coordinator):
    _peers_using_the_model(root, 1)  # two instances share 4: 2 each
    running, peak, lock = [0], [0], threading.Lock()

    def call() -> None:
        with coordinator.llm_slot("openai", "gpt-4o"):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2 and _active(coordinator) == 0


def test_waiting_past_the_timeout_raises_and_leaks_nothing(root, coordinator):
    _peers_using_the_model(root, 3)  # four instances share 4: 1 each
    with coordinator.llm_slot("openai", "gpt-4o"):
        with pytest.raises(SlotTimeout):
            with coordinator.llm_slot("openai", "gpt-4o", timeout=0.1):
                pass
        assert _active(coordinator) == 1
    assert _active(coordinator) == 0


def test_async_slots_wait_for_each_other(root, coordinator):
    _peers_using_the_model(root, 3)
    order = []

    async def call(name: str) -> None:
        async with coordinator.llm_slot_async("openai", "gpt-4o"):
            order.append(f"{name}+")
            await asyncio.sleep(0.03)
            order.append(f"{name}-")

    async def main() -> None:
        await asyncio.gather(call("a"), call("b"))

    asyncio.run(main())
    assert order == ["a+", "a-", "b+", "b-"]


def test_a_429_makes_the_fleet_wait_and_is_logged(root, coordinator):
    other = Coordinator(root=root, settings=UNBOUND)
    other.register(heartbeat=False)
    with coordinator.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=0.4)
    shared = BackoffBoard(coordinator.store, "reader").current("openai", "gpt-4o")
    assert shared is not None and shared.recent429s[-1].instance_id == coordinator.instance_id
    started = time.time() * 1000
    with other.llm_slot("openai", "gpt-4o") as waited:
        assert time.time() * 1000 >= shared.until
    assert waited.waited_ms >= 300 and started < shared.until
    config = other.adjuster.get_config("openai", "gpt-4o")
    assert config.current_parallelism == 2 and coordinator.instance_id in config.adjustment_reason
    events, _, _ = coordinator.events.read()
    assert {"429", "parallelism", "rate-limit"} <= {e.kind for e in events}
    other.unregister()


def test_without_retry_after_the_backoff_grows_exponentially(root, coordinator):
    board = BackoffBoard(coordinator.store, "x", coordinator.clock)
    first = board.report_429("anthropic", "claude")
    second = board.report_429("anthropic", "claude")
    now = coordinator.clock.now_ms()
    assert 1_900 <= first.until - now <= 2_000  # 1 s * 2^1
    assert 3_900 <= second.until - now <= 4_000  # 1 s * 2^2


def test_the_heartbeat_publishes_the_latency_llm_slot_measured(coordinator, root):
    """The dashboard's Lat column needs no call of the agent's own: the heartbeat carries it."""
    from core.snapshot import SnapshotBuilder
    from core.store import DirectoryStore

    assert coordinator.info.avg_latency_ms is None
    for pause in (0.02, 0.04):
        with coordinator.llm_slot("openai", "gpt-4o"):
            time.sleep(pause)
    with pytest.raises(RuntimeError):
        with coordinator.llm_slot("openai", "gpt-4o"):
            raise RuntimeError("failures are not latencies")
    coordinator.heartbeat()
    view = SnapshotBuilder(DirectoryStore(root), check_pids=False).build().instance(coordinator.instance_id)
    assert view is not None and 30 <= view.info.avg_latency_ms < 1000
    assert coordinator.broadcast_queue_state(0).avg_latency_ms == view.info.avg_latency_ms


@pytest.mark.parametrize("retry_after", [1e300, float("inf"), float("nan"), -5.0])
def test_a_wild_retry_after_never_breaks_the_slot(coordinator, retry_after):
    """A header like ``Retry-After: 1e300`` is a provider's bug: the 429 is still shared,
    with the wait bounded to a day (or pi's exponential backoff when the value means nothing)."""
    with coordinator.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=retry_after)
    shared = coordinator._gate.board.current("openai", "gpt-4o")
    assert shared is not None and 0 < shared.until - coordinator.clock.now_ms() <= 86_400_000


def test_a_deadline_no_instance_could_set_does_not_stop_the_model(coordinator, root):
    """A shared backoff until the year 2150 (in range, but further than any Retry-After an
    instance honours) would stop the model for good: it is ignored, and the next 429 replaces it."""
    from core.store import BACKOFF, DirectoryStore

    now = coordinator.clock.now_ms()
    hostile = {"formatVersion": 1, "provider": "openai", "model": "gpt-4o", "until": 5_700_000_000_000, "recent429s": []}
    DirectoryStore(root).write(BACKOFF, "openai:gpt-4o", json.dumps(hostile).encode())
    started = time.monotonic()
    with coordinator.llm_slot("openai", "gpt-4o", timeout=5) as slot:
        slot.report_429(retry_after=2)
    assert time.monotonic() - started < 4
    assert coordinator._gate.board.current("openai", "gpt-4o").until - now <= 3_000
