"""``FleetSnapshot``: one immutable value describing the whole fleet at an instant.

The dashboard and ``pi-dash status`` render nothing else.  A
:class:`SnapshotBuilder` keeps a :class:`~core.store.RecordCache` per space, so
building again after a change re-reads only the entries that changed (or only
those a file watcher names), and recomputes the figures with the same
arithmetic the instances use (:mod:`core.semantics`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple, TypeVar

import pydantic_core

from . import semantics
from .backoff import MAX_RETRY_AFTER_MS, deadline_skew_ms, honoured_until
from .clock import SYSTEM_CLOCK, Clock
from .config import ConfigProblem, load_config
from .events import EventLog
from .labels import Labelled, Labels, instance_labels, shorten_ids
from .control import ACK_INTERVALS
from .models import (
    BroadcastQueueState,
    ControlRequest,
    CoordinatorConfig,
    DistributedLock,
    FleetEvent,
    InstanceInfo,
    InstanceParallelism,
    ModelParallelism,
    ProviderRateState,
    Record,
    SharedBackoff,
    StealableQueueEntry,
    StealClaim,
    StealingStats,
)
from .judgments import CLOCK_SKEW_TOLERANCE_MS, Judge, Judgment, Problem, Status, offline, span, where
from .procs import Liveness, LivenessCache
from .semantics import uses_model
from .stealing import STEAL_PREFIX, claim_pair, steal_resource
from .store import (
    BACKOFF,
    CLAIMS,
    CONTROL,
    INSTANCES,
    LOCKS,
    PARALLELISM,
    QUEUES,
    RATE_LIMITS,
    STEALING_STATS,
    Loaded,
    RecordCache,
    Space,
    Store,
    StoreError,
)
from .store.records import cyclic_gc_paused
from .waits import InstanceWaits, instance_waits

T = TypeVar("T")

EVENTS_KEPT = 200
BACKOFF_WINDOW_MS = 300_000

class InstanceModelLimit(NamedTuple):
    """The model limit an instance computes for a model it uses, by its own rule:
    pi's for pi's instances, ``core``'s (``*``/``?`` as globs) for ``core``'s."""

    provider: str
    model: str
    instances: int | None  # None where pi's code throws on the name
    limit: int | None
    rule: str  # "pi" | "core"


class InstanceView(NamedTuple):
    """One instance file and what it means now (a tuple: thousands are built per second)."""

    key: str
    info: InstanceInfo | None
    status: Status
    heartbeat_age_ms: int | None
    counted: bool  # alive by pi's rule, so part of every figure
    pid_running: Liveness
    parallel_limit: int | None  # its dynamic share of totalMaxLlm
    queue: BroadcastQueueState | None
    stats: StealingStats | None
    problem: str | None
    parallelism: InstanceParallelism | None = None
    raw: bytes | None = None  # the file as read: actions compare against it before removing anything
    model_limits: tuple[InstanceModelLimit, ...] = ()  # each model in use, as this instance counts it
    label: str = ""  # short and unique in its fleet (core.labels): what every pane shows first

    @property
    def instance_id(self) -> str:
        return self.info.instance_id if self.info else self.key

    @property
    def pending(self) -> int:
        return self.info.pending if self.info else 0

    @property
    def honours_claims(self) -> bool:
        """A ``core`` instance (claims before running); pi's own do not."""
        return bool(self.info and self.info.honours_claims)

    @property
    def stats_recorded(self) -> bool:
        """Whether its stealing statistics can be known: pi keeps them in process memory."""
        return self.stats is not None or self.honours_claims


class QueueView(NamedTuple):
    instance_id: str
    state: BroadcastQueueState
    age_ms: int
    fresh: bool  # young enough for pi's thieves to act on (30 s, whatever the config)
    claimed_entries: int


class LockView(NamedTuple):
    key: str
    lock: DistributedLock | None
    age_ms: int | None
    ttl_left_ms: int | None
    expired: bool
    problem: str | None

    @property
    def resource(self) -> str:
        return self.lock.resource if self.lock else self.key

    @property
    def held(self) -> bool:
        """Held as pi judges it (pi's ``tryAcquireLock`` would refuse it)."""
        return self.lock is not None and not self.expired


class ModelView(NamedTuple):
    """A model in use, with pi's figures for it (``None`` where pi's code throws)."""

    provider: str
    model: str
    instance_count: int  # getModelUsageSummary: instances listing exactly this model
    parallel_limit: int | None  # getModelParallelLimit(provider, model, myParallelLimit)
    matching_instances: int | None  # getActiveInstancesForModel: prefix either way, at least 1


class ModelParallelismView(NamedTuple):
    """One provider:model of one counted instance, as its adjuster last wrote it."""

    instance_id: str
    state: ModelParallelism
    age_ms: int  # since the adjuster wrote it


class ControlView(NamedTuple):
    """A control request and where it stands: pending, acknowledged, not-acknowledged,
    completed (drained, file still there) or offline (drained and gone)."""

    instance_id: str
    request: ControlRequest
    state: str


class BackoffView(NamedTuple):
    """The fleet's shared 429 backoff of one provider:model."""

    provider: str
    model: str
    until: int
    remaining_ms: int
    recent429s: int  # within pi's 5-minute window
    last_reported_by: str | None
    instances_waiting: int  # counted instances using the model

    @property
    def active(self) -> bool:
        return self.remaining_ms > 0


class RateLimitView(NamedTuple):
    """A provider's shared rate limiter and adaptive controller."""

    provider: str
    requests_per_minute: float
    burst: int
    effective_requests_per_minute: float
    used_last_minute: int
    backlog_ms: float  # how far ahead the next free slot is
    last429_at: int | None


