"""``llm_slot``: the one helper an agent wraps around each LLM request.

    with coordinator.llm_slot("openai", "gpt-4o") as slot:
        response = client.chat(...)
        if response.status == 429:
            slot.report_429(retry_after=12)

Entering waits, in order, for the fleet's shared 429 deadline for that model,
a parallelism slot (in flight < this instance's effective parallelism), and a
token from the provider's shared rate limiter.  Leaving records latency and
success, or the error (a ``TimeoutError`` counts as a timeout); the slot is
always given back, whether the body returns, raises or is cancelled.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from .backoff import MAX_RETRY_AFTER_MS, BackoffBoard
from .clock import SYSTEM_CLOCK, Clock, utc_from_ms
from .events import EventLog
from .parallelism import DynamicParallelismAdjuster, ParallelismChange, build_key
from .ratelimit import RateLimitTimeout, SharedRateLimiter
from .waits import WaitKind

INSTANCE_COUNT_TTL_S = 1.0
_NOT_ERRORS = (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit, SystemExit)


class SlotTimeout(TimeoutError):
    """No slot could be had within the timeout given to ``llm_slot``.

    ``waited_on`` says which gate it was still waiting at (a :class:`WaitKind`:
    the shared 429 backoff, the parallelism cap or the rate limiter), and the
    message gives that gate's figures.
    """

    def __init__(self, message: str, waited_on: WaitKind) -> None:
        super().__init__(message)
        self.waited_on = waited_on


@dataclass(slots=True)
class LlmSlot:
    """What the body of ``llm_slot`` holds: report what the provider answered."""

    provider: str
    model: str
    waited_ms: float
    _gate: SlotGate
    _started: float = field(default_factory=time.monotonic)
    outcome: str | None = None  # "429" | "timeout" | "error" | "success"

    def report_429(self, retry_after: float | None = None) -> None:
        """The provider said 429: the whole fleet backs off this model (``retry_after`` in seconds)."""
        if self.outcome is None:
            self.outcome = "429"
            self._gate.handle_429(self.provider, self.model, retry_after)

    def report_timeout(self) -> None:
        if self.outcome is None:
            self.outcome = "timeout"
            self._gate.adjuster.adjust_for_error(self.provider, self.model, "timeout")

    def report_error(self) -> None:
        if self.outcome is None:
            self.outcome = "error"
            self._gate.adjuster.adjust_for_error(self.provider, self.model, "error")

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self._started) * 1000


class SlotGate:
    """Joins the adjuster, the shared backoff and the shared rate limiter for one instance."""

    def __init__(
        self,
        adjuster: DynamicParallelismAdjuster,
        limiter: SharedRateLimiter,
        board: BackoffBoard,
        events: EventLog,
        *,
        instance_count: Callable[[str, str], int],
        on_model_used: Callable[[str, str], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.adjuster = adjuster
        self.limiter = limiter
        self.board = board
        self.events = events
        self.clock = clock
        self._instance_count = instance_count
        self._on_model_used = on_model_used
        self._counted: dict[str, tuple[float, int]] = {}
        self._applied_429: dict[str, int] = {}
        adjuster.on_parallelism_change(self._log_change)

    def _log_change(self, change: ParallelismChange) -> None:
        self.events.emit(
            "parallelism",
            f"{change.provider}/{change.model}: parallelism after {change.reason}",
            provider=change.provider,
            model=change.model,
        )

    # --------------------------------------------------------------- 429
    def handle_429(self, provider: str, model: str, retry_after: float | None) -> None:
        if retry_after is not None and not 0 <= retry_after < math.inf:
            retry_after = None  # NaN, negative or infinite: the provider said nothing usable
        retry_ms = None if retry_after is None else int(min(retry_after * 1000, MAX_RETRY_AFTER_MS))
        shared = self.board.report_429(provider, model, retry_ms)
        key = build_key(provider, model)
        self._applied_429[key] = max(self._applied_429.get(key, 0), shared.recent429s[-1].at)
        self.adjuster.adjust_for_error(provider, model, "429")
        self.adjuster.set_backoff_until(provider, model, shared.until)
        self.limiter.report_429(provider)
        until = utc_from_ms(shared.until).strftime("%H:%M:%S")
        after = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
        self.events.emit("429", f"{provider}/{model}: 429{after}; fleet backs off until {until} UTC", provider=provider, model=model)

    def _sync_shared_backoff(self, provider: str, model: str) -> float:
        """Apply the 429s other instances saw; returns seconds left to wait."""
        shared = self.board.current(provider, model)
        if shared is None:
            return 0.0
        key = build_key(provider, model)
        seen = self._applied_429.get(key, 0)
        me = self.board.instance_id
        for event in shared.recent429s:
            if event.at > seen and event.instance_id != me:
                self.adjuster.adjust_for_error(provider, model, "429", at=event.at, seen_by=event.instance_id)
        if shared.recent429s:
            self._applied_429[key] = max(seen, shared.recent429s[-1].at)
        wait_ms = shared.wait_ms(self.clock.now_ms())
        self.adjuster.set_backoff_until(provider, model, shared.until if wait_ms else None)
        return wait_ms / 1000

    # -------------------------------------------------------- entering
    def _prepare(self, provider: str, model: str) -> None:
        self._on_model_used(provider, model)
        key = build_key(provider, model)
        now = time.monotonic()
        cached = self._counted.get(key)
        if cached is None or now - cached[0] > INSTANCE_COUNT_TTL_S:
            count = max(1, self._instance_count(provider, model))
            self._counted[key] = (now, count)
            self.adjuster.apply_cross_instance_limits(provider, model, count)

    def _remaining(self, deadline: float | None, gate: WaitKind, provider: str, model: str) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout(gate, provider, model)
        return left

    def _timeout(self, gate: WaitKind, provider: str, model: str, detail: str = "") -> SlotTimeout:
        """The timeout, naming the gate it was held at and that gate's figures."""
        key = build_key(provider, model)
        if gate is WaitKind.BACKOFF:
            shared = self.board.current(provider, model)
            left = shared.wait_ms(self.clock.now_ms()) if shared else 0
            detail = f"the fleet's 429 backoff of {key} has {left / 1000:.1f} s left"
        elif gate is WaitKind.PARALLELISM:
            health = self.adjuster.get_health(provider, model)
            effective = self.adjuster.get_parallelism(provider, model)
            detail = f"{health.active_requests} of {effective} requests of {key} in flight"
        return SlotTimeout(f"no LLM slot for {key} within the timeout: waited on {gate.value}" + (f" ({detail})" if detail else ""), gate)

    def _enter(self, provider: str, model: str, timeout: float | None) -> float:
        deadline = None if timeout is None else time.monotonic() + timeout
        began = time.monotonic()
        self._prepare(provider, model)
        while (wait := self._sync_shared_backoff(provider, model)) > 0:
            left = self._remaining(deadline, WaitKind.BACKOFF, provider, model)
            time.sleep(wait if left is None else min(wait, left))
        with self.adjuster.changed:
            while not self.adjuster.try_start(provider, model):
                self.adjuster.changed.wait(self._remaining(deadline, WaitKind.PARALLELISM, provider, model))
        with self._slot_back_on_failure(provider, model):
            self.limiter.acquire(provider, model, self._remaining(deadline, WaitKind.RATE_LIMIT, provider, model))
        return (time.monotonic() - began) * 1000

    async def _enter_async(self, provider: str, model: str, timeout: float | None) -> float:
        deadline = None if timeout is None else time.monotonic() + timeout
        began = time.monotonic()
        self._prepare(provider, model)
        while (wait := self._sync_shared_backoff(provider, model)) > 0:
            left = self._remaining(deadline, WaitKind.BACKOFF, provider, model)
            await asyncio.sleep(wait if left is None else min(wait, left))
        loop = asyncio.get_running_loop()
        while not self.adjuster.try_start(provider, model):
            freed = loop.create_future()

            def wake(future: asyncio.Future[None] = freed) -> None:
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

            remove = self.adjuster.add_waker(wake)
            try:
                if self.adjuster.try_start(provider, model):
                    break
                await asyncio.wait_for(freed, self._remaining(deadline, WaitKind.PARALLELISM, provider, model))
            except SlotTimeout:
                raise
            except TimeoutError:
                raise self._timeout(WaitKind.PARALLELISM, provider, model) from None
            finally:
                remove()
        with self._slot_back_on_failure(provider, model):
            await self.limiter.acquire_async(provider, model, self._remaining(deadline, WaitKind.RATE_LIMIT, provider, model))
        return (time.monotonic() - began) * 1000

    @contextmanager
    def _slot_back_on_failure(self, provider: str, model: str) -> Iterator[None]:
        """Waiting for a rate token holds a parallelism slot: give it back if the wait fails."""
        try:
            yield
        except SlotTimeout:
            self.adjuster.request_completed(provider, model)
            raise
        except RateLimitTimeout as exc:
            self.adjuster.request_completed(provider, model)
            raise self._timeout(WaitKind.RATE_LIMIT, provider, model, str(exc)) from None
        except BaseException:
            self.adjuster.request_completed(provider, model)
            raise

    # --------------------------------------------------------- leaving
    def _leave(self, slot: LlmSlot, error: BaseException | None) -> None:
        try:
            if slot.outcome is None:
                if error is None:
                    slot.outcome = "success"
                    self.adjuster.record_success(slot.provider, slot.model, slot.elapsed_ms)
                elif not isinstance(error, _NOT_ERRORS):
                    if isinstance(error, TimeoutError):
                        slot.report_timeout()
                    else:
                        slot.report_error()
        finally:
            self.adjuster.request_completed(slot.provider, slot.model)

    @contextmanager
    def slot(self, provider: str, model: str, timeout: float | None = None) -> Iterator[LlmSlot]:
        waited = self._enter(provider, model, timeout)
        slot = LlmSlot(provider.lower(), model.lower(), waited, self)
        try:
            yield slot
        except BaseException as exc:
            self._leave(slot, exc)
            raise
        self._leave(slot, None)

    @asynccontextmanager
    async def slot_async(self, provider: str, model: str, timeout: float | None = None) -> AsyncIterator[LlmSlot]:
        waited = await self._enter_async(provider, model, timeout)
        slot = LlmSlot(provider.lower(), model.lower(), waited, self)
        try:
            yield slot
        except BaseException as exc:
            self._leave(slot, exc)
            raise
        self._leave(slot, None)
