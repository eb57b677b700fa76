"""Records and settings of the distributed execution API (seed 003's types).

Every record inherits :class:`core.models.Record`: camelCase keys on disk like
the rest of pi-dash's files, snake_case in Python, unknown keys kept on a read
-> write round trip (a newer pi-dash or a TypeScript peer may add fields), and
frozen, so a record read from the store can be shared between threads.
Timestamps are ``JsTime`` (ISO-8601 with milliseconds and ``Z``, as seed 003
specifies); records that are pi-dash's own carry ``formatVersion``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, get_args

from pydantic import Field

from ..models import FORMAT_VERSION, Count, JsNumber, JsTime, Pid, Record, to_epoch_ms

WorkerStatus = Literal["active", "busy", "draining", "offline"]
WORKER_STATUSES: tuple[str, ...] = get_args(WorkerStatus)


# ------------------------------------------------------------------ locks
class LockMetadata(Record):
    """Who took a lock and for what: ``hostname``, ``pid``, ``taskType`` and any other keys."""

    hostname: str | None = None
    pid: Pid | None = None
    task_type: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """A value by Python name, camelCase key or extra key (``meta.get("region")``)."""
        for name, field in type(self).model_fields.items():
            if key in (name, field.alias):
                value = getattr(self, name)
                return default if value is None else value
        return (self.model_extra or {}).get(key, default)


class Lock(Record):
    """A held task lock (``pi-dash/dist/locks/{taskId}.json``).

    ``fencing_token`` is unique to this acquisition and larger than the token of
    every earlier acquisition of the same task, so a resource that remembers the
    largest token it accepted can refuse a holder whose lock expired and was
    taken over (see :meth:`LockManager.check_fencing`).
    """

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    task_id: str = Field(min_length=1)
    worker_id: str = Field(min_length=1)
    acquired_at: JsTime
    expires_at: JsTime
    fencing_token: Count
    metadata: LockMetadata = Field(default_factory=LockMetadata)
    written_at: JsTime | None = None
    """When the holder last wrote the lock (set by a renewal; ``acquired_at`` until then),
    on its own clock: with ``expires_at`` it gives the lease, whatever that clock's offset."""

    @property
    def acquired_ms(self) -> int:
        return to_epoch_ms(self.acquired_at)

    @property
    def expires_ms(self) -> int:
        return to_epoch_ms(self.expires_at)

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms

    def lease_ms(self) -> int:
        """How long the lock lasts from its last write, a span on the holder's clock."""
        written = self.acquired_ms if self.written_at is None else to_epoch_ms(self.written_at)
        return max(0, self.expires_ms - written)

    def ttl_left_ms(self, now_ms: int) -> int:
        return max(0, self.expires_ms - now_ms)


class FencingCounter(Record):
    """The largest fencing token issued for one task (``pi-dash/dist/fencing/{taskId}.json``)."""

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    task_id: str
    last_token: Count


# ---------------------------------------------------------------- workers
class WorkerCapacity(Record):
    """How many tasks a worker takes; ``available_slots`` is always ``max(0, max - active)``."""

    max_tasks: Count
    active_tasks: Count = 0
    available_slots: Count | None = None

    @property
    def free_slots(self) -> int:
        """Free slots computed from the counts (what every decision here uses)."""
        return max(0, self.max_tasks - self.active_tasks)

    def consistent(self) -> WorkerCapacity:
        """This capacity with ``available_slots`` derived from the counts."""
        if self.available_slots == self.free_slots:
            return self
        return self.model_copy(update={"available_slots": self.free_slots})


class WorkerCapabilities(Record):
    cpu_cores: JsNumber = Field(default=0, ge=0)
    memory_mb: JsNumber = Field(default=0, ge=0)
    supported_task_types: tuple[str, ...] = ()


