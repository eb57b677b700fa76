"""A rate limiter shared by every process of the fleet, per provider (and per model), with
adaptive control of the limit.

Algorithm: GCRA, the generic cell rate algorithm, used as a reservation.
Each bucket keeps one number, its theoretical arrival time (TAT).  With an
emission interval ``T = 60 s / limit`` and a tolerance ``tau = (burst - 1) * T``
a request arriving at ``t`` may start at ``max(t, TAT - tau)``, after which
``TAT = max(TAT, start) + T``.  Why GCRA rather than a token bucket or a
sliding window:

* it is exact: in any window of length ``W`` at most ``burst + W / T``
  requests start, so the limit (plus burst) holds over *every* window, not
  just aligned ones;
* its state is a single number per bucket, so a decision is one small atomic
  read-modify-write of one record (``Store.update``: in place under ``flock``
  on a directory, one script on Redis), whatever the request rate;
* it hands out start times: a caller books the next free slot and sleeps until
  it, so callers are served in the order they asked (fair between processes,
  none starved) and the allowed rate is used to the full while anyone waits.

All buckets of a provider live in one record and are decided together, so a
request that must respect both the provider's and a model's limit books both
atomically.  Reserved capacity (``instances.{name}.reservedCapacity``, requests
per minute) is a bucket of its own that only that instance draws from first;
everyone shares the pool of what is left, so the total never exceeds the limit.
Priority (0..10, default 5) bounds how far ahead an instance may book: under
contention low-priority instances are told to come back later while
high-priority ones get the next slots.

Adaptive control: on a 429 the provider's effective limit is multiplied by
``reductionFactor`` (0.9); after ``quietPeriodMs`` without a 429 or a change it
is multiplied by ``recoveryFactor`` (1.05); it stays within
``[minRequestsPerMinute, maxRequestsPerMinute]`` (by default 10 % of the
configured limit and the configured limit).  Every change is appended to the
event log.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from .clock import SYSTEM_CLOCK, Clock
from .events import EventLog
from .models import CorruptRecord, GcraBucket, ProviderRateState
from .provider_config import CrossInstanceSettings, ProviderLimit, default_settings
from .semantics import model_matches
from .store import RATE_LIMITS, Store

PERIOD_MS = 60_000
MAX_RESERVED_SHARE = 0.8  # reservations may take at most this share of a provider's limit
POOL = "pool"


class RateLimitTimeout(TimeoutError):
    """No slot could be had within the caller's timeout."""


@dataclass(frozen=True, slots=True)
class Reservation:
    provider: str
    model: str
    start_ms: float  # epoch ms at which the request may start
    wait_ms: float
    bucket: str  # "pool" or "reserved:{instance}"


@dataclass(frozen=True, slots=True)
class _Bucket:
    name: str
    emission_ms: float
    tolerance_ms: float


