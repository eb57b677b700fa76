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
import functools
import json
import math
import time
from dataclasses import dataclass

from .clock import SYSTEM_CLOCK, Clock
from .events import EventLog
from .models import CorruptRecord, GcraBucket, ProviderRateState
from .models.parallelism import GRANT_SLOT_S, POOL, RESERVED_PREFIX
from .provider_config import CrossInstanceSettings, ProviderLimit, default_settings
from .semantics import model_matches
from .store import RATE_LIMITS, Store

PERIOD_MS = 60_000
# No instance books further ahead than its horizon (a minute) plus one emission
# interval; a bucket booked more than a week ahead was written by something else,
# and waiting for it would stop the provider's requests for good: it is ignored.
MAX_BOOKED_AHEAD_MS = 7 * 86_400_000
MAX_RESERVED_SHARE = 0.8  # reservations may take at most this share of a provider's limit


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
class BucketSpec:
    """One GCRA bucket: its rate as a share of the effective limit, and its burst."""

    name: str
    share: float
    burst: float

    def emission_ms(self, effective_rpm: float, period_ms: float) -> float:
        return period_ms / max(effective_rpm * self.share, 1e-9)

    def tolerance_ms(self, emission_ms: float) -> float:
        return (max(1, math.floor(self.burst)) - 1) * emission_ms


