"""pi-dash's records for dynamic parallelism, shared 429 backoff and rate limits.

pi keeps all of this in each process's memory; persisting it is what lets the
other instances and the dashboard see who is backing off and why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ._base import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    Burst,
    Count,
    DurationMs,
    EpochMs,
    EpochMsFraction,
    EpochMsOrNever,
    Factor,
    Record,
    RequestsPerMinute,
)
from .stealing import FORMAT_VERSION

ErrorType = Literal["429", "timeout", "error"]


class RecentError(Record):
    type: ErrorType
    timestamp: EpochMs
    instance_id: str | None = None  # set when the error was seen by another instance


class ModelParallelism(Record):
    """One provider:model of one instance: seed 002's ParallelismConfig and ProviderHealth."""

    provider: str
    model: str
    base_parallelism: Count
    current_parallelism: Count
    min_parallelism: Count
    max_parallelism: Count
    effective_parallelism: Count
    cross_instance_multiplier: Factor = 1
    adjustment_reason: str = "initial"
    last_adjusted_at: EpochMsOrNever = 0
    active_requests: Count = 0
    recent_errors: tuple[RecentError, ...] = ()
    recent429_count: Count = 0
    # 429s this instance itself received for the model since it started: a counter (it
    # restarts with the instance), where recent429_count is a 5-minute window.
    own429_total: Count = 0
    avg_response_ms: DurationMs = 0
    healthy: bool = True
    recommended_backoff_ms: DurationMs = 0
    backoff_until: EpochMs | None = None  # the fleet's shared deadline, when one is in force


class InstanceParallelism(Record):
    """Everything one instance's adjuster knows (``pi-dash/parallelism/{instanceId}.json``)."""

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    instance_id: str
    updated_at: EpochMs
    models: dict[str, ModelParallelism] = Field(default_factory=dict)


class Backoff429(Record):
    at: EpochMs
    instance_id: str
    retry_after_ms: DurationMs | None = None


class SharedBackoff(Record):
    """The fleet-wide 429 backoff of one provider:model (``pi-dash/backoff/{provider:model}.json``).

    Every instance using the model waits until ``until`` before starting a
    request; ``recent429s`` lets each one apply the reductions the others saw.
    """

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    provider: str
    model: str
    until: EpochMsOrNever = 0
    # to_camel would spell it "recent429S"
    recent429s: tuple[Backoff429, ...] = Field(default=(), alias="recent429s")

    def wait_ms(self, now_ms: int) -> int:
        return max(0, self.until - now_ms)


# A provider's buckets: the pool everyone shares, and one per instance with reserved
# capacity (``reserved:{instance name}``), which only that instance books.
POOL = "pool"
RESERVED_PREFIX = "reserved:"

GRANT_SLOT_S = 5  # usage is counted per 5-second slot: 12 numbers a minute to keep, not 60


class GcraBucket(Record):
    """A generic cell rate algorithm bucket: the theoretical arrival time, in epoch ms."""

    tat: EpochMsFraction = 0


def _grant_slot(key: str) -> str:
    """A key of ``grantsPerSecond``: the epoch second starting a slot, in decimal digits."""
    if not (key.isascii() and key.isdigit() and MIN_EPOCH_MS // 1000 <= int(key) < MAX_EPOCH_MS // 1000):
        raise ValueError(f"{key[:40]!r} is not an epoch second in the years 2000-2199")
    return key


GrantSlot = Annotated[str, AfterValidator(_grant_slot)]


class ProviderRateState(Record):
    """The shared rate limiter and adaptive controller of one provider
    (``pi-dash/rate-limits/{provider}.json``, updated in place on every request)."""

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    provider: str
    requests_per_minute: RequestsPerMinute  # configured limit
    burst: Burst
    effective_requests_per_minute: RequestsPerMinute  # after adaptive control
    last429_at: EpochMs | None = None
    last_change_at: EpochMs | None = None
    buckets: dict[str, GcraBucket] = Field(default_factory=dict)
    # epoch second starting a GRANT_SLOT_S slot -> grants in that slot, over the last minute
    grants_per_second: dict[GrantSlot, Count] = Field(default_factory=dict)
    total_grants: Count = 0

    def used_last_minute(self, now_ms: int) -> int:
        """Grants in the last minute, to the slot (a few seconds' precision is plenty for a gauge)."""
        horizon = now_ms // 1000 - 60
        return sum(n for second, n in self.grants_per_second.items() if int(second) > horizon)

    def next_slot_ms(self, now_ms: float) -> float:
        """How far ahead the shared pool's next free slot is (0: a request may start now):
        the pool's theoretical arrival time less its burst tolerance."""
        pool = self.buckets.get(POOL)
        if pool is None:
            return 0.0
        tolerance = (self.burst - 1) * 60_000 / max(self.effective_requests_per_minute, 1e-9)
        return max(0.0, pool.tat - tolerance - now_ms)


class FleetEvent(Record):
    """One line of the fleet's event log (``pi-dash/events.jsonl``)."""

    at: EpochMs
    kind: str  # 429 | parallelism | steal | drain | lock-release | rate-limit | ...
    message: str
    instance_id: str | None = None
    provider: str | None = None
    model: str | None = None
