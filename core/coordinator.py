"""The cross-instance coordinator: seed 000's API for Python agents.

Registers this process in the coordination directory (or any store), keeps its
heartbeat going on a background thread, and answers the questions pi's
coordinator answers (how many instances are alive, what is my share of the
fleet's LLM slots, which model limits apply, whom can I steal work from) with
pi's own arithmetic (:mod:`core.semantics`), so Python and TypeScript
instances in one directory agree.  It adds what pi lacks: atomic files,
pid-aware dead detection, atomic locks, exactly-once steals and persisted
stealing statistics.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass

from . import semantics
from .backoff import BackoffBoard
from .clock import SYSTEM_CLOCK, Clock, utc_from_ms
from .config import load_config, work_stealing_enabled
from .control import read_request, update_request
from .events import EventLog
from .locks import DEFAULT_TTL_MS, LockService, to_base36
from .parallelism import AdjusterConfig, DynamicParallelismAdjuster
from .provider_config import ENV_INSTANCE_NAME, CrossInstanceSettings, config_path, load_settings
from .ratelimit import SharedRateLimiter
from .slots import LlmSlot, SlotGate
from .models import (
    ActiveModelInfo,
    BroadcastQueueState,
    CoordinatorConfig,
    DistributedLock,
    EntryLike,
    InstanceInfo,
    StealableQueueEntry,
    as_entry,
    StealClaim,
    StealingStats,
)
from . import procs
from .procs import HOSTNAME, Liveness, own_start_ms
from .semantics import WorkStealingSummary
from .stealing import StealingService, StolenWork, claim_pair
from .store import (
    CLAIMS,
    CONTROL,
    INSTANCES,
    LOCKS,
    PARALLELISM,
    QUEUES,
    STEALING_STATS,
    DirectoryStore,
    RecordCache,
    Store,
    StoreError,
    default_root,
)

log = logging.getLogger("pi_dash.core")

_PID_IN_ID = re.compile(r"-pid(\d+)-")
TEMP_FILE_MAX_AGE_MS = 60_000
CONTROL_POLL_S = 1.0
ORPHAN_STATS_MAX_AGE_MS = 24 * 3_600_000
ORPHAN_CONTROL_MAX_AGE_MS = 600_000


class NotRegistered(RuntimeError):
    """An operation that needs this instance's identity was called before :meth:`Coordinator.register`."""


def generate_instance_id(session_id: str, pid: int, now_ms: int) -> str:
    """pi's id: ``sess-{first 8 of sessionId}-pid{pid}-{Date.now() base 36}-{4 random base 36}``."""
    suffix = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(4))
    return f"sess-{session_id[:8]}-pid{pid}-{to_base36(now_ms)}-{suffix}"


def pid_from_instance_id(instance_id: str) -> int | None:
    match = _PID_IN_ID.search(instance_id)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class ModelUsage:
    provider: str
    model: str
    instance_count: int


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    registered: bool
    my_instance_id: str | None
    active_instance_count: int
    my_parallel_limit: int
    config: CoordinatorConfig
    instances: tuple[InstanceInfo, ...]


