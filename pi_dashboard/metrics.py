"""``pi-dash metrics``: the fleet as Prometheus / OpenMetrics metrics.

A custom ``prometheus_client`` collector turns the latest
:class:`~core.snapshot.FleetSnapshot` (the value the dashboard renders) into
metric families at each scrape; ``prometheus_client`` writes the exposition
format.  Labels are bounded: ``instance`` (an instance id), ``provider`` and
``model``, and small closed sets (``status``, ``kind``); a lock's free-form
resource name never becomes a label.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.snapshot import FleetSnapshot, SnapshotBuilder, Status
from core.stealing import STEAL_PREFIX
from core.store import StoreError
from core.waits import WaitKind

from .text import printable

PREFIX = "pi_dash"


def _s(ms: float | None) -> float:
    return (ms or 0) / 1000


class FleetCollector(Collector):
    """Yields metric families from ``latest()``, called once per scrape."""

    def __init__(self, latest: Callable[[], FleetSnapshot]) -> None:
        self.latest = latest

    def describe(self) -> list[Metric]:
        return []  # families depend on the fleet; registering must not take a snapshot

    def collect(self) -> Iterator[Metric]:
        up = _gauge("store_up", "1 when the fleet's store could be read for this scrape", [])
        try:
            snapshot = self.latest()
        except StoreError:
            up.add_metric([], 0)  # the reason is the exporter's to log, not a label's to carry
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from fleet_metrics(snapshot)


def _gauge(name: str, doc: str, labels: list[str], unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels, unit=unit)


def fleet_metrics(snapshot: FleetSnapshot) -> list[Metric]:
    """Every metric family of one snapshot (label values escaped like any other user text)."""
    families: list[Metric] = []
    taken = _gauge("snapshot_timestamp", "When the snapshot behind this scrape was taken", [], "seconds")
    taken.add_metric([], snapshot.taken_at_ms / 1000)
    families.append(taken)

    by_status = _gauge("instances", "Instances by status", ["status"])
    for status in Status:
        by_status.add_metric([status.value], snapshot.figures.status_counts.get(status, 0))
    families.append(by_status)
    fleet = [
        ("active_instances", "Instances pi counts as alive (heartbeat younger than the timeout)", snapshot.figures.active_count),
        ("parallel_limit", "Plain per-instance limit: max(1, floor(totalMaxLlm / active))", snapshot.figures.parallel_limit),
        ("pending_tasks", "Pending tasks of all counted instances", snapshot.figures.total_pending),
        ("stealable_tasks", "Stealable entries in fresh queue states", snapshot.figures.stealable_tasks),
    ]
    for name, doc, value in fleet:
        family = _gauge(name, doc, [])
        family.add_metric([], value)
        families.append(family)

    status = _gauge("instance_status", "1 for the status each instance is in", ["instance", "status"])
    age = _gauge("instance_heartbeat_age", "Time since the instance's last heartbeat", ["instance"], "seconds")
    pending = _gauge("instance_pending_tasks", "Pending tasks the instance reports", ["instance"])
    limit = _gauge("instance_dynamic_limit", "The instance's dynamic share of totalMaxLlm", ["instance"])
    for view in snapshot.instances:
        name = printable(view.instance_id)
        status.add_metric([name, view.status.value], 1)
        if view.heartbeat_age_ms is not None:
            age.add_metric([name], _s(view.heartbeat_age_ms))
        if view.info is not None:
            pending.add_metric([name], view.pending)
        if view.parallel_limit is not None:
            limit.add_metric([name], view.parallel_limit)
    families += [status, age, pending, limit]

    labels = ["instance", "provider", "model"]
    current = _gauge("model_parallelism_current", "Dynamic parallelism after 429s, timeouts and errors", labels)
    base = _gauge("model_parallelism_base", "Configured base parallelism", labels)
    effective = _gauge("model_parallelism_effective", "Parallelism after sharing with the instances using the model", labels)
    in_flight = _gauge("model_in_flight", "Requests in flight", labels)
    own429s = CounterMetricFamily(
        f"{PREFIX}_model_429s", "429s the instance received for the model since it started (core instances)", labels=labels
    )
    for view in snapshot.parallelism:
        state = view.state
        values = [printable(view.instance_id), printable(state.provider), printable(state.model)]
        current.add_metric(values, state.current_parallelism)
        base.add_metric(values, state.base_parallelism)
        effective.add_metric(values, state.effective_parallelism)
        in_flight.add_metric(values, state.active_requests)
        own429s.add_metric(values, state.own429_total)
    families += [current, base, effective, in_flight, own429s]

    recent = _gauge("recent_429s", "429s reported for the model in the last 5 minutes (the fleet's shared record)", ["provider", "model"])
    backoff = _gauge("backoff_remaining", "Time left on the fleet's shared 429 backoff", ["provider", "model"], "seconds")
    for view in snapshot.backoffs:
        values = [printable(view.provider), printable(view.model)]
        recent.add_metric(values, view.recent429s)
        backoff.add_metric(values, _s(view.remaining_ms))
    families += [recent, backoff]

    used = _gauge("rate_limit_used", "Requests granted by the shared limiter in the last minute", ["provider"])
    effective_rpm = _gauge("rate_limit_effective", "Requests per minute after adaptive control", ["provider"])
    configured = _gauge("rate_limit_configured", "Configured requests per minute", ["provider"])
    next_slot = _gauge("rate_limit_next_slot", "How far ahead the limiter's next free slot is", ["provider"], "seconds")
    for rate in snapshot.rate_limits:
        provider = [printable(rate.provider)]
        used.add_metric(provider, rate.used_last_minute)
        effective_rpm.add_metric(provider, rate.effective_requests_per_minute)
        configured.add_metric(provider, rate.requests_per_minute)
        next_slot.add_metric(provider, _s(rate.backlog_ms))
    families += [used, effective_rpm, configured, next_slot]

    depth = _gauge("queue_depth", "Pending tasks in the instance's broadcast queue state", ["instance"])
    stealable = _gauge("queue_stealable", "Stealable entries in the instance's queue state", ["instance"])
    queue_age = _gauge("queue_age", "Age of the instance's queue state", ["instance"], "seconds")
    for queue in snapshot.queues:
        name = [printable(queue.instance_id)]
        depth.add_metric(name, queue.state.pending_task_count)
        stealable.add_metric(name, len(queue.state.stealable_entries))
        queue_age.add_metric(name, _s(queue.age_ms))
    families += [depth, stealable, queue_age]

    stealing = snapshot.stealing
    for name, doc, value in [
        ("steal_attempts", "Steal attempts, summed over the persisted statistics", stealing.attempts),
        ("steal_successes", "Successful steals, summed over the persisted statistics", stealing.successes),
        ("steal_failures", "Failed steal attempts", stealing.failures),
    ]:
        family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
        family.add_metric([], value)
        families.append(family)
    claims = _gauge("steal_claims", "Exactly-once claims of stolen entries currently on record", [])
    claims.add_metric([], stealing.claims)
    families.append(claims)

    # A lock's resource is free text: steal locks are labelled by the queue's owner,
    # any other lock by its holder (the oldest of them), with a closed ``kind``.
    lock_age: dict[tuple[str, str], float] = {}
    lock_ttl: dict[tuple[str, str], float] = {}
    lock_counts: Counter[str] = Counter()
    for view in snapshot.locks:
        if view.lock is None:
            lock_counts["unreadable"] += 1
            continue
        lock_counts["expired" if view.expired else "held"] += 1
        resource = view.lock.resource
        key = ("steal", resource[len(STEAL_PREFIX) :]) if resource.startswith(STEAL_PREFIX) else ("other", view.lock.holder)
        if _s(view.age_ms) >= lock_age.get(key, -1.0):
            lock_age[key] = _s(view.age_ms)
            lock_ttl[key] = _s(view.ttl_left_ms)
    locks = _gauge("locks", "Lock files by state", ["state"])
    for state in ("held", "expired", "unreadable"):
        locks.add_metric([state], lock_counts[state])
    age_family = _gauge("lock_age", "Age of a lock (steal: the queue owner's; other: the holder's oldest)", ["kind", "instance"], "seconds")
    ttl_family = _gauge("lock_ttl_left", "TTL left on that lock", ["kind", "instance"], "seconds")
    for (kind, instance), seconds in lock_age.items():
        age_family.add_metric([kind, printable(instance)], seconds)
        ttl_family.add_metric([kind, printable(instance)], lock_ttl[(kind, instance)])
    families += [locks, age_family, ttl_family]

    waiting = _gauge("instances_waiting", "Running instances held back, by reason (core.waits)", ["kind"])
    held: Counter[WaitKind] = Counter()
    unrecorded = 0
    for waits in snapshot.waits.values():
        held.update({r.kind for r in waits.reasons})
        unrecorded += not waits.records_waits
    for kind in WaitKind:
        waiting.add_metric([kind.value], held[kind])
    no_record = _gauge("instances_without_wait_records", "Running instances that record no wait state (pi's own)", [])
    no_record.add_metric([], unrecorded)
    families += [waiting, no_record]

    problems = _gauge("problems", "Problems by kind (corrupt, unreadable, clock-skew, dead-pid, ...)", ["kind"])
    for kind, count in sorted(Counter(p.kind for p in snapshot.problems).items()):
        problems.add_metric([kind], count)
    families.append(problems)
    return families


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class SnapshotOnDemand:
    """The latest snapshot for each scrape: one incremental builder, one build at a time."""

    def __init__(self, builder: SnapshotBuilder) -> None:
        self.builder = builder
        self._lock = threading.Lock()

    def __call__(self) -> FleetSnapshot:
        with self._lock:
            return self.builder.build()
