"""Dynamic parallelism per provider:model (seed 002), with pi's constants and formulas.

* on a 429: ``current = max(min, floor(current * (1 - 0.3)))``; on a timeout the
  factor is 0.1, on any other error 0.05;
* recovery, tried every 60 s: when no error in the last 5 minutes and 60 s have
  passed since the last change, ``current = min(base, ceil(current * 1.1))``;
* healthy: no recent error and ``current >= 0.8 * base``;
* recommended backoff: ``max(0, min(60000, 1000 * 2^n) - ms since the last 429)``
  with ``n`` the 429s in the window;
* effective parallelism: ``floor(current * 1/instanceCount)`` once cross-instance
  limits are applied, never below the minimum (a share of zero would stall).

Unlike pi's, the state is persisted per instance (``pi-dash/parallelism/``) so
the dashboard and the other instances can see it, and the clock is injectable
so tests never wait for minutes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .clock import SYSTEM_CLOCK, Clock
from .models import ErrorType, InstanceParallelism, ModelParallelism, RecentError
from .store import PARALLELISM, Store, StoreError

log = logging.getLogger("pi_dash.core.parallelism")

MAX_BACKOFF_MS = 60_000


@dataclass(frozen=True, slots=True)
class AdjusterConfig:
    """seed 002's DynamicAdjusterConfig, with pi's defaults."""

    min_parallelism: int = 1
    base_parallelism: int = 4
    max_parallelism: int = 16
    reduction_on_429: float = 0.3
    reduction_on_timeout: float = 0.1
    reduction_on_error: float = 0.05
    increase_on_recovery: float = 0.1
    recovery_interval_ms: int = 60_000
    error_window_ms: int = 300_000
    max_error_history: int = 100
    max_response_samples: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.min_parallelism <= self.base_parallelism <= self.max_parallelism:
            raise ValueError("need 1 <= min_parallelism <= base_parallelism <= max_parallelism")
        for name in ("reduction_on_429", "reduction_on_timeout", "reduction_on_error", "increase_on_recovery"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class ParallelismConfig:
    base_parallelism: int
    current_parallelism: int
    min_parallelism: int
    max_parallelism: int
    adjustment_reason: str
    last_adjusted_at: int


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    healthy: bool
    active_requests: int
    recent429_count: int
    avg_response_ms: float
    recommended_backoff_ms: int


@dataclass(frozen=True, slots=True)
class ParallelismChange:
    """What a change listener receives."""

    provider: str
    model: str
    old: int
    new: int
    reason: str
    at: int


@dataclass(slots=True)
class _ModelState:
    provider: str
    model: str
    config: ParallelismConfig
    active_requests: int = 0
    recent_errors: deque[RecentError] = field(default_factory=deque)
    response_times: deque[float] = field(default_factory=deque)
    cross_instance_multiplier: float = 1.0
    backoff_until: int | None = None
    own429_total: int = 0  # never pruned: Prometheus' counter


def build_key(provider: str, model: str) -> str:
    """``provider:model``, lower-cased, as pi keys its states."""
    return f"{provider.lower()}:{model.lower()}"


class DynamicParallelismAdjuster:
    """Per provider:model parallelism that shrinks on errors and recovers when quiet."""

    def __init__(
        self,
        config: AdjusterConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        store: Store | None = None,
        instance_id: str | None = None,
        persist_interval_ms: int = 200,
    ) -> None:
        self.config = config or AdjusterConfig()
        self.clock = clock
        self.store = store
        self.instance_id = instance_id
        self.persist_interval_ms = persist_interval_ms
        self._states: dict[str, _ModelState] = {}
        self._lock = threading.RLock()
        self._listeners: list[Callable[[ParallelismChange], None]] = []
        self._recovery_stop = threading.Event()
        self._recovery_thread: threading.Thread | None = None
        self._last_persist_ms = -(10**15)
        self._persist_timer: threading.Timer | None = None
        self.changed = threading.Condition(self._lock)  # notified whenever a slot may have freed
        self._wakers: set[Callable[[], None]] = set()  # the same news, for asyncio waiters

    # ------------------------------------------------------------- state
    def _state(self, provider: str, model: str) -> _ModelState:
        key = build_key(provider, model)
        state = self._states.get(key)
        if state is None:
            c = self.config
            state = _ModelState(
                provider.lower(),
                model.lower(),
                ParallelismConfig(c.base_parallelism, c.base_parallelism, c.min_parallelism, c.max_parallelism, "initial", self.clock.now_ms()),
            )
            self._states[key] = state
        return state

    def _prune(self, state: _ModelState, now: int) -> None:
        horizon = now - self.config.error_window_ms
        while state.recent_errors and state.recent_errors[0].timestamp < horizon:
            state.recent_errors.popleft()
        while len(state.recent_errors) > self.config.max_error_history:
            state.recent_errors.popleft()

    def _effective(self, state: _ModelState) -> int:
        scaled = math.floor(state.config.current_parallelism * state.cross_instance_multiplier)
        return max(state.config.min_parallelism, scaled)

    def _set_current(self, state: _ModelState, new: int, reason: str) -> None:
        old = state.config.current_parallelism
        now = self.clock.now_ms()
        state.config = replace(state.config, current_parallelism=new, adjustment_reason=reason, last_adjusted_at=now)
        if new != old:
            change = ParallelismChange(state.provider, state.model, old, new, reason, now)
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:  # a listener's bug must not break the adjuster
                    log.exception("parallelism change listener failed")
        self._wake()
        self._persist(urgent=True)

    def _wake(self) -> None:
        self.changed.notify_all()
        for wake in list(self._wakers):
            wake()

    def add_waker(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) whenever a slot may have freed; returns its remover."""
        self._wakers.add(wake)
        return lambda: self._wakers.discard(wake)

    def try_start(self, provider: str, model: str) -> bool:
        """Start a request if fewer than the effective parallelism are in flight."""
        with self._lock:
            state = self._state(provider, model)
            if state.active_requests >= self._effective(state):
                return False
            state.active_requests += 1
            self._persist()
            return True

    # ------------------------------------------------------------ queries
    def get_parallelism(self, provider: str, model: str) -> int:
        """The parallelism to use now: current, scaled by the cross-instance share."""
        with self._lock:
            return self._effective(self._state(provider, model))

    def get_config(self, provider: str, model: str) -> ParallelismConfig:
        with self._lock:
            return self._state(provider, model).config

    def get_health(self, provider: str, model: str) -> ProviderHealth:
        with self._lock:
            state = self._state(provider, model)
            return self._health(state, self.clock.now_ms())

    def _health(self, state: _ModelState, now: int) -> ProviderHealth:
        self._prune(state, now)
        errors_429 = [e.timestamp for e in state.recent_errors if e.type == "429"]
        backoff = 0
        if errors_429:
            since_last = now - max(errors_429)
            backoff = max(0, min(MAX_BACKOFF_MS, 1000 * 2 ** len(errors_429)) - since_last)
        times = state.response_times
        return ProviderHealth(
            healthy=not state.recent_errors
            and state.config.current_parallelism >= 0.8 * state.config.base_parallelism,
            active_requests=state.active_requests,
            recent429_count=len(errors_429),
            avg_response_ms=sum(times) / len(times) if times else 0.0,
            recommended_backoff_ms=int(backoff),
        )

    def mean_response_ms(self) -> float | None:
        """Mean of every successful request's response time this adjuster keeps, all models
        together (what an instance publishes as its ``avgLatencyMs``); ``None`` before the first."""
        with self._lock:
            samples = [t for state in self._states.values() for t in state.response_times]
        return round(sum(samples) / len(samples), 1) if samples else None

    def get_all_states(self) -> dict[str, tuple[ParallelismConfig, ProviderHealth]]:
        with self._lock:
            now = self.clock.now_ms()
            return {key: (s.config, self._health(s, now)) for key, s in self._states.items()}

    # ------------------------------------------------------------ changes
    def adjust_for_error(
        self, provider: str, model: str, error_type: ErrorType, *, at: int | None = None, seen_by: str | None = None
    ) -> None:
        """Shrink after an error; ``seen_by`` marks one another instance reported."""
        factor = {
            "429": self.config.reduction_on_429,
            "timeout": self.config.reduction_on_timeout,
            "error": self.config.reduction_on_error,
        }[error_type]
        with self._lock:
            state = self._state(provider, model)
            now = self.clock.now_ms()
            state.recent_errors.append(RecentError(type=error_type, timestamp=now if at is None else at, instance_id=seen_by))
            if error_type == "429" and seen_by is None:
                state.own429_total += 1
            self._prune(state, now)
            current = state.config.current_parallelism
            reduced = max(state.config.min_parallelism, math.floor(current * (1 - factor)))
            origin = f" (reported by {seen_by})" if seen_by else ""
            change = f"{current} -> {reduced}" if reduced != current else f"held at {current}, its minimum"
            self._set_current(state, reduced, f"{error_type} error{origin}: {change}")

    def attempt_recovery(self, provider: str, model: str) -> bool:
        """Grow back towards base if quiet long enough; ``True`` if it grew."""
        with self._lock:
            return self._recover(self._state(provider, model), self.clock.now_ms())

    def _recover(self, state: _ModelState, now: int) -> bool:
        self._prune(state, now)
        cfg = state.config
        if cfg.current_parallelism >= cfg.base_parallelism or state.recent_errors:
            return False
        if now - cfg.last_adjusted_at < self.config.recovery_interval_ms:
            return False
        grown = min(cfg.base_parallelism, math.ceil(cfg.current_parallelism * (1 + self.config.increase_on_recovery)))
        self._set_current(state, grown, f"recovery: {cfg.current_parallelism} -> {grown}")
        return True

    def process_automatic_recovery(self) -> None:
        """One round of the recovery timer over every provider:model."""
        with self._lock:
            now = self.clock.now_ms()
            for state in list(self._states.values()):
                self._recover(state, now)

    def apply_cross_instance_limits(self, provider: str, model: str, instance_count: int) -> None:
        """Share this model's parallelism with the other instances using it."""
        with self._lock:
            state = self._state(provider, model)
            multiplier = 1 / max(1, instance_count)
            if multiplier != state.cross_instance_multiplier:
                state.cross_instance_multiplier = multiplier
                self._wake()
                self._persist(urgent=True)

    def set_backoff_until(self, provider: str, model: str, until: int | None) -> None:
        """Record the fleet's shared 429 deadline for this model (shown by the dashboard)."""
        with self._lock:
            state = self._state(provider, model)
            if state.backoff_until != until:
                state.backoff_until = until
                self._persist(urgent=True)

    def record_success(self, provider: str, model: str, response_ms: float) -> None:
        with self._lock:
            times = self._state(provider, model).response_times
            times.append(response_ms)
            while len(times) > self.config.max_response_samples:
                times.popleft()
            self._persist()

    def request_started(self, provider: str, model: str) -> None:
        with self._lock:
            self._state(provider, model).active_requests += 1
            self._persist()

    def request_completed(self, provider: str, model: str) -> None:
        with self._lock:
            state = self._state(provider, model)
            state.active_requests = max(0, state.active_requests - 1)
            self._wake()
            self._persist()

    def reset(self, provider: str, model: str) -> None:
        with self._lock:
            self._states.pop(build_key(provider, model), None)
            self._wake()
            self._persist(urgent=True)

    def reset_all(self) -> None:
        with self._lock:
            self._states.clear()
            self._wake()
            self._persist(urgent=True)

    def on_parallelism_change(self, callback: Callable[[ParallelismChange], None]) -> Callable[[], None]:
        """Call ``callback`` on every change; returns the function that unsubscribes it."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    # ------------------------------------------------------ recovery timer
    def start_recovery_timer(self) -> None:
        if self._recovery_thread is not None:
            return
        self._recovery_stop.clear()
        self._recovery_thread = threading.Thread(target=self._recovery_loop, name="pi-dash-recovery", daemon=True)
        self._recovery_thread.start()

    def _recovery_loop(self) -> None:
        while not self._recovery_stop.wait(self.config.recovery_interval_ms / 1000):
            self.process_automatic_recovery()

    def shutdown(self) -> None:
        """Stop the recovery timer and write the final state."""
        self._recovery_stop.set()
        if self._recovery_thread is not None:
            self._recovery_thread.join()
            self._recovery_thread = None
        with self._lock:
            if self._persist_timer is not None:
                self._persist_timer.cancel()
                self._persist_timer = None
            self._write()

    # --------------------------------------------------------- persisting
    def record(self) -> InstanceParallelism | None:
        """The whole state as one persisted record."""
        if self.instance_id is None:
            return None
        with self._lock:
            now = self.clock.now_ms()
            models = {}
            for key, state in self._states.items():
                health = self._health(state, now)
                cfg = state.config
                models[key] = ModelParallelism(
                    provider=state.provider,
                    model=state.model,
                    base_parallelism=cfg.base_parallelism,
                    current_parallelism=cfg.current_parallelism,
                    min_parallelism=cfg.min_parallelism,
                    max_parallelism=cfg.max_parallelism,
                    effective_parallelism=self._effective(state),
                    cross_instance_multiplier=state.cross_instance_multiplier,
                    adjustment_reason=cfg.adjustment_reason,
                    last_adjusted_at=cfg.last_adjusted_at,
                    active_requests=state.active_requests,
                    recent_errors=tuple(state.recent_errors),
                    recent429_count=health.recent429_count,
                    own429_total=state.own429_total,
                    avg_response_ms=round(health.avg_response_ms, 3),
                    healthy=health.healthy,
                    recommended_backoff_ms=health.recommended_backoff_ms,
                    backoff_until=state.backoff_until,
                )
            return InstanceParallelism(instance_id=self.instance_id, updated_at=now, models=models)

    def _persist(self, urgent: bool = False) -> None:
        """Write now if urgent or quiet for a while; otherwise once the interval passes.

        Request counts change on every call; writing each would cost more than
        the call itself, so they are written at most every ``persist_interval_ms``.
        """
        if self.store is None or self.instance_id is None:
            return
        now = self.clock.now_ms()
        if urgent or now - self._last_persist_ms >= self.persist_interval_ms:
            self._write()
        elif self._persist_timer is None:
            delay = (self.persist_interval_ms - (now - self._last_persist_ms)) / 1000
            self._persist_timer = threading.Timer(delay, self._timed_write)
            self._persist_timer.daemon = True
            self._persist_timer.start()

    def _timed_write(self) -> None:
        with self._lock:
            self._persist_timer = None
            self._write()

    def _write(self) -> None:
        record = self.record()
        if record is None or self.store is None:
            return
        self._last_persist_ms = self.clock.now_ms()
        try:
            self.store.write(PARALLELISM, record.instance_id, record.to_json(), durable=False)
        except StoreError as exc:
            log.warning("cannot persist parallelism state: %s", exc)

    def remove_record(self) -> None:
        """Forget the persisted state (on unregister)."""
        if self.store is not None and self.instance_id is not None:
            self.store.delete(PARALLELISM, self.instance_id)

    # ------------------------------------------------------------ summary
    def format_summary(self) -> str:
        states = self.get_all_states()
        if not states:
            return "Dynamic parallelism: no providers in use"
        lines = ["Dynamic parallelism:"]
        for key, (cfg, health) in sorted(states.items()):
            mark = "ok" if health.healthy else "degraded"
            lines.append(
                f"  {key}: {cfg.current_parallelism}/{cfg.base_parallelism} "
                f"(min {cfg.min_parallelism}, max {cfg.max_parallelism}) [{mark}] "
                f"active {health.active_requests}, 429s {health.recent429_count}, "
                f"avg {health.avg_response_ms:.0f} ms, backoff {health.recommended_backoff_ms} ms"
                f" - {cfg.adjustment_reason}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ module API
_singleton: DynamicParallelismAdjuster | None = None
_singleton_lock = threading.Lock()


def get_parallelism_adjuster() -> DynamicParallelismAdjuster:
    """The process-wide adjuster (created on first use)."""
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            _singleton = DynamicParallelismAdjuster()
        return _singleton


def create_parallelism_adjuster(**config: object) -> DynamicParallelismAdjuster:
    """A new adjuster with some settings changed (``create_parallelism_adjuster(base_parallelism=8)``)."""
    return DynamicParallelismAdjuster(AdjusterConfig(**config))  # type: ignore[arg-type]


def reset_parallelism_adjuster() -> None:
    """Drop the process-wide adjuster (for tests)."""
    global _singleton
    with _singleton_lock:
        if _singleton is not None:
            _singleton.shutdown()
        _singleton = None


def get_parallelism(provider: str, model: str) -> int:
    return get_parallelism_adjuster().get_parallelism(provider, model)


def adjust_for_error(provider: str, model: str, error_type: ErrorType) -> None:
    get_parallelism_adjuster().adjust_for_error(provider, model, error_type)


def attempt_recovery(provider: str, model: str) -> bool:
    return get_parallelism_adjuster().attempt_recovery(provider, model)


def format_dynamic_parallelism_summary() -> str:
    return get_parallelism_adjuster().format_summary()