class Coordinator:
    """One instance's view of, and part in, the fleet."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        config: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        instance_name: str | None = None,
        settings: CrossInstanceSettings | None = None,
        parallelism: AdjusterConfig | None = None,
        offer_to_non_claiming: bool = False,
        allow_foreign_root: bool = False,
    ) -> None:
        """``offer_to_non_claiming``: also list this instance's stealable entries
        where pi's own thieves read them.  pi's thieves claim nothing and this
        instance runs its entries after claiming them, so such an entry may run
        twice: only for work that may.  ``allow_foreign_root``: use a root another
        user owns (refused by default: its owner could read every record and plant
        files)."""
        self.offer_to_non_claiming = offer_to_non_claiming
        self.store = (
            store if store is not None else DirectoryStore(default_root(root, env), allow_foreign_root=allow_foreign_root)
        )
        self.clock = clock
        self._env = os.environ if env is None else env
        self.instance_name = instance_name or self._env.get(ENV_INSTANCE_NAME) or None
        self._settings = settings
        self._parallelism_config = parallelism
        self.config, self.config_problems = load_config(self.store, config, env)
        for problem in self.config_problems:
            log.warning("config: %s", problem)
        self.work_stealing_enabled = work_stealing_enabled(env)
        self._instances = RecordCache(self.store, INSTANCES, InstanceInfo)
        self._queues = RecordCache(self.store, QUEUES, BroadcastQueueState)
        self._locks_cache = RecordCache(self.store, LOCKS, DistributedLock)
        self._claims_cache = RecordCache(self.store, CLAIMS, StealClaim)
        self._state = threading.RLock()
        self._info: InstanceInfo | None = None
        self._locks: LockService | None = None
        self._stealing: StealingService | None = None
        self._gate: SlotGate | None = None
        self.adjuster: DynamicParallelismAdjuster | None = None
        self.limiter: SharedRateLimiter | None = None
        self.events = EventLog(self.store, None, clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settled: dict[str, int] = {}  # own entries known to be done -> when we learnt it
        # The record caches are refreshed in place by the heartbeat thread and by callers.
        self._caches_guard = threading.RLock()

    # ----------------------------------------------------------- lifecycle
    def register(self, session_id: str | None = None, cwd: str | None = None, *, heartbeat: bool = True) -> InstanceInfo:
        """Write this instance's file and start heartbeating; call once at start-up.

        Idempotent and retryable: a call that raised (full disk, read-only
        directory) changed nothing, so calling again once the cause is fixed
        registers for real; a call on a registered instance returns its info
        and only starts the heartbeat if it is not running.
        """
        with self._state:
            if self._info is None:
                self.store.ensure_layout()
                now = self.clock.now_ms()
                session_id = session_id or secrets.token_hex(8)
                pid = os.getpid()
                info = InstanceInfo(
                    instance_id=generate_instance_id(session_id, pid, now),
                    pid=pid,
                    session_id=session_id,
                    started_at=utc_from_ms(now),
                    last_heartbeat=utc_from_ms(now),
                    cwd=os.getcwd() if cwd is None else cwd,
                    active_models=(),
                    hostname=HOSTNAME,
                    process_started_at=own_start_ms(),
                    instance_name=self.instance_name,
                    honours_claims=True,
                )
                self._locks = LockService(self.store, info.instance_id, self.clock)
                self.events = EventLog(self.store, info.instance_id, self.clock)
                self._stealing = StealingService(self.store, self._locks, info.instance_id, self.clock, self.events)
                self._start_slot_gate(info)
                self.store.write(INSTANCES, info.instance_id, info.to_json())  # raises: not registered, retry later
                self._info = info
            info = self._info
            if heartbeat and (self._thread is None or not self._thread.is_alive()):
                assert self.adjuster is not None
                self.adjuster.start_recovery_timer()
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat_loop, name="pi-dash-heartbeat", daemon=True)
                self._thread.start()
        return info

    def _start_slot_gate(self, info: InstanceInfo) -> None:
        settings = self._settings or load_settings(config_path(info.cwd, self._env))
        for problem in settings.problems:
            log.warning("config: %s", problem)
        self.settings = settings
        self.adjuster = DynamicParallelismAdjuster(
            self._parallelism_config, clock=self.clock, store=self.store, instance_id=info.instance_id
        )
        self.limiter = SharedRateLimiter(
            self.store, settings, instance_name=self.instance_name, clock=self.clock, events=self.events
        )
        self._gate = SlotGate(
            self.adjuster,
            self.limiter,
            BackoffBoard(self.store, info.instance_id, self.clock),
            self.events,
            instance_count=self.instances_for_model,
            on_model_used=self.set_active_model,
            clock=self.clock,
        )

    def llm_slot(self, provider: str, model: str, timeout: float | None = None) -> AbstractContextManager[LlmSlot]:
        """Wrap one LLM request: waits for the fleet's backoff, a parallelism slot and a rate token."""
        if self._gate is None:
            raise NotRegistered("call register() first")
        return self._gate.slot(provider, model, timeout)

    def llm_slot_async(
        self, provider: str, model: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[LlmSlot]:
        """``async with coordinator.llm_slot_async(...)``: the asyncio form of :meth:`llm_slot`."""
        if self._gate is None:
            raise NotRegistered("call register() first")
        return self._gate.slot_async(provider, model, timeout)

    def unregister(self) -> None:
        """Stop heartbeating and remove this instance's files; call on graceful shutdown."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._state:
            if self._info is None:
                return
            instance_id = self._info.instance_id
            self._info = None
            if self.adjuster is not None:
                self.adjuster.shutdown()
                self.adjuster.remove_record()
            self.store.delete(INSTANCES, instance_id)
            self.store.delete(QUEUES, instance_id)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()

    @property
    def is_initialized(self) -> bool:
        return self._info is not None

    @property
    def instance_id(self) -> str | None:
        return self._info.instance_id if self._info else None

    @property
    def info(self) -> InstanceInfo:
        if self._info is None:
            raise NotRegistered("call register() first")
        return self._info

    @property
    def total_max_llm(self) -> int:
        return self.config.total_max_llm

    def _update(self, **changes: object) -> None:
        with self._state:
            if self._info is None:
                raise NotRegistered("call register() first")
            self._info = self._info.model_copy(update=changes)
            self._write_info()

    def _write_info(self) -> None:
        assert self._info is not None
        self.store.write(INSTANCES, self._info.instance_id, self._info.to_json())

    def _heartbeat_loop(self) -> None:
        """Heartbeat every interval; look for control requests every second in between."""
        interval = self.config.heartbeat_interval_ms / 1000
        next_beat = time.monotonic() + interval
        while not self._stop.wait(min(CONTROL_POLL_S, max(0.0, next_beat - time.monotonic()))):
            try:
                self.check_control()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    self.enhanced_heartbeat()
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # the heartbeat thread must outlive any one bad round
                log.exception("heartbeat round failed")

    # -------------------------------------------------------------- control
    @property
    def draining(self) -> bool:
        """Asked to drain: finish current work, start and steal none, then :meth:`finish_drain`."""
        return self._info is not None and self._info.draining_since is not None

    def check_control(self) -> None:
        """Acknowledge a pending drain request, or resume when the request was withdrawn
        (``FleetControl.cancel_drain``); the heartbeat thread calls this every second."""
        if self._info is None:
            return
        with self._state:
            instance_id = self._info.instance_id
            if self.draining and self.store.read(CONTROL, instance_id) is None:
                self._update(draining_since=None)  # withdrawn: take and steal work again
                resumed = True
            else:
                resumed = False
                found = read_request(self.store, instance_id)
                if found is None or found[0].acknowledged_at is not None:
                    return
                request, seen = found
                now = self.clock.now_ms()
                # Acknowledge first: once `draining` is visible the agent may finish
                # at once, and its completion must find the acknowledgement written.
                if not update_request(self.store, request, seen, acknowledged_at=now):
                    return  # changed meanwhile: look again next second
                if not self.draining:  # a request made again after a cancel, before we resumed: still draining
                    self._update(draining_since=now)
        if resumed:
            self.events.emit("drain", f"{instance_id} resumes: its drain was cancelled")
            log.info("resuming: the drain request was withdrawn")
            return
        self.events.emit("drain", f"{instance_id} is draining (requested by {request.requested_by})")
        log.info("draining, as %s asked", request.requested_by)

    def finish_drain(self) -> None:
        """Work is done: record that, then leave the fleet (the dashboard shows it offline)."""
        if self._info is not None:
            with self._state:
                for _ in range(5):  # compare-and-swap: retried if the request changed meanwhile
                    found = read_request(self.store, self._info.instance_id)
                    if found is None or update_request(self.store, found[0], found[1], completed_at=self.clock.now_ms()):
                        break
            self.events.emit("drain", f"{self._info.instance_id} drained and went offline")
        self.unregister()

    # ------------------------------------------------------------ heartbeat
    def heartbeat(self) -> None:
        """Refresh ``lastHeartbeat`` (and re-create the file if someone removed it), with the
        latency ``llm_slot`` measured since, so the fleet sees it without another call."""
        changes: dict[str, object] = {"last_heartbeat": utc_from_ms(self.clock.now_ms())}
        measured = self._measured_latency_ms()
        if measured is not None:
            changes["avg_latency_ms"] = measured
        self._update(**changes)

    def _measured_latency_ms(self) -> float | None:
        """Mean response time of the successful requests ``llm_slot`` timed (recent ones)."""
        return self.adjuster.mean_response_ms() if self.adjuster is not None else None

    def enhanced_heartbeat(self) -> list[str]:
        """Heartbeat, then tidy up after dead instances, stale queues, expired locks and claims.

        Each step stands alone: one that fails (a hostile file, a full disk, a
        bug) is logged and returned as ``"step: reason"``, and the next step
        still runs.  Never raises.
        """
        failures = []
        for name, step in (
            ("heartbeat", self.heartbeat),
            ("dead instances", self.cleanup_dead_instances),
            ("queue states", self.cleanup_queue_states),
            ("expired locks", self.cleanup_expired_locks),
            ("claims", self.cleanup_claims),
            ("orphans", self.cleanup_orphans),
            ("temporary files", lambda: self.store.sweep(TEMP_FILE_MAX_AGE_MS)),
        ):
            try:
                step()
            except StoreError as exc:
                failures.append(f"{name}: {exc}")
                log.warning("%s step failed: %s", name, exc)
            except Exception as exc:  # a step's bug must not stop the steps after it
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log.exception("%s step failed", name)
        return failures

    def update_workload(self, pending_task_count: int, avg_latency_ms: float | None = None) -> None:
        """Publish this instance's load in its heartbeat file."""
        if pending_task_count < 0:
            raise ValueError("pending_task_count must not be negative")
        changes: dict[str, object] = {"pending_task_count": pending_task_count}
        if avg_latency_ms is None:
            avg_latency_ms = self._measured_latency_ms()
        if avg_latency_ms is not None:
            changes["avg_latency_ms"] = avg_latency_ms
        self._update(**changes)

    def task_completed(self) -> None:
        self._update(last_task_completed_at=utc_from_ms(self.clock.now_ms()))

    # --------------------------------------------------------------- fleet
    def _all_instances(self) -> list[InstanceInfo]:
        """Every readable instance record, in pi's directory order."""
        with self._caches_guard:
            self._instances.refresh()
            entries = dict(self._instances.entries)
        own = self._info
        if own is not None:
            # Our in-memory record is at least as fresh as our file.
            entries = {k: e for k, e in entries.items() if e.record is None or e.record.instance_id != own.instance_id}
        records = [(key, e.record) for key, e in entries.items() if e.record is not None]
        if own is not None:
            records.append((own.instance_id, own))
        ordered = semantics.directory_order(records, lambda pair: pair[0] + INSTANCES.suffix)
        return [record for _, record in ordered]

    def _other_alive(self) -> list[InstanceInfo]:
        me = self.instance_id
        return [i for i in self.active_instances() if i.instance_id != me]

    def active_instances(self) -> list[InstanceInfo]:
        """Instances whose heartbeat is younger than the timeout (pi's definition)."""
        return semantics.alive_instances(self._all_instances(), self.clock.now_ms(), self.config)

    def active_instance_count(self) -> int:
        return semantics.active_count(self.active_instances())

    def my_parallel_limit(self) -> int:
        """``max(1, floor(totalMaxLlm / activeInstanceCount))``."""
        return semantics.parallel_limit(self.config.total_max_llm, self.active_instance_count())

    def dynamic_parallel_limit(self, my_pending_tasks: int | None = None) -> int:
        """This instance's share of the fleet's slots, weighted by ``1/(pending+1)``."""
        alive = self.active_instances()
        me = self.instance_id
        mine = self._info.pending if my_pending_tasks is None and self._info else (my_pending_tasks or 0)
        others = [i.pending for i in alive if i.instance_id != me]
        plain = semantics.parallel_limit(self.config.total_max_llm, semantics.active_count(alive))
        return semantics.dynamic_parallel_limit(self.config.total_max_llm, mine, others, plain)

    # --------------------------------------------------------------- models
    def set_active_model(self, provider: str, model: str) -> None:
        """Record that this instance is now using ``provider``/``model`` (stored lower-cased)."""
        provider, model = provider.lower(), model.lower()
        with self._state:
            current = self.info.active_models
            if any(m.provider == provider and m.model == model for m in current):
                return
            since = utc_from_ms(self.clock.now_ms())
            self._update(active_models=(*current, ActiveModelInfo(provider=provider, model=model, since=since)))

    def clear_active_model(self, provider: str, model: str) -> None:
        provider, model = provider.lower(), model.lower()
        with self._state:
            kept = tuple(m for m in self.info.active_models if not (m.provider == provider and m.model == model))
            if kept != self.info.active_models:
                self._update(active_models=kept)

    def clear_all_active_models(self) -> None:
        self._update(active_models=())

    def instances_for_model(self, provider: str, model: str) -> int:
        return semantics.instances_for_model(self.active_instances(), provider, model)

    def model_parallel_limit(self, provider: str, model: str, base_limit: int) -> int:
        """``max(1, floor(baseLimit / instancesUsingModel))``."""
        return semantics.model_parallel_limit(base_limit, self.instances_for_model(provider, model))

    def model_usage_summary(self) -> tuple[list[ModelUsage], list[InstanceInfo]]:
        alive = self.active_instances()
        return [ModelUsage(*row) for row in semantics.model_usage(alive)], alive

    # --------------------------------------------------------------- queues
    def broadcast_queue_state(
        self,
        pending_task_count: int,
        active_orchestrations: int = 0,
        stealable_entries: Sequence[EntryLike] = (),
        avg_latency_ms: float | None = None,
    ) -> BroadcastQueueState:
        """Publish this instance's queue so idle instances can steal from it.

        Entries are :class:`StealableQueueEntry` records or mappings of their fields;
        ``avg_latency_ms`` defaults to what ``llm_slot`` measured.  They are
        offered to thieves that claim (``core``'s); pi's thieves, which do not,
        see them only with ``offer_to_non_claiming``.
        """
        entries = tuple(as_entry(entry) for entry in stealable_entries)
        state = BroadcastQueueState(
            instance_id=self.info.instance_id,
            timestamp=utc_from_ms(self.clock.now_ms()),
            pending_task_count=pending_task_count,
            avg_latency_ms=self._measured_latency_ms() if avg_latency_ms is None else avg_latency_ms,
            active_orchestrations=active_orchestrations,
            stealable_entries=entries if self.offer_to_non_claiming else (),
            claimable_entries=entries,
        )
        self.store.write(QUEUES, state.instance_id, state.to_json())
        return state

    def remote_queue_states(self) -> list[BroadcastQueueState]:
        """Other instances' queue states young enough to act on (pi: 30 s), in directory order."""
        with self._caches_guard:
            self._queues.refresh()
            items = list(self._queues.entries.items())
        ordered = semantics.directory_order(items, lambda kv: kv[0] + QUEUES.suffix)
        records = [e.record for _, e in ordered if e.record is not None]
        return semantics.fresh_queue_states(records, self.clock.now_ms(), self.instance_id)

    def has_remote_capacity(self) -> bool:
        """pi's ``checkRemoteCapacity``: no other queue state, or an idle one."""
        return semantics.has_remote_capacity(self.remote_queue_states())

    def cleanup_queue_states(self) -> list[str]:
        """Remove queue states older than pi's default heartbeat timeout (60 s)."""
        now = self.clock.now_ms()
        with self._caches_guard:
            self._queues.refresh()
            entries = list(self._queues.entries.items())
        removed = []
        for key, entry in entries:
            if entry.record is None or entry.raw is None:
                continue
            if semantics.is_expired_queue_state(entry.record, now):
                try:
                    if self.store.delete_if(QUEUES, key, entry.raw):
                        removed.append(key)
                except StoreError as exc:
                    log.warning("could not remove queue state %s: %s", key, exc)
        return removed

    # ------------------------------------------------------------- stealing
    def is_idle(self) -> bool:
        """pi's ``isIdle``: nothing pending and no model in use."""
        return semantics.is_idle_instance(self.info)

    def should_attempt_work_stealing(self) -> bool:
        """Stealing is on, nothing is pending here, and another has more than two tasks waiting."""
        return (
            self.work_stealing_enabled
            and not self.draining
            and semantics.should_attempt_stealing(self.info.pending, (i.pending for i in self._other_alive()))
        )

    def work_stealing_candidates(self, top_n: int | None = semantics.DEFAULT_STEAL_CANDIDATES) -> list[str]:
        """pi's ``getWorkStealingCandidates``: other instances with work pending, most first."""
        return semantics.work_stealing_candidates(self._other_alive(), top_n)

    def find_steal_candidate(self) -> InstanceInfo | None:
        """pi's ``findStealCandidate``: the other instance with the most work beyond two tasks."""
        return semantics.find_steal_candidate(self._other_alive())

    def steal_work(self) -> StealableQueueEntry | None:
        """pi's ``stealWork``: the entry pi would pick, *without* claiming it.

        Use :meth:`safe_steal_work` to actually take work.
        """
        if not self.work_stealing_enabled:
            return None
        offer = semantics.pick_steal_entry(self.remote_queue_states())
        return offer[1] if offer else None

    def safe_steal_work(self) -> StolenWork | None:
        """Take one entry from a busy instance, claimed exactly once across the fleet;
        call :meth:`finish` once it has run.

        Only owners that honour claims are stolen from: pi's own owners run
        every entry they listed whoever took it, so taking one would run it twice.
        """
        if not self.work_stealing_enabled or self.info.pending != 0 or self.draining:
            return None
        read_at = self.clock.monotonic()
        honouring = {i.instance_id for i in self._all_instances() if i.honours_claims}
        states = [s for s in self.remote_queue_states() if s.instance_id in honouring]
        max_delay_s = self.config.heartbeat_timeout_ms / 2000  # < a done claim's retention less a state's freshness
        return self._stealer().safe_steal(states, read_at, max_delay_s)

    def claimed_entries(self) -> set[str]:
        """Ids of this instance's entries that are claimed (stolen, or being run by us):
        leave them out of the queue you broadcast."""
        me = self.info.instance_id
        return {entry_id for owner, entry_id in self._stealer().claimed_pairs([me])}

    def claim_own(self, entry: EntryLike | str) -> bool:
        """Claim one of this instance's own entries before running it; ``False`` if somebody
        else claimed it.  Keep such an entry until :meth:`done_entries` names it: if its
        claimant dies first, the claim is released and the entry is yours to run again.

        Takes an entry as :meth:`broadcast_queue_state` does (a record or a mapping), or its id.
        """
        claimed = entry if isinstance(entry, str) else as_entry(entry)
        return self._stealer().claim(self.info.instance_id, claimed) is not None

    def finish(self, work: StolenWork | StealableQueueEntry | str) -> bool:
        """Record that a claimed entry (stolen work, or one of ours) has run.

        ``False`` if the claim is no longer ours: we were taken for dead (another host
        saw no heartbeat) and the entry was released, so it may run elsewhere too.
        """
        if isinstance(work, StolenWork):
            return self._stealer().complete(work.owner_instance_id, work.entry.id)
        entry_id = work if isinstance(work, str) else work.id
        done = self._stealer().complete(self.info.instance_id, entry_id)
        if done:
            with self._caches_guard:
                self._settled[entry_id] = self.clock.now_ms()
        return done

    def done_entries(self) -> set[str]:
        """Ids of this instance's entries that have run (here or by a thief): drop them.

        Only once this instance has learnt it are the claims forgotten, so an owner
        that was stopped for a while never runs a stolen entry again.
        """
        me = self.info.instance_id
        with self._caches_guard:
            self._claims_cache.refresh()
            now = self.clock.now_ms()
            done = set()
            for loaded in self._claims_cache.entries.values():
                claim = loaded.record
                if claim is not None and claim.owner_instance_id == me and claim.done_at is not None:
                    done.add(claim.entry_id)
                    self._settled.setdefault(claim.entry_id, now)
        return done

    def work_stealing_summary(self) -> WorkStealingSummary:
        """pi's ``getWorkStealingSummary`` over the other instances' fresh queue states."""
        return semantics.work_stealing_summary(self.remote_queue_states())

    def stealing_stats(self) -> StealingStats:
        return self._stealer().stats

    def reset_stealing_stats(self) -> None:
        self._stealer().reset_stats()

    def _stealer(self) -> StealingService:
        if self._stealing is None:
            raise NotRegistered("call register() first")
        return self._stealing

    def cleanup_claims(self) -> list[str]:
        """Release claims whose claimant is gone; forget claims nobody can still need."""
        with self._caches_guard:
            self._claims_cache.refresh()
            claims = dict(self._claims_cache.entries)
            settled = dict(self._settled)
            self._queues.refresh()
            self._instances.refresh()
            states = {s.instance_id: s for s in self._queues.records()}
            instances = dict(self._instances.entries)
        now = self.clock.now_ms()

        def instance_gone(instance_id: str) -> bool | None:
            if instance_id == self.instance_id:
                return False
            loaded = instances.get(instance_id)
            if loaded is None or loaded.record is None:
                return None  # no (readable) file: unregistered, removed as dead, or damaged
            return self._is_dead(loaded.record, loaded.modified_ms, now)

        def settles_own_claims(instance_id: str) -> bool:
            loaded = instances.get(instance_id)
            return loaded is not None and loaded.record is not None and bool(loaded.record.honours_claims)

        retention = self.config.heartbeat_timeout_ms + semantics.QUEUE_FRESH_MS
        removed = self._stealer().cleanup_claims(claims, states, instance_gone, settles_own_claims, settled, retention)
        me = self.instance_id
        with self._caches_guard:
            for key in removed:
                owner, entry_id = claim_pair(key, claims[key].record)
                if owner == me:
                    self._settled.pop(entry_id, None)
        return removed

    # ---------------------------------------------------------------- locks
    def try_acquire_lock(self, resource: str, ttl_ms: int = DEFAULT_TTL_MS) -> DistributedLock | None:
        if self._locks is None:
            raise NotRegistered("call register() first")
        return self._locks.try_acquire(resource, ttl_ms)

    def release_lock(self, lock: DistributedLock) -> bool:
        if self._locks is None:
            raise NotRegistered("call register() first")
        return self._locks.release(lock)

    def cleanup_expired_locks(self) -> list[str]:
        self._locks_cache.refresh()
        service = self._locks or LockService(self.store, "cleanup", self.clock)
        return service.cleanup_expired(dict(self._locks_cache.entries))

    # -------------------------------------------------------------- cleanup
    def cleanup_dead_instances(self) -> list[str]:
        """Remove the files of dead instances; returns their ids.

        Dead means: on this host, its pid is gone or was reused; or its
        heartbeat *and* its file are both older than the timeout (a fresh file
        with an old heartbeat is a skewed clock, not a dead instance).  A file
        that does not parse is removed only when it has not changed for the
        timeout and the pid in its name is not running: a live instance's file
        read mid-write is never removed.
        """
        now = self.clock.now_ms()
        timeout = self.config.heartbeat_timeout_ms
        with self._caches_guard:
            self._instances.refresh()
            entries = list(self._instances.entries.items())
        removed = []
        for key, entry in entries:
            if entry.raw is None or key == self.instance_id:
                continue
            if entry.record is not None:
                dead = self._is_dead(entry.record, entry.modified_ms, now)
            else:
                pid = pid_from_instance_id(key)
                file_old = now - entry.modified_ms >= timeout
                pid_gone = pid is None or procs.check(pid, registered_ms=entry.modified_ms) is Liveness.DEAD
                dead = file_old and pid_gone
            try:
                if dead and self.store.delete_if(INSTANCES, key, entry.raw):
                    removed.append(key)
                    self._remove_queue_state_of(key)
                    self.store.delete(PARALLELISM, key)  # its in-flight slots died with it
            except StoreError as exc:  # one instance's files must not keep the others'
                log.warning("could not remove all state of %s: %s", key, exc)
        for key in removed:
            self.events.emit("cleanup", f"removed dead instance {key}")
        return removed

    def cleanup_orphans(self) -> list[str]:
        """Remove per-instance state whose instance file is gone (pi's own cleanup
        deletes only the instance file): parallelism after the heartbeat timeout,
        control requests after ten minutes (long enough to show "offline"),
        stealing statistics after a day."""
        now = self.clock.now_ms()
        instance_keys = self.store.keys(INSTANCES)
        removed = []
        orphan_ages = (
            (PARALLELISM, self.config.heartbeat_timeout_ms),
            (CONTROL, ORPHAN_CONTROL_MAX_AGE_MS),
            (STEALING_STATS, ORPHAN_STATS_MAX_AGE_MS),
        )
        for space, max_age in orphan_ages:
            instances = {self.store.listed_key(space, key) for key in instance_keys}
            for key in self.store.keys(space):
                if key in instances:
                    continue
                try:
                    blob = self.store.read(space, key)
                    if blob is not None and now - blob.modified_ms >= max_age and self.store.delete_if(space, key, blob.data):
                        removed.append(f"{space.name}/{key}")
                except StoreError as exc:
                    log.warning("could not remove %s/%s: %s", space.name, key, exc)
        return removed

    def _is_dead(self, info: InstanceInfo, modified_ms: int, now: int) -> bool:
        liveness = procs.check(
            info.pid,
            registered_ms=info.started_ms,
            recorded_start_ms=info.process_started_at,
            hostname=info.hostname,
        )
        return procs.gone(
            liveness, semantics.heartbeat_age_ms(info, now), now - modified_ms, self.config.heartbeat_timeout_ms
        )

    def _remove_queue_state_of(self, instance_id: str) -> None:
        try:
            blob = self.store.read(QUEUES, instance_id)
        except StoreError:
            return
        if blob is not None:
            self.store.delete_if(QUEUES, instance_id, blob.data)

    # --------------------------------------------------------------- status
    def status(self) -> CoordinatorStatus:
        alive = self.active_instances()
        return CoordinatorStatus(
            registered=self.is_initialized,
            my_instance_id=self.instance_id,
            active_instance_count=semantics.active_count(alive),
            my_parallel_limit=semantics.parallel_limit(self.config.total_max_llm, semantics.active_count(alive)),
            config=self.config,
            instances=tuple(alive),
        )

