"""Real child processes for the concurrency tests: spawn, collect their reports, never leak one.

Workers live in importable modules because the "spawn" start method pickles a
child's target by name.  Every worker reports through a queue as
``(tag, worker_name, payload)``; a worker that raises reports
``("error", worker_name, traceback_text)`` so the test fails with the child's
traceback instead of timing out.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CTX = mp.get_context("spawn")
ERROR = "error"
RESULT = "result"
READY = "ready"


def report_errors(name: str, out: Any, body: Callable[[], Any]) -> None:
    """Run a worker's body in the child and report its result, or its traceback."""
    try:
        out.put((RESULT, name, body()))
    except BaseException:  # noqa: BLE001 - the parent must see every failure
        out.put((ERROR, name, traceback.format_exc()))


class Fleet:
    """Child processes reporting on one queue; every child is killed on exit, whatever happened."""

    def __init__(self) -> None:
        self.out = CTX.Queue()
        self.start = CTX.Event()
        self.procs: list[Any] = []

    def spawn(self, target: Any, *args: Any) -> Any:
        proc = CTX.Process(target=target, args=(*args, self.out), daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc

    def collect(self, tag: str, count: int, timeout_s: float) -> dict[str, Any]:
        """``count`` messages tagged ``tag``, by worker name; a child's error fails the test at once."""
        got: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            left = deadline - time.monotonic()
            try:
                kind, name, payload = self.out.get(timeout=max(0.01, left))
            except queue.Empty:
                codes = {p.pid: p.exitcode for p in self.procs}
                pytest.fail(f"waited {timeout_s}s for {count} {tag!r} messages, got {sorted(got)}; exit codes {codes}")
            if kind == ERROR:
                pytest.fail(f"worker {name} failed:\n{payload}")
            assert kind == tag, (kind, name, payload)
            assert name not in got, f"two {tag!r} messages from {name}"
            got[name] = payload
        return got

    def join(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.01, deadline - time.monotonic()))
        codes = [p.exitcode for p in self.procs]
        assert codes == [0] * len(codes), f"child exit codes {codes}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        self.out.close()
        self.out.join_thread()


@contextmanager
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        f.close()
