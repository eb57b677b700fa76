"""Why an instance's LLM work is held back right now, and until when.

One pure function, :func:`instance_waits`, reads the records the fleet already
shares (the instance file, its parallelism record, the shared 429 backoffs, the
providers' rate limiters and the locks) and names every reason, with its
figures and when it ends:

* ``backoff``: the fleet's shared 429 deadline for a provider:model (from a
  Retry-After, or computed as ``min(60 s, 1 s * 2^n)``), and who reported it;
* ``parallelism``: requests in flight have reached the effective parallelism,
  and what lowered it (429s, timeouts, errors, instances sharing the model);
* ``rate-limit``: the provider's shared limiter books its next slot N s ahead (or
  sooner on capacity reserved for the instance);
* ``lock``: another instance holds the lock on this instance's queue;
* ``draining``: an operator asked it to finish and leave, so it starts nothing new.

pi's own instances keep their backoff and parallelism in memory: nothing says
whether they wait, so they are marked as recording nothing rather than shown
as "not waiting".  The same vocabulary (:class:`WaitKind`) tells a caller of
``llm_slot`` what its :class:`~core.slots.SlotTimeout` waited on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .clock import utc_from_ms
from .models import DistributedLock, InstanceInfo, InstanceParallelism, ProviderRateState, SharedBackoff
from .models.parallelism import RESERVED_PREFIX


class WaitKind(str, Enum):
    DRAINING = "draining"
    BACKOFF = "backoff"
    LOCK = "lock"
    RATE_LIMIT = "rate-limit"
    PARALLELISM = "parallelism"


# When two reasons end at the same time, the first here is named first.
_PRECEDENCE = {kind: n for n, kind in enumerate(WaitKind)}


@dataclass(frozen=True, slots=True)
class WaitReason:
    kind: WaitKind
    target: str  # "openai:gpt-4o", "openai" (a limiter), a lock's resource, or "" (draining)
    ends_in_ms: int | None  # None: ends with something else (a request finishing, the drain)
    short: str  # a few characters for a table cell
    text: str  # one clause with every figure, for a person
    figures: Mapping[str, Any] = field(default_factory=dict)  # JSON-ready

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "target": self.target, "endsInMs": self.ends_in_ms, "text": self.text, **self.figures}


@dataclass(frozen=True, slots=True)
class InstanceWaits:
    """Everything holding back one instance; ``records_waits`` is false for pi's own."""

    instance_id: str
    records_waits: bool
    reasons: tuple[WaitReason, ...] = ()

    @property
    def dominant(self) -> WaitReason | None:
        """Draining first (nothing starts at all), then the reason that ends last."""
        if not self.reasons:
            return None
        return min(
            self.reasons,
            key=lambda r: (r.kind is not WaitKind.DRAINING, -(r.ends_in_ms or 0), _PRECEDENCE[r.kind]),
        )

    @property
    def cell(self) -> str:
        """The Wait column: the dominant reason, and how many others there are."""
        top = self.dominant
        if top is None:
            return "" if self.records_waits else "n/a"
        more = len(self.reasons) - 1
        return top.short + (f" +{more}" if more else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "recordsWaits": self.records_waits,
            "waits": [r.to_dict() for r in self.reasons],
        }


def _seconds(ms: float) -> str:
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _brief(ms: float) -> str:
    """A table cell's duration: ``0.4s``, ``42s``, ``3m``."""
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.1f}s"
    return f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.0f}m"


def _clock(epoch_ms: int) -> str:
    return utc_from_ms(epoch_ms).strftime("%H:%M:%S UTC")