class SharedRateLimiter:
    """GCRA buckets per provider, shared through a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        settings: CrossInstanceSettings | None = None,
        *,
        instance_name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        events: EventLog | None = None,
        period_ms: int = PERIOD_MS,
    ) -> None:
        self.store = store
        self.settings = settings or default_settings()
        self.instance_name = instance_name
        self.clock = clock
        self.events = events
        self.period_ms = period_ms
        self.policy = self.settings.policy(instance_name)
        self.horizon_ms = period_ms * self.policy.priority / 10

    # ------------------------------------------------------------ limits
    def _reservations(self, limit: ProviderLimit) -> dict[str, float]:
        """Requests/minute reserved per instance at this provider, scaled to fit."""
        wanted = {name: p.reserved_capacity for name, p in self.settings.instances.items() if p.reserved_capacity > 0}
        total = sum(wanted.values())
        cap = limit.requests_per_minute * MAX_RESERVED_SHARE
        if total > cap:
            wanted = {name: rpm * cap / total for name, rpm in wanted.items()}
        return wanted

    def _buckets(self, limit: ProviderLimit, effective_rpm: float, model: str) -> tuple[list[_Bucket], _Bucket | None]:
        """The buckets a request may be booked on (pool, own reservation) and its model's bucket."""
        scale = effective_rpm / limit.requests_per_minute
        reserved = self._reservations(limit)
        pool_rpm = (limit.requests_per_minute - sum(reserved.values())) * scale
        paths = [self._bucket(POOL, pool_rpm, limit.burst * pool_rpm / effective_rpm)]
        mine = reserved.get(self.instance_name or "")
        if mine:
            paths.append(self._bucket(f"reserved:{self.instance_name}", mine * scale, limit.burst * mine / limit.requests_per_minute))
        model_bucket = None
        for pattern, model_limit in limit.models.items():
            if model_matches(pattern, model):
                burst = model_limit.burst or max(1, round(limit.burst * model_limit.requests_per_minute / limit.requests_per_minute))
                model_bucket = self._bucket(f"model:{pattern.lower()}", model_limit.requests_per_minute * scale, burst)
                break
        return paths, model_bucket

    def _bucket(self, name: str, rpm: float, burst: float) -> _Bucket:
        emission = self.period_ms / max(rpm, 1e-9)
        return _Bucket(name, emission, (max(1, math.floor(burst)) - 1) * emission)

    def _bounds(self, limit: ProviderLimit) -> tuple[float, float]:
        adaptive = self.settings.adaptive
        high = adaptive.max_requests_per_minute or limit.requests_per_minute
        low = adaptive.min_requests_per_minute or max(1.0, limit.requests_per_minute * 0.1)
        return min(low, high), high

    def _fresh_state(self, provider: str, limit: ProviderLimit) -> ProviderRateState:
        low, high = self._bounds(limit)
        return ProviderRateState(
            provider=provider,
            requests_per_minute=limit.requests_per_minute,
            burst=limit.burst,
            effective_requests_per_minute=min(high, max(low, limit.requests_per_minute)),
        )

    def _load(self, raw: bytes | None, provider: str, limit: ProviderLimit) -> ProviderRateState:
        if raw:
            try:
                state = ProviderRateState.from_json(raw)
                if state.requests_per_minute == limit.requests_per_minute and state.burst == limit.burst:
                    return state
                # The configured limit changed: keep the buckets, restart adaptation.
                return state.model_copy(
                    update={
                        "requests_per_minute": limit.requests_per_minute,
                        "burst": limit.burst,
                        "effective_requests_per_minute": self._fresh_state(provider, limit).effective_requests_per_minute,
                    }
                )
            except CorruptRecord:
                pass  # rebuilt below: a limiter must keep working
        return self._fresh_state(provider, limit)

    # ---------------------------------------------------------- deciding
    def reserve(self, provider: str, model: str = "", max_wait_ms: float | None = None) -> Reservation | None:
        """Book the earliest slot for one request.

        ``None`` (nothing booked) when that slot lies beyond this instance's
        priority horizon or ``max_wait_ms``: ask again later.
        """
        provider = provider.lower()
        horizon = self.horizon_ms if max_wait_ms is None else min(self.horizon_ms, max_wait_ms)
        limit = self.settings.limit(provider)
        outcome: list[Reservation | None] = [None]
        recovered: list[float] = []

        def decide(raw: bytes | None) -> bytes | None:
            recovered.clear()
            now = self.clock.now_ms()
            state = self._load(raw, provider, limit)
            effective = self._recover(state, limit, now)
            if effective != state.effective_requests_per_minute:
                recovered[:] = [state.effective_requests_per_minute, effective]
            paths, model_bucket = self._buckets(limit, effective, model)
            tats = {name: b.tat for name, b in state.buckets.items()}
            choice = min(paths, key=lambda b: _allowed_at(b, tats.get(b.name, 0), now))
            start = _allowed_at(choice, tats.get(choice.name, 0), now)
            if model_bucket is not None:
                start = max(start, _allowed_at(model_bucket, tats.get(model_bucket.name, 0), now))
            outcome[0] = None
            if start - now > horizon:
                return None if not recovered else state.model_copy(
                    update={"effective_requests_per_minute": effective, "last_change_at": now}
                ).to_json()
            buckets = dict(state.buckets)
            for bucket in (choice, model_bucket):
                if bucket is not None:
                    buckets[bucket.name] = GcraBucket(tat=max(tats.get(bucket.name, 0), start) + bucket.emission_ms)
            second = str(int(start // 1000))
            oldest_second = int(now // 1000) - 61
            grants = {s: n for s, n in state.grants_per_second.items() if int(s) > oldest_second}
            grants[second] = grants.get(second, 0) + 1
            update = {"buckets": buckets, "grants_per_second": grants, "total_grants": state.total_grants + 1}
            if recovered:
                update |= {"effective_requests_per_minute": effective, "last_change_at": now}
            outcome[0] = Reservation(provider, model, start, start - now, choice.name)
            return state.model_copy(update=update).to_json()

        self.store.update(RATE_LIMITS, provider, decide)
        if recovered and self.events is not None:
            old, new = recovered
            self.events.emit("rate-limit", f"{provider}: limit recovered {old:.0f} -> {new:.0f} req/min", provider=provider)
        return outcome[0]

    def _recover(self, state: ProviderRateState, limit: ProviderLimit, now: int) -> float:
        effective = state.effective_requests_per_minute
        adaptive = self.settings.adaptive
        _, high = self._bounds(limit)
        if not adaptive.enabled or effective >= high:
            return effective
        quiet_since = max(state.last429_at or 0, state.last_change_at or 0)
        if now - quiet_since < adaptive.quiet_period_ms:
            return effective
        return min(high, effective * adaptive.recovery_factor)

    def acquire(self, provider: str, model: str = "", timeout: float | None = None) -> Reservation:
        """Book a slot and sleep until it; raises :class:`RateLimitTimeout` past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reservation = self.reserve(provider, model, _remaining_ms(deadline))
            pause = self._pause(provider, reservation, deadline)
            if pause > 0:  # even sleep(0) costs a trip through the scheduler
                time.sleep(pause)
            if reservation is not None:
                return reservation

    async def acquire_async(self, provider: str, model: str = "", timeout: float | None = None) -> Reservation:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reservation = self.reserve(provider, model, _remaining_ms(deadline))
            pause = self._pause(provider, reservation, deadline)
            if pause > 0:
                await asyncio.sleep(pause)
            if reservation is not None:
                return reservation

    def _pause(self, provider: str, reservation: Reservation | None, deadline: float | None) -> float:
        """Seconds to sleep: until the booked slot, or a while before asking again."""
        if reservation is not None:
            return reservation.wait_ms / 1000
        if deadline is not None and time.monotonic() >= deadline:
            raise RateLimitTimeout(f"no {provider} request slot within the timeout")
        pause = max(0.005, self.horizon_ms / 4000)
        return pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ adapting
    def report_429(self, provider: str) -> ProviderRateState:
        """Lower the provider's effective limit after a 429 (adaptive control)."""
        provider = provider.lower()
        limit = self.settings.limit(provider)
        changed: list[float] = []

        def reduce(raw: bytes | None) -> bytes:
            now = self.clock.now_ms()
            state = self._load(raw, provider, limit)
            update: dict[str, object] = {"last429_at": now}
            if self.settings.adaptive.enabled:
                low, _ = self._bounds(limit)
                old = state.effective_requests_per_minute
                new = max(low, old * self.settings.adaptive.reduction_factor)
                if new != old:
                    update |= {"effective_requests_per_minute": new, "last_change_at": now}
                    changed[:] = [old, new]
            return state.model_copy(update=update).to_json()

        state = ProviderRateState.from_json(self.store.update(RATE_LIMITS, provider, reduce))
        if changed and self.events is not None:
            old, new = changed
            self.events.emit("rate-limit", f"{provider}: 429, limit {old:.0f} -> {new:.0f} req/min", provider=provider)
        return state

    def state(self, provider: str) -> ProviderRateState | None:
        blob = self.store.read(RATE_LIMITS, provider.lower())
        if blob is None:
            return None
        try:
            return ProviderRateState.from_json(blob.data)
        except CorruptRecord:
            return None


def _remaining_ms(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000)


def _allowed_at(bucket: _Bucket, tat: float, now: float) -> float:
    return max(now, tat - bucket.tolerance_ms)