@dataclass(frozen=True, slots=True)
class StealingTotals:
    """Steals recorded by ``core`` instances; pi's keep theirs in process memory."""

    attempts: int
    successes: int
    failures: int
    avg_latency_ms: float
    last_success_at: int | None
    claims: int
    unrecorded_instances: int = 0  # counted instances whose statistics no file shows (pi's own)

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """The numbers pi's coordinator computes for this directory, as an observer
    that is not itself an instance (pi's functions, :mod:`core.semantics`)."""

    active_count: int
    parallel_limit: int
    total_pending: int  # the work-stealing summary, over fresh queue states
    stealable_tasks: int
    idle_instances: int
    busy_instances: int
    status_counts: Mapping[Status, int] = field(default_factory=dict)
    remote_instances: int = 0  # fresh queue states
    remote_capacity: bool = True  # checkRemoteCapacity
    steal_work: StealableQueueEntry | None = None  # the entry pi's stealWork would pick
    steal_candidate: str | None = None  # findStealCandidate
    steal_candidates: tuple[str, ...] = ()  # getWorkStealingCandidates, all of them in pi's order
    claimable_tasks: int = 0  # entries offered to claiming (core) thieves in fresh queues
    active_instance_ids: tuple[str, ...] = ()  # in directory order
    cleanup_would_delete: tuple[str, ...] = ()  # what pi's cleanup would remove now


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet at ``taken_at_ms``.  Its tuples come in no particular order:
    each view sorts them as its user asks (sorting here would cost every
    rebuild of a large fleet for an order nobody may want)."""

    taken_at_ms: int
    source: str
    config: CoordinatorConfig
    instances: tuple[InstanceView, ...]
    queues: tuple[QueueView, ...]
    locks: tuple[LockView, ...]
    models: tuple[ModelView, ...]
    stealing: StealingTotals
    figures: FleetFigures
    problems: tuple[Problem, ...]
    parallelism: tuple[ModelParallelismView, ...] = ()
    backoffs: tuple[BackoffView, ...] = ()
    rate_limits: tuple[RateLimitView, ...] = ()
    events: tuple[FleetEvent, ...] = ()  # the most recent, oldest first
    event_count: int = 0  # events this builder has read in all: tells a viewer how many are new
    controls: tuple[ControlView, ...] = ()
    notice: str | None = None  # the store looks like no fleet's (a wrong --root): said in the header
    waits: Mapping[str, InstanceWaits] = field(default_factory=dict)  # per counted instance id
    labels: Labels = field(default_factory=Labels)  # instance id -> its label (core.labels)

    def label(self, instance_id: str) -> str:
        """The short label of any instance id: a fleet member's own, else (a lock's holder or an
        event's author that is gone) one that no member wears."""
        return self.labels.of(instance_id)

    def shorten(self, text: str) -> str:
        """``text`` (an event's message) with each fleet member's id replaced by its label."""
        return shorten_ids(text, self.labels.get) if self.labels else text

    def instance(self, instance_id: str) -> InstanceView | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    def pi_model_limit(self, provider: str, model: str) -> tuple[int, int]:
        """pi's ``getActiveInstancesForModel`` and ``getModelParallelLimit`` for any
        model name, as an observer of this fleet; raises
        :class:`~core.semantics.PiPatternError` where pi's code throws."""
        alive = semantics.directory_order(
            (v.info for v in self.instances if v.counted and v.info is not None), lambda i: i.instance_id + INSTANCES.suffix
        )
        matching = semantics.pi_instances_for_model(alive, provider, model)
        return matching, semantics.model_parallel_limit(self.figures.parallel_limit, matching)

    def find_instances(self, query: str) -> list[InstanceView]:
        """Instances a person named: by exact id, else by name (``PI_INSTANCE_ID``), else by
        the label the dashboard shows, else by id prefix."""
        for match in (
            lambda v: v.instance_id == query,
            lambda v: v.info is not None and v.info.instance_name == query,
            lambda v: v.label == query,
            lambda v: v.instance_id.startswith(query),
        ):
            found = [v for v in self.instances if match(v)]
            if found:
                return found
        return []

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (camelCase records as on disk, snake_case figures)."""
        return self._document(_record_as_dict)

    def write_json(self, out: BinaryIO) -> None:
        """Write :meth:`to_dict` to ``out`` as UTF-8 JSON, laid out as
        ``json.dumps(..., indent=2, ensure_ascii=False)`` lays it out.

        pydantic's serialiser writes the records as they are (never as
        intermediate dicts) a slice of each list at a time: for 10,000
        instances several times faster than ``json.dumps`` (whose indenting
        encoder is pure Python), and the fleet never exists as dicts or as one
        11 MB string.  Raw line breaks only ever separate values (inside
        strings they are escaped), which is what makes re-indenting a slice safe,
        and what lets :func:`_instances_json` put each instance's record in place.
        """
        out.write(b"{")
        for n, (key, value) in enumerate(self._document(_record_as_is).items()):
            out.write(b",\n  " if n else b"\n  ")
            out.write(_json(key) + b": ")
            if not (isinstance(value, list) and value):
                out.write(_json(value).replace(b"\n", b"\n  "))
                continue
            write_slice = _instances_json if key == "instances" else _json
            out.write(b"[")
            for start in range(0, len(value), _JSON_SLICE):
                # "[\n  a,\n  b\n]" -> "\n    a,\n    b", one level deeper
                items = write_slice(value[start : start + _JSON_SLICE])[1:-2].replace(b"\n", b"\n  ")
                out.write(b"," + items if start else items)
            out.write(b"\n  ]")
        out.write(b"\n}")

    def _document(self, record: Callable[[Record], Any]) -> dict[str, Any]:
        """The one definition of the description; ``record`` renders each persisted record."""
        return {
            "takenAtMs": self.taken_at_ms,
            "source": self.source,
            "notice": self.notice,
            "config": record(self.config),
            "figures": {
                "activeCount": self.figures.active_count,
                "parallelLimit": self.figures.parallel_limit,
                "totalPending": self.figures.total_pending,
                "stealableTasks": self.figures.stealable_tasks,
                "idleInstances": self.figures.idle_instances,
                "busyInstances": self.figures.busy_instances,
                "statusCounts": {s.value: n for s, n in self.figures.status_counts.items()},
                "remoteInstances": self.figures.remote_instances,
                "remoteCapacity": self.figures.remote_capacity,
                "stealWork": record(self.figures.steal_work) if self.figures.steal_work else None,
                "stealCandidate": self.figures.steal_candidate,
                "stealCandidates": list(self.figures.steal_candidates),
                "claimableTasks": self.figures.claimable_tasks,
                "activeInstanceIds": list(self.figures.active_instance_ids),
                "cleanupWouldDelete": list(self.figures.cleanup_would_delete),
            },
            "instances": [
                {
                    "key": i.key,
                    "label": i.label,
                    "status": i.status.value,
                    "counted": i.counted,
                    "pidRunning": i.pid_running.value,
                    "heartbeatAgeMs": i.heartbeat_age_ms,
                    "parallelLimit": i.parallel_limit,
                    "problem": i.problem,
                    "honoursClaims": i.honours_claims,
                    "modelLimits": [
                        {"provider": m.provider, "model": m.model, "instances": m.instances, "limit": m.limit, "rule": m.rule}
                        for m in i.model_limits
                    ],
                    "stealingStats": _stats_dict(i),
                    "info": record(i.info) if i.info else None,
                    # null for an instance that is not running; recordsWaits false for pi's own
                    "recordsWaits": w.records_waits if (w := self.waits.get(i.instance_id)) else None,
                    "waits": [r.to_dict() for r in w.reasons] if w else None,
                }
                for i in self.instances
            ],
            "queues": [
                {
                    "instanceId": q.instance_id,
                    "ageMs": q.age_ms,
                    "fresh": q.fresh,
                    "claimedEntries": q.claimed_entries,
                    "pendingTaskCount": q.state.pending_task_count,
                    "activeOrchestrations": q.state.active_orchestrations,
                    "stealableEntries": len(q.state.stealable_entries),
                    "claimableEntries": len(q.state.claimable_entries or ()),
                }
                for q in self.queues
            ],
            "locks": [
                {
                    "key": lv.key,
                    "resource": lv.resource,
                    "lockId": lv.lock.lock_id if lv.lock else None,
                    "holder": lv.lock.holder if lv.lock else None,
                    "held": lv.held,
                    "piWouldGrant": not lv.held,
                    "ageMs": lv.age_ms,
                    "ttlLeftMs": lv.ttl_left_ms,
                    "expired": lv.expired,
                    "problem": lv.problem,
                }
                for lv in self.locks
            ],
            "models": [
                {
                    "provider": m.provider,
                    "model": m.model,
                    "instanceCount": m.instance_count,
                    "matchingInstances": m.matching_instances,
                    "parallelLimit": m.parallel_limit,
                }
                for m in self.models
            ],
            "stealing": {
                "attempts": self.stealing.attempts,
                "successes": self.stealing.successes,
                "failures": self.stealing.failures,
                "successRate": self.stealing.success_rate,
                "avgLatencyMs": self.stealing.avg_latency_ms,
                "lastSuccessAt": self.stealing.last_success_at,
                "claims": self.stealing.claims,
                "unrecordedInstances": self.stealing.unrecorded_instances,
            },
            "problems": [{"kind": p.kind, "where": p.where, "message": p.message} for p in self.problems],
            "parallelism": [
                {"instanceId": v.instance_id, "ageMs": v.age_ms, **_record_as_dict(v.state)}
                for v in self.parallelism
            ],
            "backoffs": [
                {
                    "provider": b.provider,
                    "model": b.model,
                    "until": b.until,
                    "remainingMs": b.remaining_ms,
                    "recent429s": b.recent429s,
                    "lastReportedBy": b.last_reported_by,
                    "instancesWaiting": b.instances_waiting,
                }
                for b in self.backoffs
            ],
            "rateLimits": [
                {
                    "provider": r.provider,
                    "requestsPerMinute": r.requests_per_minute,
                    "burst": r.burst,
                    "effectiveRequestsPerMinute": r.effective_requests_per_minute,
                    "usedLastMinute": r.used_last_minute,
                    "backlogMs": r.backlog_ms,
                    "last429At": r.last429_at,
                }
                for r in self.rate_limits
            ],
            "events": [record(e) for e in self.events],
            "controls": [
                {"instanceId": c.instance_id, "state": c.state, **_record_as_dict(c.request)}
                for c in self.controls
            ],
        }


NOT_RECORDED = "not recorded (pi keeps stealing statistics in its process memory only)"


def _stats_dict(view: InstanceView) -> dict[str, Any] | str | None:
    if view.info is None:
        return None
    if not view.stats_recorded:
        return NOT_RECORDED
    stats = view.stats
    if stats is None:
        return {"attempts": 0, "successes": 0, "failures": 0, "successRate": 0.0, "lastSuccessAt": None}
    return {
        "attempts": stats.total_attempts,
        "successes": stats.successful_steals,
        "failures": stats.failed_attempts,
        "successRate": stats.success_rate,
        "lastSuccessAt": stats.last_success_at,
    }


_JSON_SLICE = 500  # list items serialised at a time by write_json


def _json(value: Any) -> bytes:
    try:
        return pydantic_core.to_json(value, indent=2, by_alias=True)
    except pydantic_core.PydanticSerializationError:
        # Text that is no Unicode (a file name's undecodable bytes): escaped, as
        # json.dumps escapes it, in a slice that stays valid UTF-8 JSON.
        return json.dumps(value, indent=2, default=_record_as_dict).encode()


_INFO = b'\n    "info": '  # an instance entry's key, as _json writes a list of them


def _instances_json(entries: list[dict[str, Any]]) -> bytes:
    """``_json(entries)``, each ``info`` record written by its own :meth:`Record.to_json`
    (which spares most records pydantic's call back into Python): the entries are
    written with ``info`` null, and each ``"info": null`` at an entry's depth (four
    spaces, where no nested key can be) takes its record's text, indented to match."""
    records = [entry["info"] for entry in entries]
    try:
        texts = [b"null" if r is None else r.to_json().replace(b"\n", b"\n    ") for r in records]
        for entry in entries:
            entry["info"] = None
        parts = _json(entries).split(_INFO + b"null")
    except pydantic_core.PydanticSerializationError:
        for entry, record in zip(entries, records):
            entry["info"] = record
        return _json(entries)  # text that is no Unicode: json.dumps escapes the whole slice, as before
    assert len(parts) == len(entries) + 1
    return parts[0] + b"".join(_INFO + text + part for text, part in zip(texts, parts[1:]))


