"""Placing tasks on workers (seed 003's ``LoadBalancer``).

A worker is *eligible* for a task when it takes work (``active``, or ``busy``
with a free slot; never ``draining`` or ``offline``), has a free slot, has the
CPU cores and memory the task asks for, and supports the task's type and every
capability it requires (``required_capabilities`` are matched against
``supported_task_types``, the only capability list seed 003 gives a worker).

Strategies, each among the eligible workers only:

``round_robin``
    The eligible worker whose id follows the previously chosen one, in id
    order (wrapping).  Rotating by id rather than by list position keeps the
    rotation fair when workers come and go: over any run of selections among
    the same ``k`` workers, the counts differ by at most one.
``least_loaded``
    The lowest ``active / max`` (exact fractions), ties by worker id.
``capacity_based``
    The most free slots (``max - active``), ties by larger ``max`` then id.
    Deterministic rather than weighted-random: the same fleet always gets the
    same answer (reproducible, testable), and since every assignment lowers the
    chosen worker's free slots, a stream of tasks still spreads over workers in
    proportion to their free capacity, filling big workers first.  (Several
    coordinators deciding from the same stale view pick the same worker; a
    weighted random choice would spread them, at the price of ever picking a
    nearly full worker over an empty one.)
``affinity``
    The eligible worker that was given this task type most recently (a warm
    cache is likeliest there), else ``least_loaded``.  The history is kept in
    the :class:`MemorySyncManager` namespace ``balancer`` (key
    ``affinity/{type}``, updated atomically, shared by every balancer on the
    store) when one is given, else in this object.  Every placement made by
    :meth:`LoadBalancer.select_worker` or :meth:`LoadBalancer.get_next_task`,
    whatever the strategy, is recorded.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_from_ms
from ..models import to_js_iso
from .errors import SyncError, WorkerError
from .memory import MemorySyncManager
from .models import LoadDistribution, RebalanceResult, Task, TaskMove, WorkerInfo, WorkerLoad
from .registry import WorkerRegistry

log = logging.getLogger("pi_dash.core.distributed.balancer")

STRATEGIES = ("round_robin", "least_loaded", "capacity_based", "affinity")
BALANCER_NAMESPACE = "balancer"
REBALANCE_PLAN_KEY = "rebalance-plan"
AFFINITY_KEEP = 64  # workers remembered per task type


def _task(task: Task | Mapping[str, Any]) -> Task:
    return task if isinstance(task, Task) else Task.model_validate(dict(task))


def takes_work(worker: WorkerInfo) -> bool:
    """Active, or busy with a free slot, and a free slot in any case."""
    return worker.status in ("active", "busy") and worker.free_slots > 0


def meets_requirements(worker: WorkerInfo, task: Task) -> bool:
    caps = worker.capabilities
    req = task.requirements
    supported = set(caps.supported_task_types)
    return (
        (req.min_cpu_cores is None or caps.cpu_cores >= req.min_cpu_cores)
        and (req.min_memory_mb is None or caps.memory_mb >= req.min_memory_mb)
        and task.type in supported
        and supported.issuperset(req.required_capabilities)
    )


def can_run(worker: WorkerInfo, task: Task) -> bool:
    """Whether ``worker`` is eligible for ``task`` (see the module docstring)."""
    return takes_work(worker) and meets_requirements(worker, task)


def pick_next_task(worker: WorkerInfo, tasks: Iterable[Task | Mapping[str, Any]]) -> Task | None:
    """The highest-priority task ``worker`` can run (the first of equals), or ``None``."""
    if not takes_work(worker):
        return None
    best: Task | None = None
    for candidate in map(_task, tasks):
        if meets_requirements(worker, candidate) and (best is None or candidate.priority > best.priority):
            best = candidate
    return best


def utilisation_spread(loads: Mapping[str, tuple[int, int]]) -> Fraction:
    """``max(active/max) - min(active/max)`` over ``{id: (active, max)}`` (0 for fewer than two)."""
    ratios = [Fraction(active, most) for active, most in loads.values()]
    return max(ratios) - min(ratios) if len(ratios) > 1 else Fraction(0)


def plan_rebalance(loads: Mapping[str, tuple[int, int]]) -> tuple[dict[str, tuple[int, int]], Counter[tuple[str, str]]]:
    """Moves of single tasks that even out ``{id: (active, max)}``; returns the loads after and the moves.

    Each move takes one task from a worker ``s`` to a worker ``d`` with a free
    slot when, after it, ``s`` is still at least as utilised as ``d``:
    ``(a_s - 1) / m_s >= (a_d + 1) / m_d``.  Of all such moves the one between
    the largest left side and the smallest right side is made first.  It
    stops when no move is left, that is when every worker is within one task
    of every other (for equal capacities: active counts differ by at most one).
    Each move lowers ``sum(a^2 / m)`` strictly, so the plan is finite; no
    worker ever ends above the previous maximum or below the previous minimum
    utilisation, so the spread never grows.
    """
    after = {wid: [active, most] for wid, (active, most) in loads.items() if most > 0}
    moves: Counter[tuple[str, str]] = Counter()
    while True:
        sources = sorted(
            (wid for wid, (a, m) in after.items() if a > 0), key=lambda w: (-Fraction(after[w][0] - 1, after[w][1]), w)
        )[:2]
        targets = sorted(
            (wid for wid, (a, m) in after.items() if a < m), key=lambda w: (Fraction(after[w][0] + 1, after[w][1]), w)
        )[:2]
        best = None
        for s in sources:
            for d in targets:
                if s == d:
                    continue
                gain = Fraction(after[s][0] - 1, after[s][1]) - Fraction(after[d][0] + 1, after[d][1])
                if gain >= 0 and (best is None or gain > best[0]):
                    best = (gain, s, d)
        if best is None:
            break
        _, s, d = best
        after[s][0] -= 1
        after[d][0] += 1
        moves[(s, d)] += 1
    return {wid: (a, m) for wid, (a, m) in after.items()}, moves


def _percent(value: Fraction) -> float:
    return round(float(value * 100), 2)


class LoadBalancer:
    """Choose workers for tasks and tasks for workers; measure and plan the fleet's balance."""

    def __init__(
        self,
        registry: WorkerRegistry,
        strategy: str = "round_robin",
        memory: MemorySyncManager | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry
        self.memory = memory
        self.clock = clock
        self._strategy = ""
        self.set_strategy(strategy)
        self._lock = threading.Lock()
        self._last_round_robin: str | None = None
        self._history: dict[str, dict[str, Any]] = {}  # task type -> affinity record, without memory

    @property
    def strategy(self) -> str:
        return self._strategy

    def set_strategy(self, strategy: str) -> None:
        """Switch strategy; :class:`ValueError` for a name not in :data:`STRATEGIES`."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown load-balancing strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
        self._strategy = strategy

    # ----------------------------------------------------------- choosing
    def select_worker(
        self, task: Task | Mapping[str, Any], workers: Sequence[WorkerInfo] | None = None
    ) -> WorkerInfo | None:
        """The worker the current strategy picks for ``task`` among the eligible ones, or ``None``.

        ``workers`` defaults to every registered worker.
        """
        task = _task(task)
        pool = self.registry.list_workers() if workers is None else list(workers)
        eligible = sorted((w for w in pool if can_run(w, task)), key=lambda w: w.worker_id)
        if not eligible:
            return None
        chosen = getattr(self, f"_choose_{self._strategy}")(eligible, task)
        self.record_assignment(task.type, chosen.worker_id)
        return chosen

    def _choose_round_robin(self, eligible: list[WorkerInfo], task: Task) -> WorkerInfo:
        with self._lock:
            last = self._last_round_robin
            chosen = next((w for w in eligible if last is not None and w.worker_id > last), eligible[0])
            self._last_round_robin = chosen.worker_id
        return chosen

    def _choose_least_loaded(self, eligible: list[WorkerInfo], task: Task) -> WorkerInfo:
        return min(eligible, key=lambda w: (w.load, w.worker_id))

    def _choose_capacity_based(self, eligible: list[WorkerInfo], task: Task) -> WorkerInfo:
        return min(eligible, key=lambda w: (-w.free_slots, -w.capacity.max_tasks, w.worker_id))

    def _choose_affinity(self, eligible: list[WorkerInfo], task: Task) -> WorkerInfo:
        seen = self.affinity_history(task.type).get("workers", {})
        warm = [w for w in eligible if w.worker_id in seen]
        if warm:
            return max(warm, key=lambda w: (seen[w.worker_id].get("lastSeq", 0), seen[w.worker_id].get("count", 0)))
        return self._choose_least_loaded(eligible, task)

    def get_next_task(self, worker_id: str, tasks: Iterable[Task | Mapping[str, Any]]) -> Task | None:
        """The highest-priority task of ``tasks`` that ``worker_id`` can run now (the first of
        equals), or ``None``; :class:`WorkerError` if the worker is not registered."""
        worker = self.registry.get_worker(worker_id)
        if worker is None:
            raise WorkerError(f"worker {worker_id!r} is not registered", worker_id)
        task = pick_next_task(worker, tasks)
        if task is not None:
            self.record_assignment(task.type, worker_id)
        return task

    # ----------------------------------------------------------- affinity
    def affinity_history(self, task_type: str) -> dict[str, Any]:
        """``{"seq": n, "workers": {id: {"count", "lastSeq", "lastAt"}}}`` for one task type."""
        if self.memory is None:
            with self._lock:
                return self._history.get(task_type, {})
        try:
            return self.memory.get(f"affinity/{task_type}", BALANCER_NAMESPACE) or {}
        except SyncError as exc:
            log.warning("cannot read affinity history of %r: %s", task_type, exc)
            return {}

    def record_assignment(self, task_type: str, worker_id: str) -> None:
        """Remember that ``worker_id`` got a task of ``task_type`` (for the affinity strategy)."""
        now = self.clock.now_ms()

        def add(history: dict[str, Any] | None) -> dict[str, Any]:
            history = dict(history or {})
            seq = int(history.get("seq", 0)) + 1
            workers = dict(history.get("workers", {}))
            before = workers.get(worker_id, {})
            workers[worker_id] = {"count": int(before.get("count", 0)) + 1, "lastSeq": seq, "lastAt": now}
            if len(workers) > AFFINITY_KEEP:
                keep = sorted(workers, key=lambda w: workers[w]["lastSeq"])[-AFFINITY_KEEP:]
                workers = {w: workers[w] for w in keep}
            return {"seq": seq, "workers": workers}

        if self.memory is None:
            with self._lock:
                self._history[task_type] = add(self._history.get(task_type))
            return
        try:
            self.memory.update(f"affinity/{task_type}", add, BALANCER_NAMESPACE)
        except SyncError as exc:  # history is a hint: never fail a placement over it
            log.warning("cannot record affinity of %r: %s", task_type, exc)

    # ------------------------------------------------------------ balance
    def get_load_distribution(self) -> LoadDistribution:
        """Capacity and load of every worker that is not offline (percentages rounded to 0.01)."""
        workers = [w for w in self.registry.list_workers() if w.status != "offline"]
        total = sum(w.capacity.max_tasks for w in workers)
        used = sum(w.capacity.active_tasks for w in workers)
        return LoadDistribution(
            total_capacity=total,
            utilized_capacity=used,
            utilization_percent=_percent(Fraction(used, total)) if total else 0.0,
            worker_loads=tuple(
                WorkerLoad(
                    worker_id=w.worker_id,
                    active_tasks=w.capacity.active_tasks,
                    capacity=w.capacity.max_tasks,
                    utilization_percent=_percent(w.load) if w.capacity.max_tasks else 0.0,
                )
                for w in workers
            ),
        )

    def rebalance(self) -> RebalanceResult:
        """Plan moves of active tasks from the most to the least utilised workers (see
        :func:`plan_rebalance`) among active and busy workers with slots.

        Running tasks cannot be moved from here: the plan is returned and, with
        a memory manager, published in namespace ``balancer`` under
        ``rebalance-plan`` for workers to act on (hand back queued work, take
        more).  The registry's counts are not changed.
        """
        workers = [w for w in self.registry.list_workers(status=["active", "busy"]) if w.capacity.max_tasks > 0]
        loads = {w.worker_id: (w.capacity.active_tasks, w.capacity.max_tasks) for w in workers}
        after, moves = plan_rebalance(loads)
        before_spread, after_spread = utilisation_spread(loads), utilisation_spread(after)
        result = RebalanceResult(
            tasks_moved=sum(moves.values()),
            improved_utilization=after_spread < before_spread,
            before_utilization=_percent(before_spread),
            after_utilization=_percent(after_spread),
            moves=tuple(TaskMove(from_worker=s, to_worker=d, tasks=n) for (s, d), n in sorted(moves.items())),
        )
        if self.memory is not None:
            plan = result.model_dump(mode="json", by_alias=True)
            plan["createdAt"] = to_js_iso(utc_from_ms(self.clock.now_ms()))
            self.memory.set(REBALANCE_PLAN_KEY, plan, BALANCER_NAMESPACE)
        return result
