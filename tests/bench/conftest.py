"""Fixtures of the benchmarks: a realistic 1,000-instance coordination directory.

The benchmarks are marked ``bench`` and deselected by the default run
(``addopts = -m 'not bench'``); run them with ``pytest tests/bench -m bench -s``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from core.clock import utc_from_ms
from core.locks import to_base36
from core.models import ActiveModelInfo, BroadcastQueueState, InstanceInfo, StealableQueueEntry
from core.store import INSTANCES, QUEUES, DirectoryStore

FLEET_SIZE = 1_000
HEARTBEAT_TIMEOUT_MS = 3_600_000  # the fleet's coordinator.json: nobody passes pi's 60 s during a run
# Every CHILD_EVERY-th instance names one of CHILDREN live child processes; the
# others name this process.  See ``fleet`` for why.
CHILDREN = 4
CHILD_EVERY = 10

MODELS = [
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-opus-4-1"),
    ("openai", "gpt-5"),
    ("openai", "gpt-5-mini"),
    ("deepseek", "deepseek-chat"),
    ("gemini", "gemini-2.5-pro"),
]
TOOLS = ["bash", "read", "edit", "write", "grep", "subagent"]
PRIORITIES = ["critical", "high", "normal", "low", "background"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start_ms(pid: int) -> int:
    return int(psutil.Process(pid).create_time() * 1000)


@dataclass(repr=False)
class Fleet:
    root: Path
    store: DirectoryStore
    keys: list[str]  # instance ids, sorted
    infos: dict[str, InstanceInfo]
    child_pids: list[int]
    written_at_ms: int

    def __repr__(self) -> str:  # short: pytest prints it in every failure report
        return f"Fleet({str(self.root)!r}, {len(self.keys)} instances, children {self.child_pids})"


def _instance_id(rng: random.Random, session_id: str, pid: int, at_ms: int) -> str:
    suffix = "".join(rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(4))
    return f"sess-{session_id[:8]}-pid{pid}-{to_base36(at_ms)}-{suffix}"


def make_fleet(root: Path, child_pids: list[int], size: int = FLEET_SIZE, seed: int = 20260218) -> Fleet:
    rng = random.Random(seed)
    store = DirectoryStore(root)
    store.ensure_layout()
    now = now_ms()
    own = (os.getpid(), start_ms(os.getpid()))
    children = [(pid, start_ms(pid)) for pid in child_pids]
    infos: dict[str, InstanceInfo] = {}
    for i in range(size):
        pid, proc_start = children[(i // CHILD_EVERY) % len(children)] if children and i % CHILD_EVERY == 0 else own
        # pi writes startedAt when it registers, a moment after its process started.
        started = proc_start + rng.randint(200, 1_500)
        heartbeat = now - rng.randint(0, 50_000)
        session_id = f"{rng.getrandbits(128):032x}"
        instance_id = _instance_id(rng, session_id, pid, started)
        picked = rng.sample(MODELS, rng.randint(1, 2))
        info = InstanceInfo(
            instance_id=instance_id,
            pid=pid,
            session_id=session_id,
            started_at=utc_from_ms(started),
            last_heartbeat=utc_from_ms(heartbeat),
            cwd=f"/home/dev/projects/repo-{rng.randint(1, 60)}",
            active_models=[
                ActiveModelInfo(provider=p, model=m, since=utc_from_ms(heartbeat - rng.randint(0, 600_000)))
                for p, m in picked
            ],
            pending_task_count=rng.randint(0, 6),
            avg_latency_ms=round(rng.uniform(400, 9_000), 1),
            last_task_completed_at=utc_from_ms(heartbeat - rng.randint(0, 30_000)),
        )
        store.write(INSTANCES, instance_id, info.to_json(), durable=False)
        infos[instance_id] = info
        entries = [
            StealableQueueEntry(
                id=f"task-{rng.getrandbits(48):012x}",
                tool_name=rng.choice(TOOLS),
                priority=rng.choice(PRIORITIES),
                instance_id=instance_id,
                enqueued_at=utc_from_ms(heartbeat - rng.randint(0, 20_000)),
                estimated_duration_ms=rng.randint(500, 120_000),
                estimated_rounds=rng.randint(1, 12),
            )
            for _ in range(rng.randint(0, 3))
        ]
        queue = BroadcastQueueState(
            instance_id=instance_id,
            timestamp=utc_from_ms(heartbeat),
            pending_task_count=info.pending_task_count,
            avg_latency_ms=info.avg_latency_ms,
            active_orchestrations=rng.randint(0, 2),
            stealable_entries=entries,
        )
        store.write(QUEUES, instance_id, queue.to_json(), durable=False)
    # Every instance stays alive, and every queue fresh, however long a loaded machine takes.
    (root / "coordinator.json").write_text(
        json.dumps({"heartbeatIntervalMs": HEARTBEAT_TIMEOUT_MS // 2, "heartbeatTimeoutMs": HEARTBEAT_TIMEOUT_MS})
    )
    return Fleet(root, store, sorted(infos), infos, list(child_pids), now)


@pytest.fixture(scope="module")
def live_children() -> Iterator[list[int]]:
    """A few idle child processes whose pids instance files can name."""
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(CHILDREN)]
    time.sleep(0.05)  # let them exist before anyone asks psutil about them
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture
def fleet(tmp_path: Path, live_children: list[int]) -> Fleet:
    """1,000 instance files and 1,000 queue files, written just now.

    Heartbeats are 0-50 s old when written; the fleet's ``coordinator.json``
    sets the heartbeat timeout to an hour, so none passes it however slowly a
    loaded machine runs the benchmark (it checks that none did).  Pids: 9 instances in 10 name this very
    process (``pid == os.getpid()``, which ``core.procs.check`` answers at
    once), and every 10th names one of 4 live ``sleep`` children with a
    ``startedAt`` a little after the child started, so 100 instances take the
    full path (``kill(pid, 0)`` + psutil status and start time) on every
    liveness-cache miss.
    """
    root = tmp_path / "runtime"
    root.mkdir(mode=0o700)
    return make_fleet(root, live_children)


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join(["", title, rule, line(header), rule, *(line(r) for r in rows), rule])
