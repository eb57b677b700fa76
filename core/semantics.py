"""pi's coordination arithmetic, as pure functions of the records and ``now``.

The :class:`~core.coordinator.Coordinator` (deciding for one instance),
:mod:`core.snapshot` (describing the whole fleet, hence ``pi-dash status``, the
dashboard and the demo) compute every figure pi also computes here and nowhere
else, so each is computed once, the way pi's own TypeScript code computes it on
the same directory (FORMAT.md, "Measured on pi's own code"; checked on the
captures in ``../shared/pi-fixtures``).

Where ``core`` deliberately differs (it reads ``*``/``?`` in a model name as
globs, pi's code as regular-expression operators), both rules live here side
by side, named for whose rule they are.

Orders matter: pi lists a directory with node's ``readdirSync``, which returns
names sorted byte-wise, and sorts with JavaScript's stable sort, so ties keep
that order.  Functions taking records of several instances expect them in that
order (:func:`directory_order`).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from functools import lru_cache
from typing import TypeVar

from .models import BroadcastQueueState, CoordinatorConfig, InstanceInfo, StealableQueueEntry, to_epoch_ms
from .models.config import DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS

STEAL_VICTIM_MIN_PENDING = 3  # "another's pending is > 2"
IDLE_MAX_ORCHESTRATIONS = 1  # a remote queue is idle with no pending and fewer than 2 active orchestrations
DEFAULT_STEAL_CANDIDATES = 3  # getWorkStealingCandidates(topN = 3)
# pi judges queue states by its *default* heartbeat settings, whatever coordinator.json says.
QUEUE_FRESH_MS = 2 * DEFAULT_HEARTBEAT_INTERVAL_MS
QUEUE_EXPIRY_MS = DEFAULT_HEARTBEAT_TIMEOUT_MS

T = TypeVar("T")


def directory_order(items: Iterable[T], file_name: Callable[[T], str]) -> list[T]:
    """``items`` in the order pi's ``readdirSync`` lists their files (byte-wise by name)."""
    return sorted(items, key=lambda item: file_name(item).encode("utf-8", "surrogateescape"))


# ------------------------------------------------------------------ instances
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


def is_idle_instance(instance: InstanceInfo) -> bool:
    """pi's ``isIdle``: nothing pending and no model in use."""
    return instance.pending == 0 and not instance.active_models


def should_attempt_stealing(my_pending: int, others_pending: Iterable[int]) -> bool:
    """Idle, and somebody else has more than two tasks waiting."""
    return my_pending == 0 and any(p >= STEAL_VICTIM_MIN_PENDING for p in others_pending)


def work_stealing_candidates(others: Sequence[InstanceInfo], top_n: int | None = DEFAULT_STEAL_CANDIDATES) -> list[str]:
    """pi's ``getWorkStealingCandidates``: other alive instances with anything pending,
    most first (ties in directory order); ``top_n=None`` for all of them."""
    ranked = sorted((i for i in others if i.pending > 0), key=lambda i: -i.pending)
    return [i.instance_id for i in ranked[:top_n]]


def find_steal_candidate(others: Sequence[InstanceInfo]) -> InstanceInfo | None:
    """pi's ``findStealCandidate``: the other alive instance with the most pending
    beyond two; the first in directory order among equals."""
    busy = [i for i in others if i.pending >= STEAL_VICTIM_MIN_PENDING]
    return min(busy, key=lambda i: -i.pending) if busy else None


# --------------------------------------------------------------------- models
@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL)


def model_matches(pattern: str, model: str) -> bool:
    """``core``'s model matching: exact, prefix either way, or a ``*``/``?`` glob; case-insensitive."""
    pattern = pattern.lower()
    model = model.lower()
    if "*" in pattern or "?" in pattern:
        return _glob(pattern).match(model) is not None
    return pattern == model or model.startswith(pattern) or pattern.startswith(model)