@dataclass(frozen=True, slots=True)
class ReservePlan:
    """What one reservation needs to know, for whichever backend decides it."""

    provider: str
    paths: tuple[BucketSpec, ...]  # the request may be booked on whichever frees first
    model: BucketSpec | None  # and must also fit this one
    period_ms: float
    horizon_ms: float
    requests_per_minute: float  # configured: a change restarts adaptation
    burst: int
    fresh_effective: float
    adaptive: bool
    high: float
    recovery_factor: float
    quiet_ms: int

    def to_json(self) -> bytes:
        """The plan as the Redis script reads it (``RESERVE_RATE`` in
        core/store/redis_store.py): one array, numbers in a fixed order, then each
        bucket as name, share, burst, the model's first (name "" if none)."""
        model = self.model or BucketSpec("", 0, 0)
        values = [
            self.provider, self.period_ms, self.horizon_ms, self.requests_per_minute, self.burst, self.fresh_effective,
            self.adaptive, self.high, self.recovery_factor, self.quiet_ms, GRANT_SLOT_S,
            *(value for spec in (model, *self.paths) for value in (spec.name, spec.share, spec.burst)),
        ]  # fmt: skip
        return json.dumps(values, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RateDecision:
    now_ms: float
    start_ms: float | None  # None: not booked
    bucket: str
    old_effective: float
    new_effective: float

    @property
    def recovered(self) -> bool:
        return self.new_effective != self.old_effective


@functools.lru_cache(maxsize=256)
def _plan_json(plan: ReservePlan) -> bytes:
    return plan.to_json()


def gcra_step(state: ProviderRateState, plan: ReservePlan, now: float) -> tuple[ProviderRateState | None, RateDecision]:
    """One reservation on the provider's state: the algorithm, in Python.

    The Redis backend runs the same step as a Lua script (``RESERVE_RATE`` in
    core/store/redis_store.py); the contract tests hold both to the same answers.
    """
    old = effective = state.effective_requests_per_minute
    if plan.adaptive and effective < plan.high:
        quiet_since = max(state.last429_at or 0, state.last_change_at or 0)
        if now - quiet_since >= plan.quiet_ms:
            effective = min(plan.high, effective * plan.recovery_factor)
    recovered = {"effective_requests_per_minute": effective, "last_change_at": now} if effective != old else {}
    tats = {name: bucket.tat for name, bucket in state.buckets.items() if bucket.tat <= now + MAX_BOOKED_AHEAD_MS}

    def allowed(spec: BucketSpec) -> tuple[float, float]:
        emission = spec.emission_ms(effective, plan.period_ms)
        return max(now, tats.get(spec.name, 0) - spec.tolerance_ms(emission)), emission

    choice = min(plan.paths, key=lambda spec: allowed(spec)[0])
    start, emission = allowed(choice)
    booked = [(choice, emission)]
    if plan.model is not None:
        model_start, model_emission = allowed(plan.model)
        start = max(start, model_start)
        booked.append((plan.model, model_emission))
    if start - now > plan.horizon_ms:
        return (state.model_copy(update=recovered) if recovered else None), RateDecision(now, None, choice.name, old, effective)
    buckets = dict(state.buckets)
    for spec, spec_emission in booked:
        buckets[spec.name] = GcraBucket(tat=math.ceil((max(tats.get(spec.name, 0), start) + spec_emission) * 10) / 10)
    oldest_second = int(now // 1000) - 60 - GRANT_SLOT_S
    grants = {s: n for s, n in state.grants_per_second.items() if int(s) > oldest_second}
    second = str(int(start // 1000) // GRANT_SLOT_S * GRANT_SLOT_S)
    grants[second] = grants.get(second, 0) + 1
    update = {"buckets": buckets, "grants_per_second": grants, "total_grants": state.total_grants + 1, **recovered}
    return state.model_copy(update=update), RateDecision(now, start, choice.name, old, effective)


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
        # provider -> (bytes, state) of our last write: uncontended, the next decision
        # starts from exactly these bytes and need not parse them again.
        self._written: dict[str, tuple[bytes, ProviderRateState]] = {}

    # ------------------------------------------------------------ limits
    def _reservations(self, limit: ProviderLimit) -> dict[str, float]:
        """Requests/minute reserved per instance at this provider, scaled to fit."""
        wanted = {name: p.reserved_capacity for name, p in self.settings.instances.items() if p.reserved_capacity > 0}
        total = sum(wanted.values())
        cap = limit.requests_per_minute * MAX_RESERVED_SHARE
        if total > cap:
            wanted = {name: rpm * cap / total for name, rpm in wanted.items()}
        return wanted

    @functools.lru_cache(maxsize=256)  # settings never change under a limiter  # noqa: B019
    def plan(self, provider: str, model: str, horizon_ms: float) -> ReservePlan:
        """Everything one decision needs, whichever backend takes it.

        Bucket rates are shares of the provider's *effective* limit, because
        adaptive control may change that limit inside the same atomic step.
        """
        limit = self.settings.limit(provider)
        rpm = limit.requests_per_minute
        reserved = self._reservations(limit)
        pool_share = (rpm - sum(reserved.values())) / rpm
        paths = [BucketSpec(POOL, pool_share, limit.burst * pool_share)]
        mine = reserved.get(self.instance_name or "")
        if mine:
            paths.append(BucketSpec(f"{RESERVED_PREFIX}{self.instance_name}", mine / rpm, limit.burst * mine / rpm))
        model_bucket = None
        for pattern, model_limit in limit.models.items():
            if model_matches(pattern, model):
                share = model_limit.requests_per_minute / rpm
                model_bucket = BucketSpec(f"model:{pattern.lower()}", share, model_limit.burst or max(1, round(limit.burst * share)))
                break
        low, high = self._bounds(limit)
        adaptive = self.settings.adaptive
        return ReservePlan(
            provider=provider,
            paths=tuple(paths),
            model=model_bucket,
            period_ms=self.period_ms,
            horizon_ms=horizon_ms,
            requests_per_minute=rpm,
            burst=limit.burst,
            fresh_effective=min(high, max(low, rpm)),
            adaptive=adaptive.enabled,
            high=high,
            recovery_factor=adaptive.recovery_factor,
            quiet_ms=adaptive.quiet_period_ms,
        )

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
        if raw and raw == self._written.get(provider, (None,))[0]:
            return self._written[provider][1]  # what we wrote last: already validated
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
        priority horizon or ``max_wait_ms``: ask again later.  A backend with a
        native GCRA step (Redis: one Lua script) takes the decision itself;
        otherwise it is :func:`gcra_step` inside an atomic ``update``.
        """
        provider = provider.lower()
        horizon = self.horizon_ms if max_wait_ms is None else min(self.horizon_ms, max_wait_ms)
        plan = self.plan(provider, model, horizon)
        native = getattr(self.store, "reserve_rate", None)
        if native is not None:
            decision = RateDecision(*native(RATE_LIMITS, provider, _plan_json(plan), self.clock.now_ms()))
        else:
            decision = self._decide_here(provider, plan)
        if decision.recovered and self.events is not None:
            self.events.emit(
                "rate-limit",
                f"{provider}: limit recovered {decision.old_effective:.0f} -> {decision.new_effective:.0f} req/min",
                provider=provider,
            )
        if decision.start_ms is None:
            return None
        return Reservation(provider, model, decision.start_ms, decision.start_ms - decision.now_ms, decision.bucket)

    def _decide_here(self, provider: str, plan: ReservePlan) -> RateDecision:
        result: list[RateDecision] = []
        limit = self.settings.limit(provider)

        def step(raw: bytes | None) -> bytes | None:
            now = self.clock.now_ms()
            state = self._load(raw, provider, limit)
            new_state, decision = gcra_step(state, plan, now)
            result[:] = [decision]
            return None if new_state is None else self._dump(provider, new_state)

        self.store.update(RATE_LIMITS, provider, step)
        return result[0]

    def _dump(self, provider: str, state: ProviderRateState) -> bytes:
        raw = state.to_json()
        self._written[provider] = (raw, state)
        return raw

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
