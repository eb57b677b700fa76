"""The built-in demo fleet: real worker processes in a throw-away coordination directory.

    with DemoFleet(root) as fleet:      # lays out root, spawns the workers, supervises them
        ...                             # point the dashboard at root

:meth:`DemoFleet.start` writes ``coordinator.json`` with short timings
(heartbeat every second, dead after five) and ``demo-config.json`` with demo
provider limits (openai 600/min burst 20, anthropic 120/min burst 10; the first
worker has priority 9 and 60 requests/minute reserved), then starts one
``python -m pi_dashboard.demo_worker`` process per worker, each in its own
session (Ctrl-C in the dashboard's terminal does not reach them) and logging to
``root/demo-logs/{name}.log``.  A supervisor thread restarts a worker that died
(after :data:`RESTART_DELAY_S`), leaves a drained one offline, and every 25-40 s
kills a random worker (never the reserved one) with SIGKILL so the dashboard
shows dead-pid detection and the restart.  Its actions go to the fleet's event
log as ``demo`` events.

Within about ten seconds the fleet shows every moving part: instances with
queues that fill in bursts and drain, steals, parallelism and rate-limit state,
locks, and a first 429 storm (5-10 s after start, then every 20-30 s).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from core.events import EventLog
from core.store import DirectoryStore, StoreError

from . import demo_worker

WORKER_NAMES = (
    "atlas", "birch", "cedar", "delta", "ember", "fjord",
    "grove", "heron", "iris", "juniper", "kestrel", "larch",
)  # fmt: skip
PROFILE_CYCLE = ("busy", "light", "busy", "light", "medium", "busy")
COORDINATOR_CONFIG = {"totalMaxLlm": 12, "heartbeatIntervalMs": 1000, "heartbeatTimeoutMs": 5000}
PROVIDERS = {
    "openai": {"requestsPerMinute": 600, "burst": 20},
    "anthropic": {"requestsPerMinute": 120, "burst": 10},
}
RESERVED_POLICY = {"priority": 9, "reservedCapacity": 60}
CONFIG_NAME = "demo-config.json"
LOG_DIR = "demo-logs"
EVENT_ACTOR = "pi-dash-demo"

RESTART_DELAY_S = 3.0
CHAOS_INTERVAL_S = (25.0, 40.0)
STOP_GRACE_S = 2.0
SUPERVISE_EVERY_S = 0.25

# Environment that would override the demo's own settings in the workers.
_ENV_DROPPED = (
    "PI_TOTAL_MAX_LLM",
    "PI_HEARTBEAT_INTERVAL_MS",
    "PI_HEARTBEAT_TIMEOUT_MS",
    "PI_ENABLE_WORK_STEALING",
    "PI_RUNTIME_DIR",
)


def worker_names(count: int) -> list[str]:
    return [WORKER_NAMES[i] if i < len(WORKER_NAMES) else f"worker{i + 1}" for i in range(count)]


def demo_config(reserved: str | None) -> dict[str, object]:
    """The demo's ``config.json`` (adaptive rate control on, recovering after 8 quiet seconds)."""
    # A short quiet period, so the limits visibly recover between the demo's storms.
    section: dict[str, object] = {"providers": PROVIDERS, "adaptiveRateControl": {"enabled": True, "quietPeriodMs": 8000}}
    if reserved:
        section["instances"] = {reserved: RESERVED_POLICY}
    return {"crossInstance": section}


