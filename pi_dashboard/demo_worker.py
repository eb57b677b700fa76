"""One process of the built-in demo fleet: a fake pi instance built on :mod:`core`.

    python -m pi_dashboard.demo_worker --root DIR --name atlas --seed 7

It registers a :class:`~core.coordinator.Coordinator` in ``DIR`` and then, for
ever, behaves like a busy coding agent: a local queue of fake tool tasks grows
in bursts and drains; every second it publishes its load and offers its queue
to thieves; it claims each of its own entries before running it (skipping those
somebody stole), steals when idle, runs every task as one to three simulated
LLM calls through ``llm_slot`` on a few threads, meets a fleet-wide "429 storm"
now and then, and takes a ``repo:{project}`` lock for a few seconds from time
to time.  Asked to drain, it takes and steals nothing more, lets its in-flight
calls finish, stays draining a few seconds (a drain cancelled meanwhile puts it
back to work), calls ``finish_drain`` and exits 0.  On SIGTERM it unregisters and
exits at once (status 143).

Nothing is random across processes where it must agree: the 429 storms are a
function of wall-clock time (and of the fleet's start, ``PI_DASH_DEMO_EPOCH``),
so every worker sees the same storm on the same provider.

Environment (set by :class:`pi_dashboard.demo.DemoFleet`; all optional):
``PI_DASH_DEMO_EPOCH`` (epoch seconds the storm schedule counts from),
``PI_DASH_DEMO_PROFILE`` (``busy``, ``medium`` or ``light``: how much work it
makes itself), ``PI_DASH_DEMO_PROJECT`` (the project in its cwd and lock),
``PI_DASH_DEMO_PARENT`` (the fleet's pid: the worker exits when orphaned), and
core's own ``PI_CONFIG`` and ``PI_INSTANCE_ID``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from core.backoff import BackoffBoard
from core.clock import utc_from_ms
from core.coordinator import Coordinator, NotRegistered
from core.models import DistributedLock, StealableQueueEntry
from core.parallelism import AdjusterConfig
from core.slots import SlotTimeout
from core.stealing import StolenWork
from core.store import StoreError

DEMO_PARALLELISM = AdjusterConfig(recovery_interval_ms=5_000, error_window_ms=15_000)

log = logging.getLogger("pi_dash.demo_worker")

ENV_EPOCH = "PI_DASH_DEMO_EPOCH"
ENV_PROFILE = "PI_DASH_DEMO_PROFILE"
ENV_PROJECT = "PI_DASH_DEMO_PROJECT"
ENV_PARENT = "PI_DASH_DEMO_PARENT"

EXIT_DRAINED = 0
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
EXIT_FAILED = 1

PRIORITIES = ("critical", "high", "normal", "low", "background")
PRIORITY_WEIGHTS = (3, 12, 50, 22, 13)
TOOLS = ("bash", "edit", "read", "grep", "test")
# (provider, model, weight): one model per task, as an agent keeps its model for a task.
MODELS = (
    ("openai", "gpt-4o", 4),
    ("openai", "gpt-4o-mini", 4),
    ("anthropic", "claude-3-5-sonnet", 3),
)
PROJECTS = ("webshop", "ml-pipeline", "docs-site", "api-gateway", "mobile-app", "infra-tools")

TICK_S = 1.0  # one round: publish, dispatch, steal
REPUBLISH_S = 10.0  # load unchanged: rewrite it in the instance file this often
MAX_STEALABLE = 10  # entries offered to thieves
MAX_CONCURRENT_TASKS = 3
SLOT_TIMEOUT_S = 3.0  # a call waiting longer gives up and tries again (or stops, when draining)
CALL_SECONDS = (0.2, 1.5)
DRAIN_LINGER_S = 5.0  # stay visibly "draining" at least this long (long enough to cancel it by hand)
LOCK_TTL_MS = 8_000
LOCK_CHANCE_PER_TICK = 0.08
LOCK_HOLD_S = (2.0, 5.0)

# The 429 storms: the first starts 5-10 s after the epoch, then one every 20-30 s,
# 5 s long, alternating between the providers.
STORM_FIRST_S = 5.0
STORM_CYCLE_S = 25.0
STORM_JITTER_S = 5.0
STORM_LENGTH_S = 5.0
STORM_PROVIDERS = ("openai", "anthropic")
STORM_429_CHANCE = 0.85
RETRY_AFTER_NONE_CHANCE = 0.15
RETRY_AFTER_NONE_MAX_RECENT = 3  # without Retry-After the fleet waits 2^n s (n = 429s in 5 min): keep n small


@dataclass(frozen=True, slots=True)
class Profile:
    """How much work a worker makes for itself."""

    initial: tuple[int, int]  # tasks at start (inclusive range)
    refill_below: int  # a burst may come when the queue is shorter than this
    burst_chance: float  # per round, when below refill_below
    burst: tuple[int, int]
    max_queue: int


PROFILES = {
    "busy": Profile(initial=(8, 12), refill_below=5, burst_chance=0.35, burst=(5, 12), max_queue=30),
    "medium": Profile(initial=(2, 5), refill_below=3, burst_chance=0.15, burst=(3, 7), max_queue=20),
    "light": Profile(initial=(0, 0), refill_below=1, burst_chance=0.04, burst=(1, 3), max_queue=10),
}


@dataclass(frozen=True, slots=True)
class Storm:
    provider: str
    start: float  # epoch seconds
    end: float


def storm_at(now: float, epoch: float = 0.0) -> Storm | None:
    """The 429 storm raging at ``now`` (epoch seconds), if any: the same in every process."""
    since = now - epoch - STORM_FIRST_S
    if since < 0:
        return None
    cycle = int(since // STORM_CYCLE_S)
    for k in (cycle, cycle - 1):  # a storm never outlasts its cycle, but be safe at the edge
        if k < 0:
            continue
        start = epoch + STORM_FIRST_S + k * STORM_CYCLE_S + random.Random(f"pi-dash-storm-{k}").uniform(0, STORM_JITTER_S)
        if start <= now < start + STORM_LENGTH_S:
            return Storm(STORM_PROVIDERS[k % len(STORM_PROVIDERS)], start, start + STORM_LENGTH_S)
    return None


@dataclass(slots=True)
class Task:
    entry: StealableQueueEntry
    calls: int
    provider: str
    model: str
    seq: int
    stolen_from: str | None = None
    stolen: StolenWork | None = None  # its claim, to mark done

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.entry.priority_rank, self.seq)


@dataclass(slots=True)
class Counters:
    completed: int = 0
    stolen_by_me: int = 0
    stolen_from_me: int = 0
    calls: int = 0
    rate_limited: int = 0
    slot_timeouts: int = 0


class DemoWorker:
    """One fake agent: its queue, its threads and its coordinator."""

    def __init__(
        self,
        root: str,
        name: str,
        seed: int,
        *,
        profile: str = "medium",
        project: str | None = None,
        epoch: float = 0.0,
        parent_pid: int | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.rng = random.Random(f"{seed}:{name}")
        self.profile = PROFILES.get(profile, PROFILES["medium"])
        self.profile_name = profile if profile in PROFILES else "medium"
        self.project = project or PROJECTS[sum(map(ord, name)) % len(PROJECTS)]
        self.epoch = epoch
        self.parent_pid = parent_pid
        # pi's recovery waits (5 min without errors) are too slow for a demo that
        # wants to show recovery between storms: the demo uses shorter ones.
        self.coordinator = Coordinator(root=root, instance_name=name, parallelism=DEMO_PARALLELISM)
        self.stop = threading.Event()  # SIGTERM, or orphaned
        self.queue: list[Task] = []
        self.counters = Counters()
        self._state = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._seq = 0
        self._completed_since_publish = 0
        self._lock: DistributedLock | None = None
        self._lock_release_at = 0.0
        self._drain_seen_at: float | None = None
        self._board: BackoffBoard | None = None
        self._published_pending: int | None = None
        self._published_at = 0.0

    # ------------------------------------------------------------ running
    def run(self) -> int:
        """Register, then run rounds until drained (0) or stopped (143)."""
        if not self._register():
            return EXIT_TERMINATED
        log.info(
            "%s registered as %s (profile %s, project %s)",
            self.name,
            self.coordinator.instance_id,
            self.profile_name,
            self.project,
        )
        self._generate(initial=True)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if self._round():
                    return EXIT_DRAINED
            except StoreError as exc:
                log.warning("store error, retrying next round: %s", exc)
            except NotRegistered:
                log.warning("not registered any more; registering again")
                self._register()
            except Exception:  # a demo worker never dies of one bad round
                log.exception("round failed")
            self.stop.wait(max(0.05, TICK_S - (time.monotonic() - started)) + self.rng.uniform(0, 0.05))
        return EXIT_TERMINATED

    def _register(self) -> bool:
        session_id = f"{self.name}-{uuid.uuid4()}"
        while not self.stop.is_set():
            try:
                self.coordinator.register(session_id=session_id, cwd=f"/home/demo/{self.project}")
                self._board = BackoffBoard(self.coordinator.store, self.coordinator.instance_id or self.name)
                return True
            except StoreError as exc:
                log.warning("cannot register yet (%s); retrying", exc)
                self.stop.wait(1.0)
        return False

    def shutdown(self) -> None:
        """Leave the fleet quickly (SIGTERM): release the lock, remove our files."""
        try:
            self._release_lock()
        except Exception:  # leaving must not fail on a store hiccup
            log.exception("could not release the lock on shutdown")
        try:
            self.coordinator.unregister()
        except Exception:
            log.exception("could not unregister cleanly")

    def _orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _round(self) -> bool:
        """One round; ``True`` once drained and gone."""
        c = self.coordinator
        if self._orphaned():
            log.warning("the demo fleet's process is gone; leaving")
            self.stop.set()
            return False
        if c.draining:
            return self._drain_round()
        if self._drain_seen_at is not None:  # the drain was cancelled: back to work
            log.info("drain cancelled; taking work again")
            self._drain_seen_at = None
        self._generate()
        self._drop_stolen()
        capacity = self._capacity()
        self._dispatch(capacity)
        self._steal(capacity)
        self._manage_lock()
        self._publish()
        return False

    # --------------------------------------------------------------- work
    def _new_task(self) -> Task:
        self._seq += 1
        provider, model, _ = self.rng.choices(MODELS, weights=[m[2] for m in MODELS])[0]
        calls = self.rng.randint(1, 3)
        entry = StealableQueueEntry(
            id=f"{self.name}-t{self._seq}",
            tool_name=self.rng.choice(TOOLS),
            priority=self.rng.choices(PRIORITIES, weights=PRIORITY_WEIGHTS)[0],
            instance_id=self.coordinator.info.instance_id,
            enqueued_at=utc_from_ms(int(time.time() * 1000)),
            estimated_duration_ms=round(calls * 850),
            estimated_rounds=calls,
        )
        return Task(entry, calls, provider, model, self._seq)

    def _generate(self, initial: bool = False) -> None:
        p = self.profile
        if initial:
            count = self.rng.randint(*p.initial)
        elif len(self.queue) < p.refill_below and self.rng.random() < p.burst_chance:
            count = self.rng.randint(*p.burst)
        else:
            return
        count = min(count, p.max_queue - len(self.queue))
        if count <= 0:
            return
        self.queue.extend(self._new_task() for _ in range(count))
        self.queue.sort(key=lambda t: t.sort_key)
        log.info("burst of %d new tasks (queue %d)", count, len(self.queue))

    def _drop_stolen(self) -> None:
        """Forget queued entries somebody else ran (one whose thief died comes back to us)."""
        if not self.queue:
            return
        done = self.coordinator.done_entries()
        if not done:
            return
        kept = [t for t in self.queue if t.id not in done]
        gone = len(self.queue) - len(kept)
        if gone:
            self.counters.stolen_from_me += gone
            self.queue = kept
            log.info("%d queued task(s) were stolen by other instances", gone)

    def _running_count(self) -> int:
        with self._state:
            return len(self._running)

    def _capacity(self) -> int:
        """How many tasks to run at once: this instance's dynamic share, at most three."""
        try:
            share = self.coordinator.dynamic_parallel_limit(len(self.queue))
        except StoreError:
            share = 1
        return max(1, min(MAX_CONCURRENT_TASKS, share))

    def _dispatch(self, capacity: int) -> None:
        claimed_elsewhere = []
        while self.queue and self._running_count() < capacity:
            task = self.queue.pop(0)
            if not self.coordinator.claim_own(task.entry):
                claimed_elsewhere.append(task)  # kept until done: its thief may die first
                continue
            self._start(task)
        self.queue[:0] = claimed_elsewhere

    def _steal(self, capacity: int) -> None:
        """Idle: take one entry from a busy instance (claimed exactly once fleet-wide)."""
        if self.queue or self._running_count() >= capacity:
            return
        if self._published_pending != 0:
            self._publish()  # the coordinator steals only when its published queue is empty
        stolen = self.coordinator.safe_steal_work()
        if stolen is None:
            return
        entry = stolen.entry
        self._seq += 1
        provider, model, _ = self.rng.choices(MODELS, weights=[m[2] for m in MODELS])[0]
        calls = entry.estimated_rounds if entry.estimated_rounds and 1 <= entry.estimated_rounds <= 3 else self.rng.randint(1, 3)
        task = Task(entry, calls, provider, model, self._seq, stolen_from=stolen.owner_instance_id, stolen=stolen)
        self.counters.stolen_by_me += 1
        log.info("stole %s (%s, %s) from %s", entry.id, entry.tool_name, entry.priority, stolen.owner_instance_id)
        self._start(task)

    def _start(self, task: Task) -> None:
        thread = threading.Thread(target=self._run_task, args=(task,), name=f"task-{task.id}", daemon=True)
        with self._state:
            self._running[task.id] = thread
        thread.start()

    def _run_task(self, task: Task) -> None:
        finished = False
        try:
            done = 0
            while done < task.calls:
                if self.stop.is_set() or self.coordinator.draining:
                    return  # draining: in-flight calls finish, the rest of the task does not start
                outcome = self._call(task.provider, task.model)
                if outcome == "ok":
                    done += 1
                elif outcome == "gave-up":
                    return
                # "429" or "busy": try the same call again (the slot waits for the fleet's backoff)
            finished = True
            self.coordinator.finish(task.stolen or task.entry)
        except StoreError as exc:
            log.warning("task %s: store error: %s", task.id, exc)
        except NotRegistered:
            pass  # unregistered under us: we are leaving
        except Exception:
            log.exception("task %s failed", task.id)
        finally:
            with self._state:
                self._running.pop(task.id, None)
                if finished:
                    self.counters.completed += 1
                    self._completed_since_publish += 1
            if finished:
                log.debug("completed %s", task.id)

    def _call(self, provider: str, model: str) -> str:
        """One simulated LLM request: "ok", "429", "busy" (no slot yet) or "gave-up" (leaving)."""
        try:
            with self.coordinator.llm_slot(provider, model, timeout=SLOT_TIMEOUT_S) as slot:
                time.sleep(self.rng.uniform(*CALL_SECONDS))
                storm = storm_at(time.time(), self.epoch)
                if storm is not None and storm.provider == provider and self.rng.random() < STORM_429_CHANCE:
                    retry_after = self._retry_after(storm, provider, model)
                    slot.report_429(retry_after=retry_after)
                    self.counters.rate_limited += 1
                    shown = "none" if retry_after is None else f"{retry_after:g}s"
                    log.info("429 from %s/%s (Retry-After %s)", provider, model, shown)
                    return "429"
                self.counters.calls += 1
                return "ok"  # llm_slot timed it: the heartbeat publishes the latency
        except SlotTimeout:
            self.counters.slot_timeouts += 1
            if self.stop.is_set() or self.coordinator.draining:
                return "gave-up"
            return "busy"

    def _retry_after(self, storm: Storm, provider: str, model: str) -> float | None:
        """What the fake provider says: mostly "come back after the storm", sometimes nothing."""
        if self.rng.random() < RETRY_AFTER_NONE_CHANCE and self._recent_429s(provider, model) < RETRY_AFTER_NONE_MAX_RECENT:
            return None
        left = max(0.5, storm.end - time.time())
        if self.rng.random() < 0.5:
            return round(left + self.rng.uniform(0.0, 1.0), 1)
        return round(self.rng.uniform(1.0, min(3.0, left + 1.0)), 1)

    def _recent_429s(self, provider: str, model: str) -> int:
        if self._board is None:
            return 0
        shared = self._board.current(provider, model)
        if shared is None:
            return 0
        horizon = int(time.time() * 1000) - 300_000
        return sum(1 for event in shared.recent429s if event.at > horizon)

    # -------------------------------------------------------------- locks
    def _manage_lock(self) -> None:
        now = time.monotonic()
        if self._lock is not None:
            if now >= self._lock_release_at:
                self._release_lock()
            return
        if self.rng.random() >= LOCK_CHANCE_PER_TICK:
            return
        resource = f"repo:{self.project}"
        lock = self.coordinator.try_acquire_lock(resource, ttl_ms=LOCK_TTL_MS)
        if lock is None:
            log.info("%s is held by another instance; not now", resource)
            return
        self._lock = lock
        self._lock_release_at = now + self.rng.uniform(*LOCK_HOLD_S)
        log.info("took %s", resource)

    def _release_lock(self) -> None:
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        if self.coordinator.is_initialized:
            if self.coordinator.release_lock(lock):
                log.info("released %s", lock.resource)
            else:
                log.info("%s was no longer ours (expired or released by an operator)", lock.resource)

    # ------------------------------------------------------------ publish
    def _publish(self) -> None:
        c = self.coordinator
        pending = len(self.queue)
        with self._state:
            active = len(self._running)
            completed, self._completed_since_publish = self._completed_since_publish, 0
        now = time.monotonic()
        if pending != self._published_pending or now - self._published_at >= REPUBLISH_S:
            # The heartbeat rewrites the file every second anyway (with the latency
            # llm_slot measured): write only news.
            c.update_workload(pending)
            self._published_pending, self._published_at = pending, now
        if completed:
            c.task_completed()
        c.broadcast_queue_state(
            pending,
            active_orchestrations=active,
            stealable_entries=[t.entry for t in self.queue[:MAX_STEALABLE]],
        )

    # -------------------------------------------------------------- drain
    def _drain_round(self) -> bool:
        """Draining: start and steal nothing; once in-flight calls are done, leave."""
        now = time.monotonic()
        if self._drain_seen_at is None:
            self._drain_seen_at = now
            log.info("draining: %d queued task(s) left to others, %d running", len(self.queue), self._running_count())
        self._release_lock()
        self._drop_stolen()
        if self._running_count() == 0 and now - self._drain_seen_at >= DRAIN_LINGER_S:
            try:
                self.coordinator.finish_drain()
            except StoreError:
                if self.coordinator.is_initialized:
                    raise  # not gone yet: try again next round
            log.info("drained; offline (completed %d tasks)", self.counters.completed)
            return True
        self._publish()  # queued entries stay on offer until we leave
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pi_dashboard.demo_worker",
        description="One worker of pi-dash's demo fleet: a fake pi instance that registers in DIR, "
        "queues, steals and runs fake tasks through core's llm_slot, and drains on request.",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="the coordination directory")
    parser.add_argument("--name", required=True, help="the worker's name (also its PI_INSTANCE_ID)")
    parser.add_argument("--seed", type=int, default=0, help="seed of its task stream (default 0)")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help=f"how much work it makes itself (default ${ENV_PROFILE}, else medium)",
    )
    parser.add_argument("--project", default=None, help=f"project name in its cwd and lock (default ${ENV_PROJECT})")
    return parser


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {args.name}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    parent = os.environ.get(ENV_PARENT)
    worker = DemoWorker(
        args.root,
        args.name,
        args.seed,
        profile=args.profile or os.environ.get(ENV_PROFILE, "medium"),
        project=args.project or os.environ.get(ENV_PROJECT) or None,
        epoch=_float_env(ENV_EPOCH, 0.0),
        parent_pid=int(parent) if parent and parent.isdigit() else None,
    )

    def on_signal(signum: int, _frame: object) -> None:
        worker.stop.set()  # the main loop notices within a moment; nothing else is safe here

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = worker.run()
    except BaseException:
        log.exception("worker crashed")
        code = EXIT_FAILED
    if code != EXIT_DRAINED:
        worker.shutdown()
        log.info(
            "stopped: %d tasks completed, %d stolen, %d stolen from it, %d calls, %d 429s",
            worker.counters.completed,
            worker.counters.stolen_by_me,
            worker.counters.stolen_from_me,
            worker.counters.calls,
            worker.counters.rate_limited,
        )
    logging.shutdown()
    # Task threads may be waiting for a slot: leave without waiting for them.
    os._exit(code)


if __name__ == "__main__":
    main()
