"""SIGKILL between the system calls of every write: each record is left whole, old or new.

``strace -e inject=SYSCALL:signal=SIGKILL:when=N`` kills a writer as it enters
its Nth call of one system call, so everything before that call happened and
nothing after it.  Before, the rate-limit and backoff records were rewritten
in place with ``pwrite`` then ``ftruncate``: a writer killed in between left
new bytes over the old tail, the next limiter read the torn record as fresh and
granted a whole new burst, and the fleet lost its 429 deadline.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from core.backoff import BackoffBoard
from core.clock import ManualClock
from core.locks import LockService
from core.models import CorruptRecord, DistributedLock, ProviderRateState
from core.provider_config import parse_settings
from core.ratelimit import SharedRateLimiter
from core.store import BACKOFF, INSTANCES, LOCKS, RATE_LIMITS, DirectoryStore
from tests.faults.actors import BURST, MODEL, PROVIDER, RPM, SETTINGS
from tests.faults.conftest import finish, require_strace, start_actor

pytestmark = pytest.mark.slow

SYSCALLS = ("pwrite64", "write", "ftruncate", "rename", "fsync", "link", "linkat")
EMISSION_S = 60 / RPM


def killed_at(strace: str, syscall: str, when: int = 1) -> tuple[str, ...]:
    return (strace, "-f", "-qq", "-o", "/dev/null", "-e", f"inject={syscall}:signal=SIGKILL:when={when}")


def fresh_root(base: Path, name: str) -> DirectoryStore:
    root = base / name
    root.mkdir(mode=0o700)
    store = DirectoryStore(root)
    store.ensure_layout()
    return store


def limiter(store: DirectoryStore) -> SharedRateLimiter:
    return SharedRateLimiter(store, parse_settings(SETTINGS, "faults"), instance_name="faults")


def immediate_grants(store: DirectoryStore, tries: int) -> int:
    rates = limiter(store)
    return sum(rates.reserve(PROVIDER, MODEL, max_wait_ms=0) is not None for _ in range(tries))


def test_rate_limit_record_survives_a_kill_at_every_system_call(tmp_path: Path) -> None:
    """The burst is spent, then one more request is booked by a writer killed at each call in
    turn: whatever it did, nobody may start more than the burst plus what time has earned."""
    strace = require_strace()
    cases: dict[str, tuple[DirectoryStore, float, Any]] = {}
    for syscall in SYSCALLS:
        store = fresh_root(tmp_path, syscall)
        spent_at = time.monotonic()
        assert immediate_grants(store, BURST + 5) == BURST
        # Grants of long ago, which the next decision prunes: its record is shorter.
        def age(raw: bytes | None) -> bytes:
            state = ProviderRateState.from_json(raw)
            stale = {str(int(time.time()) - 600 - n): 1 for n in range(40)}
            return state.model_copy(update={"grants_per_second": {**stale, **state.grants_per_second}}).to_json()

        store.update(RATE_LIMITS, PROVIDER, age)
        victim = start_actor({"action": "reserve", "root": str(store.root), "times": 1}, killed_at(strace, syscall))
        cases[syscall] = (store, spent_at, victim)

    torn, over_burst, killed = [], {}, []
    for syscall, (store, spent_at, victim) in cases.items():
        outcome = finish(victim)
        assert not outcome.hung and not outcome.untyped, (syscall, outcome)
        if outcome.killed:
            killed.append(syscall)
        blob = store.read(RATE_LIMITS, PROVIDER)
        try:
            ProviderRateState.from_json(blob.data)
        except CorruptRecord:
            torn.append(syscall)
        earned = math.floor((time.monotonic() - spent_at) / EMISSION_S)
        extra = immediate_grants(store, BURST + 5)
        if extra > earned:
            over_burst[syscall] = extra - earned
    print(f"\nrate-limit record, writer killed at {killed}: torn {torn}, grants over the burst {over_burst}")
    assert killed, "no injected kill landed: the test tried nothing"
    assert torn == []
    assert over_burst == {}


def test_backoff_deadline_survives_a_kill_at_every_system_call(tmp_path: Path) -> None:
    """A 429 pushed the fleet's deadline a minute ahead; another 429 is reported by a writer
    killed at each call in turn: the deadline must still be there for everyone."""
    strace = require_strace()
    cases: dict[str, tuple[DirectoryStore, int, Any]] = {}
    for syscall in SYSCALLS:
        store = fresh_root(tmp_path, syscall)
        until = BackoffBoard(store, "reporter").report_429(PROVIDER, MODEL, retry_after_ms=60_000).until
        long_ago = ManualClock(int(time.time() * 1000) - 3_600_000)
        for n in range(20):  # 429s of an hour ago, which the next report prunes: its record is shorter
            BackoffBoard(store, f"instance-{n:02d}-" + "x" * 60, long_ago).report_429(PROVIDER, MODEL)
        victim = start_actor(
            {"action": "backoff-429", "root": str(store.root), "instance": "victim", "retry_after_ms": 1000},
            killed_at(strace, syscall),
        )
        cases[syscall] = (store, until, victim)

    lost, killed = [], []
    for syscall, (store, until, victim) in cases.items():
        outcome = finish(victim)
        assert not outcome.hung and not outcome.untyped, (syscall, outcome)
        if outcome.killed:
            killed.append(syscall)
        current = BackoffBoard(store, "observer").current(PROVIDER, MODEL)
        if current is None or current.until < until:
            lost.append(syscall)
    print(f"\nbackoff record, writer killed at {killed}: deadline lost after {lost}")
    assert killed, "no injected kill landed: the test tried nothing"
    assert lost == []


def test_replaced_and_created_files_are_old_or_new_after_a_kill_at_every_system_call(tmp_path: Path) -> None:
    strace = require_strace()
    old, new = b'{"generation": "old"}', b'{"generation": "new", "padding": "' + b"p" * 5000 + b'"}'
    runs = []
    for syscall in SYSCALLS:
        store = fresh_root(tmp_path, syscall)
        store.write(INSTANCES, "me", old)
        runs.append((store, INSTANCES, "me", start_actor(
            {"action": "write", "root": str(store.root), "space": INSTANCES.name, "key": "me", "data": new.decode()},
            killed_at(strace, syscall))))  # fmt: skip
        runs.append((store, LOCKS, "task", start_actor(
            {"action": "create", "root": str(store.root), "space": LOCKS.name, "key": "task", "data": new.decode()},
            killed_at(strace, syscall))))  # fmt: skip
    torn, killed = [], 0
    for store, space, key, victim in runs:
        outcome = finish(victim)
        assert not outcome.hung and not outcome.untyped, outcome
        killed += outcome.killed
        blob = store.read(space, key)
        if blob is not None and blob.data not in (old, new):
            torn.append(f"{space.name}/{key}")
    print(f"\nreplace/create: {killed} of {len(runs)} writers killed mid-write, torn {torn}")
    assert killed
    assert torn == []


def test_lock_taken_over_by_a_killed_thief_is_whole(tmp_path: Path) -> None:
    """Takeover is compare-and-swap: a thief killed at any call leaves the old lock or its own."""
    strace = require_strace()
    runs = []
    for syscall in SYSCALLS:
        store = fresh_root(tmp_path, syscall)
        assert LockService(store, "gone").try_acquire("job", ttl_ms=1) is not None
        runs.append((store, start_actor({"action": "take-over", "root": str(store.root), "resource": "job",
                                         "holder": "thief"}, killed_at(strace, syscall))))  # fmt: skip
    time.sleep(0.01)
    holders = []
    for store, victim in runs:
        outcome = finish(victim)
        assert not outcome.hung and not outcome.untyped, outcome
        blob = store.read(LOCKS, "job")
        assert blob is not None
        holders.append(DistributedLock.from_json(blob.data).holder)  # raises if torn
        if not outcome.killed:
            assert outcome.result == {"ok": "thief"} and holders[-1] == "thief"
    assert set(holders) <= {"gone", "thief"}
