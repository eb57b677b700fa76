"""pi's coordination arithmetic, as pure functions of the records.

Both the :class:`~core.coordinator.Coordinator` (deciding for one instance)
and :mod:`core.snapshot` (describing the whole fleet) compute their figures
here, so the dashboard shows exactly what the instances act on, and both match
what pi's TypeScript coordinator computes for the same directory (FORMAT.md,
"Semantics").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction
from collections.abc import Iterable, Sequence
from functools import lru_cache

from .models import BroadcastQueueState, CoordinatorConfig, InstanceInfo, StealableQueueEntry

STEAL_VICTIM_MIN_PENDING = 3  # "another's pending is > 2"


def heartbeat_age_ms(instance: InstanceInfo, now_ms: int) -> int:
    return now_ms - instance.heartbeat_ms


def is_alive(instance: InstanceInfo, now_ms: int, timeout_ms: int) -> bool:
    """pi's only test of life: a heartbeat younger than the timeout."""
    return heartbeat_age_ms(instance, now_ms) < timeout_ms


def alive_instances(instances: Iterable[InstanceInfo], now_ms: int, config: CoordinatorConfig) -> list[InstanceInfo]:
    return [i for i in instances if is_alive(i, now_ms, config.heartbeat_timeout_ms)]


def active_count(alive: Sequence[InstanceInfo]) -> int:
    """Active instances, never less than one (the caller itself)."""
    return max(1, len(alive))


def parallel_limit(total_max_llm: int, active: int) -> int:
    """``max(1, floor(totalMaxLlm / activeCount))``."""
    return max(1, total_max_llm // max(1, active))


def dynamic_parallel_limit(
    total_max_llm: int, my_pending: int, others_pending: Sequence[int], plain_limit: int
) -> int:
    """Share of ``totalMaxLlm`` proportional to ``1/(pending+1)``, clamped to ``[1, totalMaxLlm]``.

    ``others_pending`` are the pending counts of the other alive instances;
    with no pending work anywhere the plain limit applies.
    """
    return fleet_dynamic_limits(total_max_llm, [my_pending, *others_pending], plain_limit)[0]


def fleet_dynamic_limits(total_max_llm: int, pendings: Sequence[int], plain_limit: int) -> list[int]:
    """The dynamic limit of every alive instance at once, in O(distinct pending counts).

    Computed in exact fractions: float sums depend on their order, and at an
    exact half (``Math.round(4.5)``) that decided between two answers, so the
    dashboard and the instance could disagree.
    """
    if not any(p > 0 for p in pendings):
        return [plain_limit] * len(pendings)
    counts = Counter(pendings)
    total_weight = sum(Fraction(n, p + 1) for p, n in counts.items())
    by_pending = {}
    for p in counts:
        exact = total_max_llm * Fraction(1, p + 1) / total_weight
        by_pending[p] = min(total_max_llm, max(1, math.floor(exact + Fraction(1, 2))))
    return [by_pending[p] for p in pendings]


def js_round(value: float) -> int:
    """``Math.round``: halves go up (Python's ``round`` goes to even)."""
    return math.floor(value + 0.5)


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL)


def model_matches(pattern: str, model: str) -> bool:
    """pi's model matching: exact, prefix either way, or a ``*``/``?`` glob; case-insensitive."""
    pattern = pattern.lower()
    model = model.lower()
    if "*" in pattern or "?" in pattern:
        return _glob(pattern).match(model) is not None
    return pattern == model or model.startswith(pattern) or pattern.startswith(model)


def uses_model(instance: InstanceInfo, provider: str, model: str) -> bool:
    provider = provider.lower()
    return any(
        active.provider.lower() == provider and model_matches(model, active.model)
        for active in instance.active_models
    )


def instances_for_model(alive: Iterable[InstanceInfo], provider: str, model: str) -> int:
    return sum(1 for instance in alive if uses_model(instance, provider, model))


def model_parallel_limit(base_limit: int, instances_using: int) -> int:
    """``max(1, floor(baseLimit / instancesUsingModel))``; a model nobody uses yet counts as one user."""
    return max(1, base_limit // max(1, instances_using))


def model_usage(alive: Iterable[InstanceInfo]) -> list[tuple[str, str, int]]:
    """``(provider, model, instanceCount)`` for every model in use, busiest first."""
    counts: dict[tuple[str, str], int] = {}
    for instance in alive:
        for key in instance.model_keys:
            counts[key] = counts.get(key, 0) + 1
    return sorted(((p, m, n) for (p, m), n in counts.items()), key=lambda row: (-row[2], row[0], row[1]))


def fresh_queue_states(
    states: Iterable[BroadcastQueueState], now_ms: int, config: CoordinatorConfig, exclude: str | None = None
) -> list[BroadcastQueueState]:
    """Queue states young enough to act on (two heartbeat intervals), other than ``exclude``'s."""
    return [
        s
        for s in states
        if s.instance_id != exclude and now_ms - s.timestamp_ms <= config.queue_fresh_ms
    ]


def is_expired_queue_state(state: BroadcastQueueState, now_ms: int, config: CoordinatorConfig) -> bool:
    return now_ms - state.timestamp_ms > config.heartbeat_timeout_ms


def steal_victims(states: Iterable[BroadcastQueueState]) -> list[BroadcastQueueState]:
    """Queues busy enough to steal from, busiest first (stable for equal load)."""
    busy = [s for s in states if s.pending_task_count >= STEAL_VICTIM_MIN_PENDING]
    return sorted(busy, key=lambda s: -s.pending_task_count)


def pick_steal_entry(
    victims: Sequence[BroadcastQueueState], skip: frozenset[tuple[str, str]] = frozenset()
) -> tuple[BroadcastQueueState, StealableQueueEntry] | None:
    """pi's choice: each victim offers its first entry; the most urgent offer wins.

    ``skip`` holds ``(ownerInstanceId, entryId)`` pairs already claimed, which
    pi does not have: a claimed entry is passed over for the next one.
    """
    offers = []
    for state in victims:
        for entry in state.stealable_entries:
            if (state.instance_id, entry.id) not in skip:
                offers.append((state, entry))
                break
    if not offers:
        return None
    return min(offers, key=lambda offer: offer[1].priority_rank)


def should_attempt_stealing(my_pending: int, others_pending: Iterable[int]) -> bool:
    """Idle, and somebody else has more than two tasks waiting."""
    return my_pending == 0 and any(p >= STEAL_VICTIM_MIN_PENDING for p in others_pending)