def _backoff_reason(backoff: SharedBackoff, now: int) -> WaitReason | None:
    left = backoff.wait_ms(now)
    if left <= 0:
        return None
    last = backoff.recent429s[-1] if backoff.recent429s else None
    retry_after = last.retry_after_ms if last else None
    origin = f"Retry-After {_seconds(retry_after)}" if retry_after is not None else "computed from the recent 429s"
    reporter = last.instance_id if last else None
    key = f"{backoff.provider}:{backoff.model}"
    by = f", reported by {reporter}" if reporter else ""
    return WaitReason(
        WaitKind.BACKOFF,
        key,
        left,
        f"429 {_brief(left)}",
        f"the shared 429 backoff of {key} until {_clock(backoff.until)} ({_seconds(left)} more; {origin}{by})",
        {
            "until": backoff.until,
            "remainingMs": left,
            "retryAfterMs": retry_after,
            "deadlineFrom": "retry-after" if retry_after is not None else "computed",
            "reportedBy": reporter,
            "recent429s": len(backoff.recent429s),
        },
    )


def _parallelism_reason(parallelism: InstanceParallelism) -> list[WaitReason]:
    reasons = []
    for key, state in parallelism.models.items():
        if state.active_requests < state.effective_parallelism:
            continue
        lowered = []
        if state.current_parallelism < state.base_parallelism:
            lowered.append(f"lowered to {state.current_parallelism} of {state.base_parallelism} by {state.adjustment_reason}")
        if state.effective_parallelism < state.current_parallelism:
            lowered.append(f"shared with other instances (x{state.cross_instance_multiplier:.2g})")
        why = "; ".join(lowered) or f"its base is {state.base_parallelism}"
        reasons.append(
            WaitReason(
                WaitKind.PARALLELISM,
                key,
                None,
                f"cap {state.active_requests}/{state.effective_parallelism}",
                f"parallelism of {key} at its cap ({state.active_requests} in flight of "
                f"{state.effective_parallelism} effective; {why}) until a request finishes",
                {
                    "inFlight": state.active_requests,
                    "effective": state.effective_parallelism,
                    "current": state.current_parallelism,
                    "base": state.base_parallelism,
                    "adjustmentReason": state.adjustment_reason,
                    "crossInstanceMultiplier": state.cross_instance_multiplier,
                },
            )
        )
    return reasons


def _rate_reason(state: ProviderRateState, instance_name: str | None, now: int) -> WaitReason | None:
    """The shared pool's next slot; an instance with capacity reserved for it
    (``reserved:{name}``, booked by no one else) takes whichever frees first.  The
    reserved bucket's burst is in the config, not the record, so its slot is taken
    at its theoretical arrival time: never later than the limiter would grant it."""
    ahead = math.ceil(state.next_slot_ms(now))
    reserved = state.buckets.get(f"{RESERVED_PREFIX}{instance_name}") if instance_name else None
    own_ahead = None if reserved is None else max(0, math.ceil(reserved.tat - now))
    if own_ahead is not None:
        ahead = min(ahead, own_ahead)
    if ahead <= 0:
        return None
    used = state.used_last_minute(now)
    effective = state.effective_requests_per_minute
    own = "" if own_ahead is None else f", its reserved capacity's in {_seconds(own_ahead)}"
    return WaitReason(
        WaitKind.RATE_LIMIT,
        state.provider,
        ahead,
        f"rate {_brief(ahead)}",
        f"the {state.provider} rate limiter, whose next slot is in {_seconds(ahead)} "
        f"({used}/{effective:.0f} requests in the last minute, configured {state.requests_per_minute:g}{own})",
        {
            "nextSlotMs": ahead,
            "reservedNextSlotMs": own_ahead,
            "usedLastMinute": used,
            "effectiveRequestsPerMinute": effective,
            "requestsPerMinute": state.requests_per_minute,
        },
    )


def _lock_reason(lock: DistributedLock, instance_id: str, now: int) -> WaitReason:
    left = lock.ttl_left_ms(now)
    expired = lock.is_expired(now)
    ttl = f"held {_seconds(now - lock.expires_at)} past its TTL" if expired else f"{_seconds(left)} of its TTL left"
    return WaitReason(
        WaitKind.LOCK,
        lock.resource,
        left,
        f"lock {_brief(left)}",
        f"the lock {lock.resource} held by {lock.holder} ({ttl}): nobody else takes its queued work meanwhile",
        {"resource": lock.resource, "holder": lock.holder, "ttlLeftMs": left, "ageMs": now - lock.acquired_at, "expired": expired},
    )