class WorkerInfo(Record):
    """One registered worker (``pi-dash/dist/workers/{workerId}.json``).

    ``stale_since`` is set when the heartbeat monitor marked the worker offline
    for missing heartbeats (as opposed to a worker that went offline on
    purpose); such a worker comes back to ``active`` with its next heartbeat.
    """

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    worker_id: str = Field(min_length=1)
    hostname: str = ""
    status: WorkerStatus = "active"
    registered_at: JsTime
    last_heartbeat: JsTime
    capacity: WorkerCapacity
    capabilities: WorkerCapabilities = Field(default_factory=WorkerCapabilities)
    metadata: dict[str, Any] = Field(default_factory=dict)
    stale_since: JsTime | None = None

    @property
    def heartbeat_ms(self) -> int:
        return to_epoch_ms(self.last_heartbeat)

    @property
    def free_slots(self) -> int:
        return self.capacity.free_slots

    @property
    def load(self) -> Fraction:
        """``active / max`` exactly (1 for a worker with no slots at all)."""
        cap = self.capacity
        return Fraction(cap.active_tasks, cap.max_tasks) if cap.max_tasks else Fraction(1)


# ------------------------------------------------------------------ tasks
class TaskRequirements(Record):
    min_cpu_cores: JsNumber | None = None
    min_memory_mb: JsNumber | None = None
    required_capabilities: tuple[str, ...] = ()


class Task(Record):
    """A unit of work to place; ``priority``: higher is more urgent."""

    id: str = Field(min_length=1)
    type: str
    priority: int = 0
    estimated_duration: JsNumber | None = None
    requirements: TaskRequirements = Field(default_factory=TaskRequirements)
    metadata: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------ load balancing
class WorkerLoad(Record):
    worker_id: str
    active_tasks: int
    capacity: int
    utilization_percent: float


class LoadDistribution(Record):
    """The fleet's load: totals over every worker that is not offline, and each one's share."""

    total_capacity: int
    utilized_capacity: int
    utilization_percent: float
    worker_loads: tuple[WorkerLoad, ...] = ()


class TaskMove(Record):
    from_worker: str
    to_worker: str
    tasks: int


class RebalanceResult(Record):
    """A rebalancing plan and its effect.

    ``before_utilization`` / ``after_utilization`` are the utilisation *spread*
    in percent: the most utilised worker's ``active/max`` minus the least
    utilised one's, times 100, over the workers that take part (active or busy,
    with at least one slot), before and after the moves in ``moves``.
    ``improved_utilization`` is ``after < before``.
    """

    tasks_moved: int
    improved_utilization: bool
    before_utilization: float
    after_utilization: float
    moves: tuple[TaskMove, ...] = ()


# ----------------------------------------------------------------- memory
class MemoryEntry(Record):
    """One shared value (``pi-dash/dist/memory/{namespace}/{key}.json``)."""

    VERSIONED = True
    KEEP_NULL = frozenset({"value"})

    format_version: Count = FORMAT_VERSION
    namespace: str
    key: str
    value: Any = None
    updated_at: JsTime
    updated_by: str | None = None


# ----------------------------------------------------------------- config
@dataclass(frozen=True, slots=True)
class LockingConfig:
    """Seed 003's ``locking`` settings.

    ``retry_attempts`` is the number of *retries* after the first try, so an
    acquisition tries ``1 + retry_attempts`` times, ``retry_delay_ms`` apart.
    """

    ttl_seconds: float = 300
    retry_attempts: int = 3
    retry_delay_ms: int = 1000

    def __post_init__(self) -> None:
        if not self.ttl_seconds > 0:
            raise ValueError("ttl_seconds must be positive")
        if self.retry_attempts < 0:
            raise ValueError("retry_attempts must be 0 or more")
        if self.retry_delay_ms < 0:
            raise ValueError("retry_delay_ms must be 0 or more")


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """How often a worker heartbeats, and how long without one makes it stale."""

    interval_ms: int = 30_000
    stale_threshold_ms: int = 120_000

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        if self.stale_threshold_ms <= self.interval_ms:
            # Otherwise a healthy worker is declared stale between two of its heartbeats.
            raise ValueError("stale_threshold_ms must be larger than interval_ms")