def _record_as_dict(record: Record) -> dict[str, Any]:
    return record.model_dump(mode="json", by_alias=True)


def _record_as_is(record: Record) -> Record:
    return record


def _lock_clock_problem(key: str, lock: DistributedLock, offset_ms: int) -> Problem:
    """A lock written by a holder whose clock is off: ``expiresAt`` means something else
    to everyone else, so the lock is judged by its file's age (``core.locks``)."""
    direction = "ahead of" if offset_ms > 0 else "behind"
    consequence = (
        "an abandoned lock stays held that much longer"
        if offset_ms > 0
        else f"the lock is still held until its file is {lock.lease_ms() // 1000} s old"
    )
    return Problem(
        "clock-skew",
        where(LOCKS, key),
        f"holder {lock.holder}'s clock was {abs(offset_ms) / 1000:.0f} s {direction} the file system's "
        f"when it wrote the lock; {consequence}",
    )


def _entry_problems(space: Space, entries: Mapping[str, Loaded[Any]]) -> list[Problem]:
    problems = []
    for key, entry in entries.items():
        if entry.record is not None:
            kind = "unknown-version"
        elif entry.raw is None:
            kind = "unreadable"
        else:
            kind = "corrupt"
        problems.append(Problem(kind, where(space, key), entry.problem))
    return problems