def instance_waits(
    info: InstanceInfo,
    parallelism: InstanceParallelism | None,
    backoffs: Mapping[str, SharedBackoff],
    rate_limits: Mapping[str, ProviderRateState],
    locks_on: Iterable[DistributedLock],
    now: int,
) -> InstanceWaits:
    """Every reason ``info``'s work is held back at ``now``.

    ``backoffs`` are keyed ``provider:model`` (lower-cased), ``rate_limits`` by
    provider; ``locks_on`` are the locks whose resource is this instance's
    queue (``steal:{instanceId}``).  Backoff, parallelism, rate limits and
    draining are honoured only by instances that write a parallelism record
    (``core`` ones): for pi's own, only the locks (pi's format) are known.
    """
    reasons: list[WaitReason] = []
    records = parallelism is not None
    if info.draining_since is not None:
        reasons.append(
            WaitReason(
                WaitKind.DRAINING,
                "",
                None,
                "draining",
                f"draining since {_clock(info.draining_since)} ({_seconds(now - info.draining_since)}): "
                "it finishes its work, starts and steals nothing new, then goes offline",
                {"since": info.draining_since},
            )
        )
    if parallelism is not None:
        models = dict.fromkeys([*parallelism.models, *(f"{p}:{m}" for p, m in info.model_keys)])
        for key in models:
            backoff = backoffs.get(key)
            reason = _backoff_reason(backoff, now) if backoff is not None else None
            if reason is not None:
                reasons.append(reason)
        reasons.extend(_parallelism_reason(parallelism))
        for provider in dict.fromkeys(key.partition(":")[0] for key in models):
            state = rate_limits.get(provider)
            reason = _rate_reason(state, info.instance_name, now) if state is not None else None
            if reason is not None:
                reasons.append(reason)
    for lock in locks_on:
        if lock.holder != info.instance_id:
            reasons.append(_lock_reason(lock, info.instance_id, now))
    return InstanceWaits(info.instance_id, records, tuple(reasons))


def explain(
    waits: InstanceWaits, status: str, now: int, *, label: str | None = None, shorten: Callable[[str], str] = str
) -> str:
    """One paragraph a person can read: ``pi-dash why``.

    ``label`` names the instance first (its full id follows once); ``shorten`` turns the other
    instances' ids in the reasons (who reported a 429, who holds a lock) into their labels."""
    who = f"{label} ({waits.instance_id}, {status})" if label and label != waits.instance_id else f"{waits.instance_id} ({status})"
    if not waits.reasons:
        if not waits.records_waits:
            return (
                f"{who} records nothing of why it might wait: it is one of pi's own instances, which keep their "
                "429 backoff, parallelism and rate limits in memory. No lock held by another instance blocks it."
            )
        return f"{who} is not held back: no shared 429 backoff, no parallelism cap reached, no rate-limiter wait, no lock, not draining."
    ordered = [waits.dominant, *(r for r in waits.reasons if r is not waits.dominant)]
    count = "one thing" if len(ordered) == 1 else f"{len(ordered)} things"
    clauses = [shorten(r.text) for r in ordered if r is not None]
    text = f"{who} is held back by {count}: " + "; ".join(clauses) + "."
    ends = [r.ends_in_ms for r in ordered if r is not None and r.ends_in_ms is not None]
    if ends and all(r.ends_in_ms is not None for r in ordered if r is not None):
        text += f" All of it ends by {_clock(now + max(ends))}."
    if not waits.records_waits:
        text += " It is one of pi's own instances: its own backoff and parallelism are not recorded."
    return text