def has_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


class PiPatternError(ValueError):
    """pi's code builds an invalid regular expression from this model name and throws."""


# pi escapes these before building its pattern; "*" and "?" are not among them.
_PI_ESCAPED = frozenset(".+^${}()|[]\\")
# JavaScript's "." (never produced here) aside, the pattern's only operators are
# "*" and "?"; ``\Z``: JavaScript's "$" does not match before a final newline.


@lru_cache(maxsize=4096)
def _pi_regex(pattern: str) -> re.Pattern[str] | None:
    """pi's ``matchesModelPattern`` regex: ``*`` and ``?`` stay regex operators
    (pi escapes them away by mistake before it looks for ``\\*``), so ``gpt-4*`` is
    ``gpt-`` then any number of ``4``.  ``None`` if JavaScript rejects it (a
    quantifier with nothing to repeat: Python rejects exactly the same ones)."""
    body = "".join(c if c in "*?" else re.escape(c) for c in pattern)
    try:
        return re.compile(f"^{body}\\Z", re.IGNORECASE)
    except re.error:
        return None


def pi_model_matches(query: str, model: str) -> bool:
    """pi's test of one stored model name against a lower-cased query.

    Raises :class:`PiPatternError` where pi's code throws."""
    if query == model or model.startswith(query) or query.startswith(model):
        return True
    regex = _pi_regex(query)
    if regex is None:
        raise PiPatternError(f"pi's code throws on the model pattern {query!r} (an invalid regular expression)")
    return regex.match(model) is not None


def pi_instances_for_model(alive: Iterable[InstanceInfo], provider: str, model: str) -> int:
    """pi's ``getActiveInstancesForModel``: alive instances with a model of that
    provider matching (:func:`pi_model_matches`), at least 1."""
    provider, model = provider.lower(), model.lower()
    count = 0
    for instance in alive:
        if any(m.provider == provider and pi_model_matches(model, m.model) for m in instance.active_models):
            count += 1
    return max(1, count)


def uses_model(instance: InstanceInfo, provider: str, model: str) -> bool:
    """``core``'s test: does ``instance`` use a model matching ``model`` (:func:`model_matches`)?"""
    provider = provider.lower()
    return any(
        active.provider.lower() == provider and model_matches(model, active.model)
        for active in instance.active_models
    )


def instances_for_model(alive: Iterable[InstanceInfo], provider: str, model: str) -> int:
    """``core``'s count of instances using ``model`` (its own rule; may be 0)."""
    return sum(1 for instance in alive if uses_model(instance, provider, model))