class _AliveFigures(NamedTuple):
    model_limits: dict[str, tuple[InstanceModelLimit, ...]]
    plain_limit: int
    limits: dict[str, int]
    models: tuple[ModelView, ...]
    problems: tuple[Problem, ...]
    steal_candidates: tuple[str, ...]
    steal_candidate: str | None
    ids: tuple[str, ...]


_ViewParts = tuple[
    Judgment, list[Any], int | None, str, str | None, bool, InstanceParallelism | None, InstanceWaits | None
]


class _WaitInputs(NamedTuple):
    backoffs: dict[str, SharedBackoff]
    rates: dict[str, ProviderRateState]
    locks_on: dict[str, list[DistributedLock]]

_AGE = InstanceView._fields.index("heartbeat_age_ms")
_QUEUE = InstanceView._fields.index("queue")


def _queue_parts(
    key: str, state: BroadcastQueueState, now: int, claims: dict[str, int]
) -> tuple[BroadcastQueueState, int, int, str, bool, str | None, int]:
    """What a queue state's view holds over a span of ``now``: the state, the span
    (from, until), its owner, whether it is fresh, the file pi's cleanup would remove
    (or None) and the claims on its entries."""
    age = semantics.queue_age_ms(state, now)
    fresh = semantics.is_fresh_queue_age(age)
    expired = not fresh and semantics.is_expired_queue_age(age)
    # Fresh while the age is at most QUEUE_FRESH_MS, expired once it is past QUEUE_EXPIRY_MS.
    turns = (state.timestamp_ms + semantics.QUEUE_FRESH_MS + 1, state.timestamp_ms + semantics.QUEUE_EXPIRY_MS + 1)
    return (
        state,
        *span(turns, now),
        state.instance_id,
        fresh,
        where(QUEUES, key) if expired else None,
        claims.get(state.instance_id, 0),
    )


class _QueueFigures(NamedTuple):
    summary: semantics.WorkStealingSummary
    steal_work: StealableQueueEntry | None
    remote_capacity: bool
    claimable_tasks: int


@dataclass(frozen=True, slots=True)
class _Index:
    generations: tuple[int, ...]
    instances: list[tuple[str, Loaded[InstanceInfo]]]
    queues: list[tuple[str, BroadcastQueueState]]
    queue_by_id: dict[str, BroadcastQueueState]
    stats_by_id: dict[str, StealingStats]
    parallelism_by_id: dict[str, InstanceParallelism]
    claims_per_owner: dict[str, int]
    claims: int
    locks: list[tuple[str, Loaded[DistributedLock]]]
    entry_problems: list[Problem]


