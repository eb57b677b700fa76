"""A process stopped (SIGSTOP) inside a store guard blocks nobody beyond a bounded time.

Before: guards were 64 ``flock`` stripes shared by every key and the event log,
waited on without a bound, so one stopped process froze every key of its
stripe, every event append, and the takeover of expired locks there.  Now each
key is guarded by a lock on its own file, waited on for at most
``guard_wait_s``, and the event log takes no lock at all.
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from pathlib import Path

import pytest

from core.locks import LockService, lock_key
from core.store import LOCKS, RATE_LIMITS, DirectoryStore
from tests.faults.actors import PROVIDER
from tests.faults.conftest import finish, run_actor, start_actor

pytestmark = pytest.mark.slow

OLD_STRIPES = 64


def old_stripe(space_name: str, filename: str) -> int:
    """The guard stripe the previous store picked for a file (and "pi-dash/log" for events)."""
    return zlib.crc32(f"{space_name}/{filename}".encode()) % OLD_STRIPES


def same_stripe_names(prefix: str, stripe: int, count: int) -> list[str]:
    names, n = [], 0
    while len(names) < count:
        name = f"{prefix}{n}"
        if old_stripe(LOCKS.name, lock_key(name) + LOCKS.suffix) == stripe:
            names.append(name)
        n += 1
    return names


def wait_stopped(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] == "T":
                return
        time.sleep(0.02)
    pytest.fail(f"process {pid} did not stop inside its guard")


def test_a_process_stopped_inside_a_guard_blocks_no_one_beyond_the_bound(tmp_path: Path) -> None:
    root = tmp_path / "runtime"
    root.mkdir(mode=0o700)
    store = DirectoryStore(root)
    store.ensure_layout()
    events_stripe = old_stripe("pi-dash", "log")
    stopped_key, expired_resource, neighbour = same_stripe_names("r", events_stripe, 3)
    # An expired lock of a holder that is gone, in the stopped key's old stripe.
    old = LockService(store, "gone-holder").try_acquire(expired_resource, ttl_ms=1)
    assert old is not None
    time.sleep(0.05)
    # The stopped processes update records that exist (an absent one is created lock-free).
    store.write(LOCKS, lock_key(stopped_key), b'{"before": true}')
    store.update(RATE_LIMITS, PROVIDER, lambda _: b'{"before": true}')

    inside = [
        start_actor({"action": "stop-in-update", "root": str(root), "space": LOCKS.name, "key": lock_key(stopped_key),
                     "data": json.dumps({"mine": True})}),
        start_actor({"action": "stop-in-update", "root": str(root), "space": RATE_LIMITS.name, "key": PROVIDER,
                     "data": json.dumps({"mine": True})}),
    ]  # fmt: skip
    try:
        for proc in inside:
            assert proc.stdout is not None
            pid = json.loads(proc.stdout.readline())["stopping"]
            wait_stopped(pid)
        base = {"root": str(root)}
        started = time.monotonic()
        others = {
            "take over an expired lock": {**base, "action": "take-over", "resource": expired_resource, "holder": "thief"},
            "write a neighbour": {**base, "action": "write", "space": LOCKS.name, "key": lock_key(neighbour)},
            "append an event": {**base, "action": "append", "lines": ['{"at":1,"kind":"x","message":"m"}']},
            "update the stopped key": {**base, "action": "update", "space": LOCKS.name, "key": lock_key(stopped_key)},
            "reserve a rate slot": {**base, "action": "reserve", "times": 1, "max_wait_ms": 0},
        }
        outcomes = {name: finish(start_actor(spec), timeout_s=20) for name, spec in others.items()}
        elapsed = time.monotonic() - started
    finally:
        for proc in inside:
            os.kill(proc.pid, signal.SIGCONT)
    resumed = [finish(proc) for proc in inside]

    hung = sorted(name for name, outcome in outcomes.items() if outcome.hung)
    untyped = sorted(name for name, outcome in outcomes.items() if outcome.untyped)
    print(f"\nstopped inside 2 guards: {len(hung)} of {len(outcomes)} hung ({hung}), untyped {untyped}, {elapsed:.1f} s")
    assert hung == [], f"operations that hung behind a stopped process: {hung}"
    assert untyped == [], {name: outcomes[name].stderr for name in untyped}
    assert outcomes["take over an expired lock"].result == {"ok": "thief"}  # the TTL promise holds
    assert outcomes["write a neighbour"].result == {"ok": True}
    assert outcomes["append an event"].result == {"ok": 1}
    # The stopped process's own key stays guarded: a typed refusal, never a second swap.
    for name in ("update the stopped key", "reserve a rate slot"):
        assert outcomes[name].typed_error == "StoreBusy", (name, outcomes[name])
        assert "locked by another process for more than 2 s" in outcomes[name].result["message"]
    # Resumed, the stopped processes finish their own updates: nothing was torn meanwhile.
    assert [outcome.result for outcome in resumed] == [{"ok": '{"mine": true}'}] * 2
    assert store.read(LOCKS, lock_key(stopped_key)).data == b'{"mine": true}'
    assert store.read(RATE_LIMITS, PROVIDER).data == b'{"mine": true}'