def _write_json(path: Path, document: object) -> None:
    """Write ``document`` atomically (temporary file in the same directory, then rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


@dataclass(slots=True)
class _Worker:
    name: str
    index: int
    profile: str
    project: str
    proc: subprocess.Popen[bytes] | None = None
    died_at: float | None = None  # monotonic; set while waiting to restart
    drained: bool = False
    starts: int = 0


class DemoFleet:
    """A supervised fleet of demo workers in ``root``; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        workers: int = 6,
        seed: int | None = None,
        *,
        chaos: bool = True,
        restart_delay: float = RESTART_DELAY_S,
    ) -> None:
        if workers < 1:
            raise ValueError("a demo fleet needs at least one worker")
        self.root = Path(root)
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)
        self.chaos = chaos
        self.restart_delay = restart_delay
        self.names = worker_names(workers)
        self.reserved_name = self.names[0]
        self.config_path = self.root / CONFIG_NAME
        self.log_dir = self.root / LOG_DIR
        self.epoch = time.time()
        self._rng = random.Random(self.seed)
        self._workers = [
            _Worker(
                name,
                i,
                PROFILE_CYCLE[i % len(PROFILE_CYCLE)],
                demo_worker.PROJECTS[(i // 2) % len(demo_worker.PROJECTS)],  # pairs share a repo lock
            )
            for i, name in enumerate(self.names)
        ]
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._events: EventLog | None = None
        self._started = False
        self._stopped = False
        self._next_chaos = 0.0

    # ------------------------------------------------------------- public
    def __enter__(self) -> DemoFleet:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def prepare(self) -> None:
        """Lay out ``root``: the directories, ``coordinator.json`` and ``demo-config.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        store = DirectoryStore(self.root)
        store.ensure_layout()
        _write_json(self.root / "coordinator.json", COORDINATOR_CONFIG)
        _write_json(self.config_path, demo_config(self.reserved_name))
        self._events = EventLog(store, EVENT_ACTOR)

    def start(self) -> None:
        """Lay out ``root``, spawn the workers and start the supervisor thread."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.epoch = time.time()
            self.prepare()
            for worker in self._workers:
                self._spawn(worker)
            self._next_chaos = time.monotonic() + self._rng.uniform(*CHAOS_INTERVAL_S)
            self._supervisor = threading.Thread(target=self._supervise, name="pi-dash-demo-supervisor", daemon=True)
            self._supervisor.start()
            atexit.register(self.stop)
        self._emit(f"demo fleet started: {len(self._workers)} workers in {self.root}")

    def stop(self) -> None:
        """Stop the supervisor and every worker (SIGTERM, then SIGKILL after ~2 s); idempotent."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
            self._stopping.set()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join()
        with self._lock:
            procs = [w.proc for w in self._workers if w.proc is not None]
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
        with self._lock:
            for worker in self._workers:
                worker.proc = None
        atexit.unregister(self.stop)
        self._emit("demo fleet stopped")

    def worker_pids(self) -> dict[str, int]:
        """Name -> pid of every worker process that is running now."""
        with self._lock:
            return {w.name: w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None}

    def kill_random_worker(self) -> tuple[str, int] | None:
        """SIGKILL one running worker other than the reserved one (the chaos monkey); ``(name, pid)``."""
        with self._lock:
            candidates = [
                w for w in self._workers if w.name != self.reserved_name and w.proc is not None and w.proc.poll() is None
            ]
            if not candidates or self._stopping.is_set():
                return None
            victim = self._rng.choice(candidates)
            assert victim.proc is not None
            pid = victim.proc.pid
            _signal(victim.proc, signal.SIGKILL)
        self._emit(f"chaos: killed {victim.name} (pid {pid}) with SIGKILL; the fleet should notice the dead pid")
        return victim.name, pid

    # ---------------------------------------------------------- internals
    def _worker_env(self, worker: _Worker) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED}
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["PI_CONFIG"] = str(self.config_path)
        env["PI_INSTANCE_ID"] = worker.name
        env[demo_worker.ENV_EPOCH] = repr(self.epoch)
        env[demo_worker.ENV_PROFILE] = worker.profile
        env[demo_worker.ENV_PROJECT] = worker.project
        env[demo_worker.ENV_PARENT] = str(os.getpid())
        return env

    def _spawn(self, worker: _Worker) -> None:
        """Start ``worker``'s process (the caller holds the lock)."""
        seed = self.seed + 7919 * worker.starts  # a restarted worker makes different work
        argv = [
            sys.executable, "-m", "pi_dashboard.demo_worker",
            "--root", str(self.root), "--name", worker.name, "--seed", str(seed),
        ]  # fmt: skip
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{worker.name}.log", "ab") as log_file:
            worker.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._worker_env(worker),
                cwd=str(self.root),
                start_new_session=True,
                close_fds=True,
            )
        worker.starts += 1
        worker.died_at = None

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            try:
                self._supervise_once()
            except Exception as exc:  # the supervisor must outlive any one bad round
                print(f"pi-dash demo supervisor: {exc!r}", file=sys.stderr)

    def _supervise_once(self) -> None:
        now = time.monotonic()
        notes = []
        with self._lock:
            if self._stopping.is_set():
                return
            for worker in self._workers:
                proc = worker.proc
                if proc is not None:
                    code = proc.poll()
                    if code is None:
                        continue
                    worker.proc = None
                    if code == demo_worker.EXIT_DRAINED:
                        worker.drained = True
                        notes.append(f"{worker.name} (pid {proc.pid}) drained and stays offline")
                        continue
                    worker.died_at = now
                    how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    notes.append(f"{worker.name} (pid {proc.pid}) {how}; restarting in {self.restart_delay:g} s")
                elif not worker.drained and worker.died_at is not None and now - worker.died_at >= self.restart_delay:
                    self._spawn(worker)
                    assert worker.proc is not None
                    notes.append(f"restarted {worker.name} as pid {worker.proc.pid}")
        for note in notes:
            self._emit(note)
        if self.chaos and now >= self._next_chaos:
            self._next_chaos = now + self._rng.uniform(*CHAOS_INTERVAL_S)
            self.kill_random_worker()

    def _emit(self, message: str) -> None:
        if self._events is None:
            return
        try:
            self._events.emit("demo", message)
        except (StoreError, OSError):
            pass  # the event log is advisory


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass
