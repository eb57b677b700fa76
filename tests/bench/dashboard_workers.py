"""The heartbeat writer of tests/bench/test_bench_dashboard.py: a separate process.

    python -m tests.bench.dashboard_workers --root DIR --instances 100 --rounds 5 --log FILE

It registers ``--instances`` instances (their pid is this process, ``startedAt``
just after it started, so the dashboard sees them alive), writing each file once
with ``pendingTaskCount`` 0, prints ``ready PID`` and waits for a line on stdin.
Then, once per ``--period`` seconds and staggered evenly over the period, it
rewrites every instance's file with ``core.store.DirectoryStore.write`` (a
fresh ``lastHeartbeat`` and ``pendingTaskCount`` = the round number, 1, 2, ...),
``--rounds`` times (0: until stdin closes or SIGTERM).

``--log`` receives one line per write: ``key round replaced_ns late_us``, where
``replaced_ns`` is the wall clock (``time.time_ns``) read right after the
``os.replace`` that made the new file visible (:func:`main` wraps ``os.replace``
in this process only) and ``late_us`` is how far behind its schedule the write
started.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time

from core.clock import utc_from_ms
from core.locks import to_base36
from core.models import ActiveModelInfo, InstanceInfo
from core.store import INSTANCES, DirectoryStore

MODELS = [("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-5"), ("deepseek", "deepseek-chat")]

_real_replace = os.replace
_last_replace_ns = 0


def _timed_replace(src: str, dst: str, **kwargs: object) -> None:
    global _last_replace_ns
    _real_replace(src, dst, **kwargs)  # type: ignore[arg-type]
    _last_replace_ns = time.time_ns()



def now_ms() -> int:
    return time.time_ns() // 1_000_000


def instance_ids(count: int, pid: int, started_ms: int) -> list[str]:
    return [f"sess-{i:04d}bench-pid{pid}-{to_base36(started_ms + i)}-b{i:03d}" for i in range(count)]


def info_for(index: int, key: str, pid: int, started_ms: int, process_ms: int, pending: int) -> InstanceInfo:
    provider, model = MODELS[index % len(MODELS)]
    beat = now_ms()
    return InstanceInfo(
        instance_id=key,
        pid=pid,
        session_id=f"{index:032x}",
        started_at=utc_from_ms(started_ms),
        last_heartbeat=utc_from_ms(beat),
        cwd=f"/home/dev/projects/repo-{index % 17}",
        active_models=[ActiveModelInfo(provider=provider, model=model, since=utc_from_ms(started_ms))],
        pending_task_count=pending,
        avg_latency_ms=1000.0 + index,
        hostname=socket.gethostname(),
        process_started_at=process_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--log")
    args = parser.parse_args(argv)

    import psutil

    os.replace = _timed_replace  # type: ignore[assignment]  # this process only: it is the writer
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pid = os.getpid()
    process_ms = int(psutil.Process(pid).create_time() * 1000)
    started_ms = max(now_ms(), process_ms + 1)
    store = DirectoryStore(args.root)
    store.ensure_layout()
    keys = instance_ids(args.instances, pid, started_ms)
    for i, key in enumerate(keys):
        store.write(INSTANCES, key, info_for(i, key, pid, started_ms, process_ms, 0).to_json())
    print(f"ready {pid}", flush=True)
    if not sys.stdin.readline():
        return 0

    log: list[str] = []
    count = len(keys)
    t0 = time.monotonic() + 0.05
    round_no = 0
    while not stop.is_set() and (args.rounds == 0 or round_no < args.rounds):
        round_no += 1
        for i, key in enumerate(keys):
            target = t0 + (round_no - 1) * args.period + i * args.period / count
            delay = target - time.monotonic()
            if delay > 0:
                if args.rounds == 0:
                    # Endless mode: a closed stdin (the parent went away) ends the writer too.
                    ready, _, _ = select.select([sys.stdin], [], [], delay)
                    if ready and not sys.stdin.readline():
                        stop.set()
                        break
                else:
                    time.sleep(delay)
            if stop.is_set():
                break
            late_us = max(0, int((time.monotonic() - target) * 1e6))
            data = info_for(i, key, pid, started_ms, process_ms, round_no).to_json()
            store.write(INSTANCES, key, data)
            log.append(f"{key} {round_no} {_last_replace_ns} {late_us}\n")
    if args.log:
        with open(args.log, "w", encoding="ascii") as fh:
            fh.writelines(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