class SnapshotBuilder:
    """Builds successive :class:`FleetSnapshot` values of one store, incrementally."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        config: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        check_pids: bool = True,
        liveness: LivenessCache | None = None,
    ) -> None:
        """``liveness``: the answers about pids to use (by default the builder's own);
        builders sharing one see each pid alike at each instant."""
        self.store = store
        self.clock = clock
        self._config_overrides = config
        self._env = env
        self._judge = Judge((liveness or LivenessCache()) if check_pids else None)
        self._strays: list[Problem] = []
        self._notice: str | None = None
        self._last_index: _Index | None = None
        self._alive_memo: tuple[tuple[object, ...], _AliveFigures] | None = None
        self._labels_memo: tuple[list[Labelled], Labels] | None = None
        self._queue_memo: tuple[tuple[int, int], _QueueFigures] | None = None
        self._views_kept: dict[str, _ViewParts] = {}
        self._views_shown: tuple[object, ...] | None = None
        self._built = False
        self._queues_kept: dict[str, tuple[BroadcastQueueState, int, int, str, bool, str | None, int]] = {}
        self._queues_claims: dict[str, int] | None = None
        self._orders: dict[Space, list[str]] = {}
        self._derived: dict[Space, tuple[int, Any]] = {}
        self._caches: dict[Space, RecordCache[Any]] = {
            INSTANCES: RecordCache(store, INSTANCES, InstanceInfo),
            QUEUES: RecordCache(store, QUEUES, BroadcastQueueState),
            LOCKS: RecordCache(store, LOCKS, DistributedLock),
            STEALING_STATS: RecordCache(store, STEALING_STATS, StealingStats),
            CLAIMS: RecordCache(store, CLAIMS, StealClaim),
            PARALLELISM: RecordCache(store, PARALLELISM, InstanceParallelism),
            CONTROL: RecordCache(store, CONTROL, ControlRequest),
            BACKOFF: RecordCache(store, BACKOFF, SharedBackoff),
            RATE_LIMITS: RecordCache(store, RATE_LIMITS, ProviderRateState),
        }
        self._events = EventLog(store)
        self._event_cursor = 0
        self._recent_events: deque[FleetEvent] = deque(maxlen=EVENTS_KEPT)
        self._unreadable_events = 0
        self._event_count = 0

    def build(self, changed: Mapping[Space, Iterable[str]] | None = None) -> FleetSnapshot:
        """A snapshot as of now.

        ``changed`` names the keys a watcher saw change, per space; spaces it
        leaves out are not looked at.  Without it every space is rescanned
        (one directory listing each) and only changed entries are re-read.
        Raises :class:`~core.store.StoreUnavailable` if the store cannot be read.
        """
        self.store.check()
        for space, cache in self._caches.items():
            if changed is None:
                cache.refresh()
            elif space in changed:
                cache.refresh(changed[space])
        if changed is None:
            self._notice = self.store.layout_notice()
            self._strays = [
                Problem("stray", f"{space.name}/{name}", "not a file pi or pi-dash writes here; ignored")
                for space in self._caches
                for name in self.store.strays(space)
            ] + [Problem("unreadable", path, reason) for path, reason in self.store.event_log_problems()]
        self._tail_events()
        config, config_problems = load_config(self.store, self._config_overrides, self._env)
        with cyclic_gc_paused():
            return self._compose(self.clock.now_ms(), config, config_problems)

    def _tail_events(self) -> None:
        """Read what was appended to the event log since the last build."""
        try:
            while True:
                events, self._event_cursor, bad = self._events.read(self._event_cursor, EVENTS_KEPT)
                self._recent_events.extend(events)
                self._event_count += len(events)
                self._unreadable_events += bad
                if len(events) + bad < EVENTS_KEPT:
                    break
        except (StoreError, OSError):
            pass  # the log is advisory: the rest of the snapshot still stands

    def _in_directory_order(self, space: Space) -> list[tuple[str, Loaded[Any]]]:
        """A space's entries as pi lists them (sorted by name; pi's ties keep that
        order).  The order is sorted again only when the set of names changed:
        most rebuilds follow a rewrite, not a new or removed file."""
        entries = self._caches[space].entries
        keys = self._orders.get(space)
        if keys is None or len(keys) != len(entries) or not all(key in entries for key in keys):
            keys = self._orders[space] = semantics.directory_order(entries, lambda key: key + space.suffix)
        return [(key, entries[key]) for key in keys]

    def _index(self) -> _Index:
        """Lookups that change only when some space's content changes."""
        generations = tuple(cache.generation for cache in self._caches.values())
        if self._last_index is not None and self._last_index.generations == generations:
            return self._last_index
        queues, queue_by_id = self._per_space(QUEUES, self._queues)
        problems = []
        for space, cache in self._caches.items():
            problems.extend(_entry_problems(space, cache.problems))
        self._last_index = _Index(
            generations=generations,
            instances=self._per_space(INSTANCES, lambda: self._in_directory_order(INSTANCES)),
            queues=queues,
            queue_by_id=queue_by_id,
            stats_by_id=self._per_space(
                STEALING_STATS, lambda: {s.instance_id: s for s in self._caches[STEALING_STATS].records()}
            ),
            parallelism_by_id=self._per_space(
                PARALLELISM, lambda: {p.instance_id: p for p in self._caches[PARALLELISM].records()}
            ),
            claims_per_owner=self._per_space(CLAIMS, self._claims_per_owner),
            claims=len(self._caches[CLAIMS].entries),
            locks=self._per_space(LOCKS, lambda: list(self._caches[LOCKS].entries.items())),
            entry_problems=problems,
        )
        return self._last_index

    def _per_space(self, space: Space, make: Callable[[], T]) -> T:
        """What ``make`` derives from ``space`` alone, made again only when that space
        changed: a heartbeat changes the instances, not the queues' lookups."""
        generation = self._caches[space].generation
        found = self._derived.get(space)
        if found is None or found[0] != generation:
            found = self._derived[space] = (generation, make())
        return found[1]

    def _queues(self) -> tuple[list[tuple[str, BroadcastQueueState]], dict[str, BroadcastQueueState]]:
        queues = [(key, e.record) for key, e in self._in_directory_order(QUEUES) if e.record is not None]
        return queues, {q.instance_id: q for _, q in queues}

    def _claims_per_owner(self) -> dict[str, int]:
        claims_per_owner: dict[str, int] = {}
        for key, loaded in self._caches[CLAIMS].entries.items():
            owner = claim_pair(key, loaded.record)[0]
            claims_per_owner[owner] = claims_per_owner.get(owner, 0) + 1
        return claims_per_owner

    def _control_views(self, now: int, config: CoordinatorConfig, index: _Index) -> tuple[ControlView, ...]:
        present = self._caches[INSTANCES].entries
        views = []
        for request in self._caches[CONTROL].records():
            if request.completed_at is not None:
                state = "offline" if request.instance_id not in present else "completed"
            elif request.acknowledged_at is not None:
                state = "acknowledged"
            elif now - request.requested_at > ACK_INTERVALS * config.heartbeat_interval_ms:
                state = "not-acknowledged"
            else:
                state = "pending"
            views.append(ControlView(request.instance_id, request, state))
        return tuple(views)

    def _skewed_deadlines(self, now: int) -> list[Problem]:
        """429 deadlines later than any Retry-After could set now."""
        problems = []
        for key, loaded in self._caches[BACKOFF].entries.items():
            if loaded.record is None:
                continue
            skew = deadline_skew_ms(loaded.record, now)
            if skew > CLOCK_SKEW_TOLERANCE_MS:
                problems.append(
                    Problem(
                        "clock-skew",
                        where(BACKOFF, key),
                        f"429 deadline set {skew // 1000} s past the longest Retry-After "
                        f"({MAX_RETRY_AFTER_MS // 1000} s): the writer's clock is ahead; honoured for "
                        f"{MAX_RETRY_AFTER_MS // 1000} s at most",
                    )
                )
        return problems

    def _backoff_views(self, now: int, alive: list[InstanceInfo]) -> tuple[BackoffView, ...]:
        views = []
        for loaded in self._caches[BACKOFF].entries.values():
            backoff = loaded.record
            if backoff is None:
                continue
            recent = [e for e in backoff.recent429s if e.at > now - BACKOFF_WINDOW_MS]
            until = honoured_until(backoff, now, now - loaded.modified_ms)
            views.append(
                BackoffView(
                    backoff.provider,
                    backoff.model,
                    until,
                    max(0, until - now),
                    len(recent),
                    backoff.recent429s[-1].instance_id if backoff.recent429s else None,
                    sum(1 for i in alive if uses_model(i, backoff.provider, backoff.model)),
                )
            )
        return tuple(views)

    def _rate_limit_views(self, now: int) -> tuple[RateLimitView, ...]:
        views = []
        for state in self._caches[RATE_LIMITS].records():
            views.append(
                RateLimitView(
                    state.provider,
                    state.requests_per_minute,
                    state.burst,
                    state.effective_requests_per_minute,
                    state.used_last_minute(now),
                    state.next_slot_ms(now),
                    state.last429_at,
                )
            )
        return tuple(views)

    def _wait_inputs(self, index: _Index) -> _WaitInputs:
        """What :func:`~core.waits.instance_waits` reads besides the instance: the fleet's
        backoffs and rate limiters, and the locks on each steal resource."""
        backoffs = {f"{b.provider}:{b.model}": b for b in self._caches[BACKOFF].records()}
        rates = {r.provider: r for r in self._caches[RATE_LIMITS].records()}
        locks_on: dict[str, list[DistributedLock]] = {}
        for _, entry in index.locks:
            lock = entry.record
            if lock is not None and lock.resource.startswith(STEAL_PREFIX):
                locks_on.setdefault(lock.resource, []).append(lock)
        return _WaitInputs(backoffs, rates, locks_on)

    @staticmethod
    def _instance_model_limits(
        alive: list[InstanceInfo], index: semantics.ModelIndex, plain: int
    ) -> dict[str, tuple[InstanceModelLimit, ...]]:
        known: dict[tuple[str, str, str], InstanceModelLimit] = {}
        by_models: dict[tuple[bool, tuple[tuple[str, str], ...]], tuple[InstanceModelLimit, ...]] = {}

        def limit_of(rule: str, provider: str, model: str) -> InstanceModelLimit:
            found = known.get((rule, provider, model))
            if found is None:
                try:
                    count: int | None = (
                        index.pi_count(provider, model) if rule == "pi" else max(1, index.core_count(provider, model))
                    )
                except semantics.PiPatternError:
                    count = None
                limit = None if count is None else semantics.model_parallel_limit(plain, count)
                found = known[(rule, provider, model)] = InstanceModelLimit(provider, model, count, limit, rule)
            return found

        limits = {}
        for i in alive:
            if not i.active_models:
                continue
            key = (bool(i.honours_claims), i.model_pairs)
            found = by_models.get(key)
            if found is None:
                rule = "core" if key[0] else "pi"
                found = by_models[key] = tuple(limit_of(rule, p, m) for p, m in key[1])
            limits[i.instance_id] = found
        return limits

    def _alive_figures(self, alive: list[InstanceInfo], keys: list[object], config: CoordinatorConfig) -> _AliveFigures:
        """What depends only on the alive set (in directory order): limits, models, candidates.

        ``keys`` holds what these figures read of each alive record
        (:func:`~core.judgments.figures_key`): recomputed only when one of those
        changed, not when a heartbeat rewrote a file.
        """
        memo_key = (config.total_max_llm, *keys)
        if self._alive_memo is not None and self._alive_memo[0] == memo_key:
            return self._alive_memo[1]
        plain = semantics.parallel_limit(config.total_max_llm, semantics.active_count(alive))
        shares = semantics.fleet_dynamic_limits(config.total_max_llm, [r.pending for r in alive], plain)
        limits = dict(zip((r.instance_id for r in alive), shares))
        models = []
        problems = []
        index = semantics.ModelIndex(alive)
        for provider, model, count in semantics.model_usage(alive):
            try:
                matching: int | None = index.pi_count(provider, model)
            except semantics.PiPatternError as exc:
                matching = None
                problems.append(Problem("model-pattern", f"{provider}:{model}", str(exc)))
            core_count = index.core_count(provider, model)
            if matching is not None and max(1, core_count) != matching:
                problems.append(
                    Problem(
                        "model-pattern",
                        f"{provider}:{model}",
                        f"pi counts {matching} instance(s) using it, core {core_count}: pi's code reads * and ? "
                        "as regular-expression operators, core as globs, so their model limits differ",
                    )
                )
            limit = None if matching is None else semantics.model_parallel_limit(plain, matching)
            models.append(ModelView(provider, model, count, limit, matching))
        candidate = semantics.find_steal_candidate(alive)
        result = _AliveFigures(
            self._instance_model_limits(alive, index, plain),
            plain,
            limits,
            tuple(models),
            tuple(problems),
            tuple(semantics.work_stealing_candidates(alive, None)),
            candidate.instance_id if candidate else None,
            tuple(r.instance_id for r in alive),
        )
        self._alive_memo = (memo_key, result)
        return result

    def _instance_views(
        self,
        judged: list[Judgment],
        now: int,
        index: _Index,
        shown: tuple[_AliveFigures, Labels, dict[str, StealingStats], dict[str, InstanceParallelism]],
        doomed: list[str],
        waiting: _WaitInputs,
        keep: bool,
    ) -> tuple[list[InstanceView], dict[Status, int], int, list[ModelParallelismView], dict[str, InstanceWaits]]:
        """Every instance's view at ``now``, its status counted; adds to ``doomed`` the files
        pi's cleanup would remove.  Returns the views, the counts, how many counted
        instances no file gives statistics for, the adjusters' states, and why each
        counted instance waits (:mod:`core.waits`).

        From one build to the next a view changes only by its heartbeat age and its
        queue state (rewritten with every heartbeat) unless its judgment changed, or
        what it shows of the fleet (``shown``: limits, labels, statistics,
        adjusters): the rest is kept per judgment, as a view with those two blank.
        Most instances of a large fleet have nothing to say about waiting (pi's
        own, no lock on their queue): their one unchanging answer is kept with it.
        Nothing is kept unless ``keep``.
        """
        kept = self._views_kept
        if self._views_shown is None or any(a is not b for a, b in zip(shown, self._views_shown)):
            kept.clear()
            self._views_shown = shown
        elif len(kept) > 2 * len(judged) + 100:
            kept.clear()  # gone instances
        queue_by_id = index.queue_by_id
        new_view = tuple.__new__  # InstanceView from a list of its fields, as its __new__ would make it
        views = []
        counts = dict.fromkeys(Status, 0)
        unrecorded = 0
        parallelism_views = []
        waits = {}
        backoffs, rates, locks_on = waiting
        for judgment in judged:
            found = kept.get(judgment.key)
            if found is None or found[0] is not judgment:
                found = self._view_parts(judgment, shown)
                if keep:
                    kept[judgment.key] = found
            _, fields, heartbeat_ms, instance_id, gone, unrecorded_one, parallelism, quiet = found
            fields = fields.copy()
            if heartbeat_ms is not None:
                fields[_AGE] = now - heartbeat_ms
            fields[_QUEUE] = queue_by_id.get(instance_id)
            views.append(new_view(InstanceView, fields))
            counts[judgment.status] += 1
            if gone is not None:
                doomed.append(gone)
            if not judgment.counted:
                continue
            unrecorded += unrecorded_one
            if parallelism is not None:
                parallelism_views.extend(
                    ModelParallelismView(instance_id, state, now - parallelism.updated_at)
                    for state in parallelism.models.values()
                )
            on = locks_on.get(steal_resource(instance_id), ()) if locks_on else ()
            if quiet is None or on:
                info = judgment.entry.record  # type: ignore[union-attr]  # counted: read
                quiet = instance_waits(info, parallelism, backoffs, rates, on, now)  # type: ignore[arg-type]
            waits[instance_id] = quiet
        return views, counts, unrecorded, parallelism_views, waits

    @staticmethod
    def _view_parts(
        judgment: Judgment, shown: tuple[_AliveFigures, Labels, dict[str, StealingStats], dict[str, InstanceParallelism]]
    ) -> _ViewParts:
        """An instance's view but for its age and queue state (the fields, as a list), its
        heartbeat and id, the file pi's cleanup would remove (or None), whether it is a
        counted instance no file gives statistics for, and its adjuster if counted (in-flight
        counts of dead instances are not shown: their slots died with them) and, if
        nothing can hold it back, why it waits (it does not: pi's own record no waits)."""
        alive_figures, labels, stats_by_id, parallelism_by_id = shown
        entry = judgment.entry
        info = entry.record if entry is not None else None
        instance_id = info.instance_id if info is not None else judgment.key
        counted = judgment.counted
        parallelism = parallelism_by_id.get(instance_id)
        stats = stats_by_id.get(instance_id)
        fields = [
            judgment.key,
            info,
            judgment.status,
            None,  # the heartbeat's age: put in at each build
            counted,
            judgment.liveness,
            alive_figures.limits.get(instance_id) if counted else None,
            None,  # the queue state: put in at each build
            stats,
            entry.problem if entry is not None else None,
            parallelism,
            entry.raw if entry is not None else None,
            alive_figures.model_limits.get(instance_id, ()) if counted else (),
            labels[instance_id],
        ]
        if info is None:
            return judgment, fields, None, instance_id, None, False, None, None
        if not counted:
            return judgment, fields, info.heartbeat_ms, instance_id, where(INSTANCES, judgment.key), False, None, None
        unrecorded = stats is None and not info.honours_claims
        quiet = InstanceWaits(instance_id, False) if parallelism is None and info.draining_since is None else None
        return judgment, fields, info.heartbeat_ms, instance_id, None, unrecorded, parallelism, quiet

    def _queue_views(
        self, index: _Index, now: int, doomed: list[str], keep: bool
    ) -> tuple[list[QueueView], list[BroadcastQueueState]]:
        """Every queue state's view at ``now``, and the fresh states (in directory order);
        adds to ``doomed`` the expired ones pi's cleanup would remove.

        Whether a state is fresh or expired is kept per state with the span of
        ``now`` over which it holds (its age below or past pi's thresholds):
        each build puts in only the age.
        """
        kept = self._queues_kept
        claims = index.claims_per_owner
        if claims is not self._queues_claims or len(kept) > 2 * len(index.queues) + 100:
            kept.clear()
            self._queues_claims = claims
        new_view = tuple.__new__  # a QueueView from its fields, as its __new__ would make it
        views = []
        fresh_states = []
        for key, state in index.queues:
            found = kept.get(key)
            if found is None or found[0] is not state or not found[1] <= now < found[2]:
                found = _queue_parts(key, state, now, claims)
                if keep:
                    kept[key] = found
            _, _, _, instance_id, fresh, gone, claimed = found
            views.append(new_view(QueueView, (instance_id, state, now - state.timestamp_ms, fresh, claimed)))
            if fresh:
                fresh_states.append(state)
            elif gone is not None:
                doomed.append(gone)
        return views, fresh_states

    def _fresh_queue_figures(self, fresh: list[BroadcastQueueState]) -> _QueueFigures:
        """pi's work-stealing figures over the fresh queue states (in directory order).

        Within one generation of the queue files the fresh set only changes as
        time passes, losing its oldest (or, the clock set back, regaining
        them), so its size identifies it: recomputed only when the files or
        that size change.
        """
        memo_key = (self._caches[QUEUES].generation, len(fresh))
        if self._queue_memo is not None and self._queue_memo[0] == memo_key:
            return self._queue_memo[1]
        steal = semantics.pick_steal_entry(fresh)
        result = _QueueFigures(
            semantics.work_stealing_summary(fresh),
            steal[1] if steal else None,
            semantics.has_remote_capacity(fresh),
            sum(len(s.claimable_entries or ()) for s in fresh),
        )
        self._queue_memo = (memo_key, result)
        return result

    def _labels(self, judged: list[Judgment]) -> Labels:
        """Every instance's label (:mod:`core.labels`), made again only when the set of
        instances (ids, names, pids) changed: a heartbeat rewrites a file, not the set."""
        members = [j.labelled for j in judged]
        if self._labels_memo is not None and self._labels_memo[0] == members:
            return self._labels_memo[1]
        labels = Labels(instance_labels(members))
        self._labels_memo = (members, labels)
        return labels

    def _unreadable_pi_deletes(self, now: int, config: CoordinatorConfig) -> list[str]:
        """The unreadable files of pi's spaces that pi's cleanup would remove now
        (the readable ones are judged where the snapshot looks at them anyway)."""
        return [
            where(space, key)
            for space in (INSTANCES, QUEUES, LOCKS)
            for key, entry in self._caches[space].problems.items()
            if entry.record is None
            and semantics.pi_deletes_unreadable(space.name, entry.raw, now, config.heartbeat_timeout_ms)
        ]

    def _compose(self, now: int, config: CoordinatorConfig, config_problems: list[ConfigProblem]) -> FleetSnapshot:
        index = self._index()
        problems = [Problem("config", p.where, p.message) for p in config_problems]
        problems.extend(index.entry_problems)
        problems.extend(self._strays)
        problems.extend(self._skewed_deadlines(now))

        # A builder's first build (all `pi-dash status` makes) keeps nothing for the next.
        keep = self._built
        self._built = True
        judged = self._judge.judge_all(index.instances, now, config, keep)
        alive_records: list[InstanceInfo] = []
        alive_keys: list[object] = []
        for judgment in judged:
            if judgment.problems:
                problems.extend(judgment.problems)
            if judgment.counted:
                alive_records.append(judgment.entry.record)  # type: ignore[union-attr]  # counted: read
                alive_keys.append(judgment.figures_key)

        control_views = self._control_views(now, config, index)
        for view in control_views:
            if view.state == "offline":
                judged.append(offline(view.instance_id))
            elif view.state == "not-acknowledged":
                problems.append(
                    Problem(
                        "not-acknowledged",
                        where(CONTROL, view.instance_id),
                        f"{view.request.action} requested {(now - view.request.requested_at) // 1000} s ago; "
                        "the instance does not answer control requests (pi's own instances do not)",
                    )
                )

        alive_figures = self._alive_figures(alive_records, alive_keys, config)
        labels = self._labels(judged)
        limits = alive_figures.limits
        model_limits = alive_figures.model_limits
        problems.extend(alive_figures.problems)
        doomed = self._unreadable_pi_deletes(now, config)  # what pi's cleanup would remove now
        views, counts, unrecorded, parallelism_views, waits = self._instance_views(
            judged,
            now,
            index,
            (alive_figures, labels, index.stats_by_id, index.parallelism_by_id),
            doomed,
            self._wait_inputs(index),
            keep,
        )

        queue_views, fresh_states = self._queue_views(index, now, doomed, keep)

        lock_views = []
        for key, entry in index.locks:
            lock = entry.record
            if lock is None:
                lock_views.append(LockView(key, None, None, None, False, entry.problem))
            else:
                expired = lock.is_expired(now)
                if expired:
                    doomed.append(where(LOCKS, key))
                offset = lock.writer_offset_ms(entry.modified_ms)
                if abs(offset) > CLOCK_SKEW_TOLERANCE_MS:
                    problems.append(_lock_clock_problem(key, lock, offset))
                lock_views.append(LockView(key, lock, now - lock.acquired_at, lock.ttl_left_ms(now), expired, entry.problem))

        all_stats = index.stats_by_id.values()
        latencies = [s.avg_latency_ms for s in all_stats if s.total_attempts]
        stealing = StealingTotals(
            attempts=sum(s.total_attempts for s in all_stats),
            successes=sum(s.successful_steals for s in all_stats),
            failures=sum(s.failed_attempts for s in all_stats),
            avg_latency_ms=sum(latencies) / len(latencies) if latencies else 0.0,
            last_success_at=max((s.last_success_at for s in all_stats if s.last_success_at), default=None),
            claims=index.claims,
            unrecorded_instances=unrecorded,
        )
        summary, steal, remote_capacity, claimable = self._fresh_queue_figures(fresh_states)
        figures = FleetFigures(
            active_count=semantics.active_count(alive_records),
            parallel_limit=alive_figures.plain_limit,
            total_pending=summary.total_pending_tasks,
            stealable_tasks=summary.stealable_tasks,
            idle_instances=summary.idle_instances,
            busy_instances=summary.busy_instances,
            status_counts=counts,
            remote_instances=summary.remote_instances,
            remote_capacity=remote_capacity,
            steal_work=steal,
            steal_candidate=alive_figures.steal_candidate,
            steal_candidates=alive_figures.steal_candidates,
            claimable_tasks=claimable,
            active_instance_ids=alive_figures.ids,
            cleanup_would_delete=tuple(sorted(doomed)),
        )
        if self._unreadable_events:
            problems.append(
                Problem("corrupt", "pi-dash/events", f"{self._unreadable_events} unreadable event line(s) skipped")
            )
        return FleetSnapshot(
            waits=waits,
            controls=control_views,
            parallelism=tuple(parallelism_views),
            backoffs=self._backoff_views(now, alive_records),
            rate_limits=self._rate_limit_views(now),
            events=tuple(self._recent_events),
            event_count=self._event_count,
            taken_at_ms=now,
            source=self.store.describe(),
            config=config,
            instances=tuple(views),
            queues=tuple(queue_views),
            locks=tuple(lock_views),
            models=alive_figures.models,
            stealing=stealing,
            figures=figures,
            problems=tuple(problems),
            notice=self._notice,
            labels=labels,
        )