def model_parallel_limit(base_limit: int, instances_using: int) -> int:
    """``max(1, floor(baseLimit / instancesUsingModel))``; a model nobody uses yet counts as one user."""
    return max(1, base_limit // max(1, instances_using))


def model_usage(alive: Iterable[InstanceInfo]) -> list[tuple[str, str, int]]:
    """pi's ``getModelUsageSummary``: ``(provider, model, instanceCount)`` per model
    as stored, in the order first seen (alive instances in directory order)."""
    counts: dict[tuple[str, str], int] = {}
    for instance in alive:
        for active in instance.active_models:
            key = (active.provider, active.model)
            counts[key] = counts.get(key, 0) + 1
    return [(p, m, n) for (p, m), n in counts.items()]


class ModelIndex:
    """The models in use by a set of alive instances, indexed so that counting the
    instances matching each of them (pi's rule and ``core``'s) costs about the
    matches, not instances x models: thousands of instances are shown live.

    Gives exactly :func:`pi_instances_for_model` and :func:`instances_for_model`.
    """

    def __init__(self, alive: Sequence[InstanceInfo]) -> None:
        self._alive = alive
        self._users: dict[tuple[str, str], set[int]] = {}  # (provider, model) as stored -> instances
        for n, instance in enumerate(alive):
            for active in instance.active_models:
                self._users.setdefault((active.provider, active.model), set()).add(n)
        self._sorted: dict[str, list[str]] = {}  # provider -> stored models, sorted
        self._lowered: dict[tuple[str, str], list[str]] = {}  # (provider, model lower-cased) -> stored models
        for provider, model in self._users:
            self._sorted.setdefault(provider, []).append(model)
            self._lowered.setdefault((provider, model.lower()), []).append(model)
        for models in self._sorted.values():
            models.sort()

    def _count(self, provider: str, models: Iterable[str]) -> int:
        users: set[int] = set()
        for model in models:
            users |= self._users[(provider, model)]
        return len(users)

    def pi_count(self, provider: str, model: str) -> int:
        """pi's ``getActiveInstancesForModel`` (raises :class:`PiPatternError` where pi throws)."""
        provider, query = provider.lower(), model.lower()
        stored = self._sorted.get(provider, [])
        if has_glob(query) and _pi_regex(query) is None:
            # Whether pi throws depends on each instance's model order (its ``some`` stops
            # at the first match): only the instance-by-instance rule tells.
            return pi_instances_for_model(self._alive, provider, query)
        if has_glob(query):
            return max(1, self._count(provider, [m for m in stored if pi_model_matches(query, m)]))
        # Without * or ? pi's regex matches exactly the names equal to the query but for case.
        start = bisect_left(stored, query)
        found = set()
        for m in stored[start:]:
            if not m.startswith(query):
                break
            found.add(m)
        present = set(stored)
        found.update(query[:i] for i in range(1, len(query) + 1) if query[:i] in present)
        found.update(self._lowered.get((provider, query), ()))
        return max(1, self._count(provider, found))

    def core_count(self, provider: str, model: str) -> int:
        """``core``'s :func:`instances_for_model` (case-insensitive; ``*`` and ``?`` as globs)."""
        wanted = provider.lower()
        found = [
            (p, m) for p, models in self._sorted.items() if p.lower() == wanted for m in models if model_matches(model, m)
        ]
        users: set[int] = set()
        for key in found:
            users |= self._users[key]
        return len(users)


# --------------------------------------------------------------------- queues
def queue_age_ms(state: BroadcastQueueState, now_ms: int) -> int:
    return now_ms - state.timestamp_ms


def is_fresh_queue_age(age_ms: int) -> bool:
    """Young enough for pi to act on: at most two *default* heartbeat intervals (30 s)."""
    return age_ms <= QUEUE_FRESH_MS


def is_fresh_queue_state(state: BroadcastQueueState, now_ms: int) -> bool:
    return is_fresh_queue_age(queue_age_ms(state, now_ms))


def fresh_queue_states(
    states: Iterable[BroadcastQueueState], now_ms: int, exclude: str | None = None
) -> list[BroadcastQueueState]:
    """pi's ``getRemoteQueueStates``: fresh queue states other than ``exclude``'s, in the given order."""
    return [s for s in states if s.instance_id != exclude and is_fresh_queue_state(s, now_ms)]


def is_expired_queue_age(age_ms: int) -> bool:
    """pi's ``cleanupQueueStates`` removes states older than the *default* timeout (60 s)."""
    return age_ms > QUEUE_EXPIRY_MS


def is_expired_queue_state(state: BroadcastQueueState, now_ms: int) -> bool:
    return is_expired_queue_age(queue_age_ms(state, now_ms))


def is_idle_queue(state: BroadcastQueueState) -> bool:
    return state.pending_task_count == 0 and state.active_orchestrations <= IDLE_MAX_ORCHESTRATIONS


def is_busy_queue(state: BroadcastQueueState) -> bool:
    return state.pending_task_count >= STEAL_VICTIM_MIN_PENDING


@dataclass(frozen=True, slots=True)
class WorkStealingSummary:
    """pi's ``getWorkStealingSummary`` over the remote (fresh) queue states."""

    remote_instances: int
    total_pending_tasks: int
    stealable_tasks: int
    idle_instances: int
    busy_instances: int


def work_stealing_summary(remote: Sequence[BroadcastQueueState]) -> WorkStealingSummary:
    return WorkStealingSummary(
        remote_instances=len(remote),
        total_pending_tasks=sum(s.pending_task_count for s in remote),
        stealable_tasks=sum(len(s.stealable_entries) for s in remote),
        idle_instances=sum(1 for s in remote if is_idle_queue(s)),
        busy_instances=sum(1 for s in remote if not is_idle_queue(s) and is_busy_queue(s)),
    )


def has_remote_capacity(remote: Sequence[BroadcastQueueState]) -> bool:
    """pi's ``checkRemoteCapacity``: no remote queue at all, or an idle one."""
    return not remote or any(is_idle_queue(s) for s in remote)


def pick_steal_entry(
    remote: Sequence[BroadcastQueueState],
    skip: frozenset[tuple[str, str]] = frozenset(),
    offered: Callable[[BroadcastQueueState], Sequence[StealableQueueEntry]] = lambda s: s.stealable_entries,
) -> tuple[BroadcastQueueState, StealableQueueEntry] | None:
    """pi's ``stealWork``: each busy queue (pending > 2) offers its first entry; the
    most urgent offer wins, the first in directory order among equals.

    ``skip`` holds ``(ownerInstanceId, entryId)`` pairs already claimed, which
    pi does not have: a claimed entry is passed over for the next one.
    ``offered`` says which entries a queue offers (``core`` thieves read the
    ones offered to claiming thieves).
    """
    offers = []
    for state in remote:
        if not is_busy_queue(state):
            continue
        for entry in offered(state):
            if (state.instance_id, entry.id) not in skip:
                offers.append((state, entry))
                break
    if not offers:
        return None
    return min(offers, key=lambda offer: pi_priority_rank(offer[1].priority))


PI_PRIORITIES = ("critical", "high", "normal", "low", "background")


def pi_priority_rank(priority: str) -> int:
    """pi's ``priorityOrder.indexOf(priority)``: a name not in the list is -1, so it sorts first."""
    try:
        return PI_PRIORITIES.index(priority)
    except ValueError:
        return -1


# -------------------------------------------------------------------- cleanup
def _js_time_ms(value: object) -> int | None:
    """``new Date(value).getTime()`` for the ISO strings pi writes; ``None`` for NaN."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return to_epoch_ms(moment)


def pi_deletes_unreadable(space: str, raw: bytes | None, now_ms: int, timeout_ms: int) -> bool:
    """Whether pi's cleanup deletes a file ``core`` could not read as a record.

    pi deletes whatever ``JSON.parse`` rejects; a file that parses but that
    ``core`` rejects pi judges on the one field it looks at, where JavaScript
    turns a missing or odd value into ``NaN`` (and every comparison with NaN is
    false).  ``space`` is ``instances``, ``queue-states`` or ``locks``.
    """
    if raw is None:
        return True
    try:
        doc = json.loads(raw)
    except ValueError:
        return True
    except RecursionError:  # nesting node parses and Python does not: no usable top-level field
        doc = []
    if doc is None:
        return True  # pi reads a property of null and throws: treated as corrupt
    fields = doc if isinstance(doc, dict) else {}
    if space == "instances":  # deleted unless alive: NaN is never younger than the timeout
        beat = _js_time_ms(fields.get("lastHeartbeat"))
        return beat is None or now_ms - beat >= timeout_ms
    if space == "queue-states":  # NaN is never older than the limit
        stamp = _js_time_ms(fields.get("timestamp"))
        return stamp is not None and now_ms - stamp > QUEUE_EXPIRY_MS
    expires = fields.get("expiresAt")
    return isinstance(expires, (int, float)) and not isinstance(expires, bool) and now_ms >= expires
