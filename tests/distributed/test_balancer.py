"""LoadBalancer: eligibility, what each strategy promises (hypothesis), next task, load, rebalancing."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.clock import ManualClock, utc_from_ms
from core.distributed import (
    LoadBalancer,
    MemorySyncManager,
    Task,
    WorkerError,
    WorkerInfo,
    WorkerRegistry,
    can_run,
    pick_next_task,
    plan_rebalance,
)
from core.distributed.balancer import utilisation_spread

NOW = utc_from_ms(1_771_373_735_675)
TYPES = ("build", "test", "deploy", "gpu")


def worker(wid, active=0, most=4, status="active", cpu=4, mem=8192, types=("build", "test")) -> WorkerInfo:
    return WorkerInfo(
        worker_id=wid,
        status=status,
        registered_at=NOW,
        last_heartbeat=NOW,
        capacity={"max_tasks": most, "active_tasks": active},
        capabilities={"cpu_cores": cpu, "memory_mb": mem, "supported_task_types": types},
    )


def task(tid="t", type="build", priority=0, **requirements) -> Task:
    return Task(id=tid, type=type, priority=priority, requirements=requirements)


@pytest.fixture
def registry(store, clock):
    return WorkerRegistry(store, clock)


# ---------------------------------------------------------------- hypothesis
workers_st = st.lists(
    st.builds(
        worker,
        wid=st.text("abcdefgh", min_size=1, max_size=3),
        active=st.integers(0, 6),
        most=st.integers(0, 6),
        status=st.sampled_from(["active", "active", "busy", "draining", "offline"]),
        cpu=st.integers(1, 8),
        mem=st.sampled_from([512, 2048, 8192]),
        types=st.lists(st.sampled_from(TYPES), max_size=4, unique=True).map(tuple),
    ),
    max_size=8,
    unique_by=lambda w: w.worker_id,
)
tasks_st = st.builds(
    task,
    tid=st.text("xyz", min_size=1, max_size=2),
    type=st.sampled_from(TYPES),
    priority=st.integers(-3, 3),
    min_cpu_cores=st.none() | st.integers(1, 8),
    min_memory_mb=st.none() | st.sampled_from([512, 4096]),
    required_capabilities=st.lists(st.sampled_from(TYPES), max_size=2).map(tuple),
)


@st.composite
def fleet_and_task(draw, eligible_at_least=1):
    """A task and a fleet with at least ``eligible_at_least`` workers able to run it, in random places."""
    t = draw(tasks_st)
    fleet = draw(workers_st)
    taken = {w.worker_id for w in fleet}
    for _ in range(eligible_at_least):
        most = draw(st.integers(1, 6))
        fit = worker(
            draw(st.text("abcdefgh", min_size=1, max_size=3).filter(lambda wid: wid not in taken)),
            active=draw(st.integers(0, most - 1)),
            most=most,
            status=draw(st.sampled_from(["active", "busy"])),
            cpu=max(t.requirements.min_cpu_cores or 1, draw(st.integers(1, 8))),
            mem=max(t.requirements.min_memory_mb or 512, draw(st.sampled_from([512, 8192]))),
            types=tuple({t.type, *t.requirements.required_capabilities, *draw(st.lists(st.sampled_from(TYPES)))}),
        )
        taken.add(fit.worker_id)
        fleet.insert(draw(st.integers(0, len(fleet))), fit)
    return fleet, t


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def balancer(strategy, memory=None):
    return LoadBalancer(registry=None, strategy=strategy, memory=memory, clock=ManualClock())  # type: ignore[arg-type]


@FAST
@given(fleet_and_task(0) | fleet_and_task(2), st.sampled_from(["round_robin", "least_loaded", "capacity_based", "affinity"]))
def test_property_only_eligible_workers_are_chosen(fleet, strategy):
    workers, t = fleet
    chosen = balancer(strategy).select_worker(t, workers)
    eligible = [w for w in workers if can_run(w, t)]
    if not eligible:
        assert chosen is None
        return
    assert chosen in eligible
    assert chosen.status in ("active", "busy") and chosen.free_slots > 0
    assert t.type in chosen.capabilities.supported_task_types
    assert set(t.requirements.required_capabilities) <= set(chosen.capabilities.supported_task_types)
    assert t.requirements.min_cpu_cores is None or chosen.capabilities.cpu_cores >= t.requirements.min_cpu_cores
    assert t.requirements.min_memory_mb is None or chosen.capabilities.memory_mb >= t.requirements.min_memory_mb


@FAST
@given(fleet_and_task(), st.integers(1, 40))
def test_property_round_robin_counts_differ_by_at_most_one(fleet, n):
    workers, t = fleet
    eligible = [w for w in workers if can_run(w, t)]
    lb = balancer("round_robin")
    counts = Counter(lb.select_worker(t, workers).worker_id for _ in range(n))
    per_worker = [counts.get(w.worker_id, 0) for w in eligible]
    assert max(per_worker) - min(per_worker) <= 1 and sum(per_worker) == n


@FAST
@given(fleet_and_task())
def test_property_least_loaded_picks_a_minimal_load(fleet):
    workers, t = fleet
    chosen = balancer("least_loaded").select_worker(t, workers)
    eligible = [w for w in workers if can_run(w, t)]
    assert chosen.load == min(w.load for w in eligible)
    assert chosen.worker_id == min(w.worker_id for w in eligible if w.load == chosen.load)


@FAST
@given(fleet_and_task())
def test_property_capacity_based_picks_the_most_free_slots(fleet):
    workers, t = fleet
    chosen = balancer("capacity_based").select_worker(t, workers)
    eligible = [w for w in workers if can_run(w, t)]
    assert chosen.free_slots == max(w.free_slots for w in eligible)
    tied = [w for w in eligible if w.free_slots == chosen.free_slots]
    assert chosen.capacity.max_tasks == max(w.capacity.max_tasks for w in tied)


@FAST
@given(fleet_and_task(), st.data())
def test_property_affinity_prefers_the_most_recent_eligible_worker_with_history(fleet, data):
    workers, t = fleet
    ids = [w.worker_id for w in workers] + ["retired"]
    history = data.draw(st.lists(st.sampled_from(ids), max_size=6))
    lb = balancer("affinity")
    for wid in history:
        lb.record_assignment(t.type, wid)
    eligible = [w for w in workers if can_run(w, t)]
    chosen = lb.select_worker(t, workers)
    warm = [wid for wid in reversed(history) if wid in {w.worker_id for w in eligible}]
    if warm:
        assert chosen.worker_id == warm[0]
    else:
        assert chosen.load == min(w.load for w in eligible)  # falls back to least_loaded


@FAST
@given(fleet_and_task(), st.lists(tasks_st, max_size=6), st.data())
def test_property_next_task_is_a_runnable_task_of_top_priority(fleet, others, data):
    workers, t = fleet
    w = data.draw(st.sampled_from(workers))
    tasks = data.draw(st.permutations([t, *others]))
    got = pick_next_task(w, tasks)
    runnable = [t for t in tasks if can_run(w, t)]
    if not runnable:
        assert got is None
        return
    top = max(t.priority for t in runnable)
    assert got is next(t for t in runnable if t.priority == top)


loads_st = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=2), st.tuples(st.integers(0, 12), st.integers(1, 12)), max_size=7
).map(lambda d: {k: (min(a, m), m) for k, (a, m) in d.items()})


@FAST
@given(loads_st)
def test_property_rebalance_plan_conserves_tasks_and_evens_out(loads):
    after, moves = plan_rebalance(loads)
    assert sum(a for a, _ in after.values()) == sum(a for a, _ in loads.values())
    assert all(0 <= a <= m and m == loads[w][1] for w, (a, m) in after.items())
    assert utilisation_spread(after) <= utilisation_spread(loads)
    for (s, d), n in moves.items():
        assert s != d and n > 0
    # No move is left that would keep the source at least as utilised as the target.
    for s, (a_s, m_s) in after.items():
        for d, (a_d, m_d) in after.items():
            if s != d and a_s > 0 and a_d < m_d:
                assert Fraction(a_s - 1, m_s) < Fraction(a_d + 1, m_d)
    if len({m for _, m in loads.values()}) == 1 and after:
        counts = [a for a, _ in after.values()]
        assert max(counts) - min(counts) <= 1  # equal capacities: within one task


# --------------------------------------------------------------- examples
def test_eligibility_rules():
    build = task()
    assert can_run(worker("w"), build)
    assert can_run(worker("w", active=1, status="busy"), build)
    assert not can_run(worker("w", active=4, status="busy"), build)
    assert not can_run(worker("w", active=4), build)
    assert not can_run(worker("w", status="draining"), build)
    assert not can_run(worker("w", status="offline"), build)
    assert not can_run(worker("w", types=("test",)), build)
    assert not can_run(worker("w", cpu=2), task(min_cpu_cores=4))
    assert not can_run(worker("w", mem=1024), task(min_memory_mb=2048))
    assert not can_run(worker("w"), task(required_capabilities=("gpu",)))
    assert can_run(worker("w", types=("build", "gpu")), task(required_capabilities=("gpu",)))


def test_strategies_are_checked():
    lb = balancer("least_loaded")
    assert lb.strategy == "least_loaded"
    lb.set_strategy("affinity")
    assert lb.strategy == "affinity"
    with pytest.raises(ValueError):
        lb.set_strategy("random")
    with pytest.raises(ValueError):
        balancer("fastest")


def test_strategies_differ_where_they_should():
    big = worker("big", active=50, most=100)  # 50 % used, 50 free
    small = worker("small", active=0, most=4)  # idle, 4 free
    assert balancer("least_loaded").select_worker(task(), [big, small]) is small
    assert balancer("capacity_based").select_worker(task(), [big, small]) is big


def test_select_worker_reads_the_registry_and_accepts_seed_dicts(registry):
    registry.register({"workerId": "a", "capacity": {"maxTasks": 2}, "capabilities": {"supportedTaskTypes": ["build"]}})
    registry.register({"workerId": "b", "capacity": {"maxTasks": 2}, "capabilities": {"supportedTaskTypes": ["test"]}})
    lb = LoadBalancer(registry, "least_loaded")
    assert lb.select_worker({"id": "t1", "type": "build", "priority": 1}).worker_id == "a"
    assert lb.select_worker({"id": "t2", "type": "deploy", "priority": 1}) is None


def test_get_next_task_uses_the_registered_worker(registry):
    registry.register({"workerId": "w", "capacity": {"maxTasks": 2}, "capabilities": {"cpuCores": 2, "supportedTaskTypes": ["build", "test"]}})
    lb = LoadBalancer(registry)
    tasks = [task("low", priority=1), task("big", priority=9, min_cpu_cores=8), task("hi", "test", 5), task("hi2", priority=5)]
    assert lb.get_next_task("w", tasks).id == "hi"
    assert lb.affinity_history("test")["workers"]["w"]["count"] == 1
    registry.update_status("w", "draining")
    assert lb.get_next_task("w", tasks) is None
    with pytest.raises(WorkerError):
        lb.get_next_task("ghost", tasks)


def test_affinity_history_is_shared_through_memory(store, registry, clock):
    for wid in ("a", "b", "c"):
        registry.register({"workerId": wid, "capacity": {"maxTasks": 4}, "capabilities": {"supportedTaskTypes": ["build"]}})
    memory = MemorySyncManager(store, clock)
    first = LoadBalancer(registry, "round_robin", memory)
    assert [first.select_worker(task()).worker_id for _ in range(2)] == ["a", "b"]
    second = LoadBalancer(registry, "affinity", MemorySyncManager(store, clock))
    assert second.select_worker(task()).worker_id == "b"  # the most recent, as another balancer recorded it
    history = memory.get("affinity/build", "balancer")
    assert history["seq"] == 3 and history["workers"]["b"]["count"] == 2
    registry.update_status("b", "draining")
    assert second.select_worker(task()).worker_id == "a"  # b not eligible: the next most recent


def test_load_distribution(registry):
    registry.register({"workerId": "a", "capacity": {"maxTasks": 10, "activeTasks": 5}})
    registry.register({"workerId": "b", "capacity": {"maxTasks": 6, "activeTasks": 1}})
    registry.register({"workerId": "c", "capacity": {"maxTasks": 8, "activeTasks": 8}})
    registry.update_status("c", "offline")
    dist = LoadBalancer(registry).get_load_distribution()
    assert (dist.total_capacity, dist.utilized_capacity, dist.utilization_percent) == (16, 6, 37.5)
    assert [(w.worker_id, w.active_tasks, w.capacity, w.utilization_percent) for w in dist.worker_loads] == [
        ("a", 5, 10, 50.0),
        ("b", 1, 6, 16.67),
    ]
    assert dist.to_json().startswith(b'{\n  "totalCapacity": 16')


def test_rebalance_plans_moves_and_publishes_them(store, registry, clock):
    for wid, active in (("a", 9), ("b", 1), ("c", 2), ("d", 10)):
        registry.register({"workerId": wid, "capacity": {"maxTasks": 10, "activeTasks": active}})
    registry.update_status("d", "draining")  # takes no part
    memory = MemorySyncManager(store, clock)
    result = LoadBalancer(registry, memory=memory).rebalance()
    # a 90 %, b 10 %, c 20 %: 12 tasks over three equal workers end at 4/4/4.
    assert result.tasks_moved == 5 and result.improved_utilization
    assert (result.before_utilization, result.after_utilization) == (80.0, 0.0)
    assert {(m.from_worker, m.to_worker, m.tasks) for m in result.moves} == {("a", "b", 3), ("a", "c", 2)}
    plan = memory.get("rebalance-plan", "balancer")
    assert plan["tasksMoved"] == 5 and plan["beforeUtilization"] == 80.0 and plan["createdAt"].endswith("Z")
    assert registry.get_worker("a").capacity.active_tasks == 9  # a plan, not a change of the counts


def test_a_balanced_fleet_needs_no_moves(registry):
    for wid, active in (("a", 3), ("b", 2)):
        registry.register({"workerId": wid, "capacity": {"maxTasks": 10, "activeTasks": active}})
    result = LoadBalancer(registry).rebalance()
    assert (result.tasks_moved, result.improved_utilization, result.before_utilization, result.after_utilization) == (
        0, False, 10.0, 10.0,
    )
