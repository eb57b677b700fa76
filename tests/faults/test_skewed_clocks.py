"""Clocks that are off: no instance can defer the fleet's requests beyond the largest
Retry-After a provider may send, nor take over a live lock, whatever its clock says;
such skew is a problem shown.

The skewed process runs under Debian's ``faketime`` (``.ci/run`` installs it), which
shifts every clock the process reads but not the kernel's stamps on files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.backoff import MAX_RETRY_AFTER_MS, BackoffBoard
from core.clock import SYSTEM_CLOCK
from core.snapshot import SnapshotBuilder
from core.store import DirectoryStore
from tests.faults.conftest import run_actor

REPO = Path(__file__).resolve().parents[2]
SLACK_MS = 5_000

needs_faketime = pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed; .ci/run installs it")


def skewed(shift: str, *args: str) -> str:
    """Run one action of :mod:`tests.faults.skewed` with the clock shifted by ``shift``."""
    done = subprocess.run(
        ["faketime", "-f", shift, sys.executable, "-m", "tests.faults.skewed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@needs_faketime
@pytest.mark.slow
@pytest.mark.parametrize(("shift", "ahead_ms"), [("+12h", 12 * 3_600_000), ("+365d", 365 * 86_400_000)])
def test_an_instance_whose_clock_is_ahead_defers_the_fleet_at_most_120_s(root, shift, ahead_ms):
    stored = json.loads(skewed(shift, "report-429", str(root), "openai", "gpt-4o", "10"))
    now = int(time.time() * 1000)
    assert stored["until"] - now > ahead_ms - 60_000, "faketime did not shift the reporter's clock"
    shared = BackoffBoard(DirectoryStore(root), "reader").current("openai", "gpt-4o")
    assert shared is not None
    assert shared.wait_ms(now) <= MAX_RETRY_AFTER_MS, f"the fleet waits {shared.wait_ms(now) / 3_600_000:.1f} hours"
    snapshot = SnapshotBuilder(DirectoryStore(root), clock=SYSTEM_CLOCK).build()
    (view,) = snapshot.backoffs
    assert view.remaining_ms <= MAX_RETRY_AFTER_MS
    skew = [p for p in snapshot.problems if p.kind == "clock-skew"]
    assert len(skew) == 1 and "writer's clock is ahead" in skew[0].message


def test_a_retry_after_beyond_what_providers_send_is_cut_to_120_s(store):
    now = SYSTEM_CLOCK.now_ms()
    stored = BackoffBoard(store, "honest").report_429("openai", "gpt-4o", retry_after_ms=3_600_000)
    assert stored.until - now <= MAX_RETRY_AFTER_MS + SLACK_MS


# ------------------------------------------------------------------- locks
# A lock is taken over once its expiresAt has passed on the taker's clock *and* its
# file is as old as its lease on the file system's clock (core.locks.outlived_lease).

TAKER_TRIES = 10


def contend(
    root: Path,
    holder: str,
    shift: str | None,
    *,
    times: int = TAKER_TRIES,
    ttl_ms: int = 30_000,
    resource: str = "deploy",
    task: bool = False,
) -> dict:
    """``holder`` tries the lock (a task lock if ``task``) ``times`` times from a process of its
    own, its clock shifted by ``shift`` (``faketime -f``); returns its grants and the clock it had."""
    spec = {"action": "contend", "root": str(root), "resource": resource, "holder": holder,
            "times": times, "pause_s": 0.05, "ttl_ms": ttl_ms, "task": task}  # fmt: skip
    outcome = run_actor(spec, prefix=("faketime", "-f", shift) if shift else ())
    assert outcome.result is not None and "ok" in outcome.result, outcome.stderr
    return outcome.result["ok"]


def assert_shifted(result: dict, by_ms: int) -> None:
    offset = result["clock_ms"] - time.time_ns() // 1_000_000
    assert abs(offset - by_ms) < 30_000, f"faketime did not shift the clock: {offset} ms off, wanted {by_ms}"


@needs_faketime
@pytest.mark.slow
@pytest.mark.parametrize("task", [False, True], ids=["pi-lock", "task-lock"])
@pytest.mark.parametrize(
    ("case", "holder_shift", "taker_shift", "holder_off_ms", "taker_off_ms"),
    [
        ("a taker 60 s ahead", None, "+60s", 0, 60_000),
        ("a holder 1 h behind", "-1h", None, -3_600_000, 0),
        ("a taker 1 h ahead of a holder 1 h behind", "-1h", "+1h", -3_600_000, 3_600_000),
    ],
)
def test_a_skewed_clock_never_takes_over_a_live_lock(root, case, holder_shift, taker_shift, holder_off_ms, taker_off_ms, task):
    """Real processes under ``faketime``: the holder takes a 30 s lock (pi's, or a task lock),
    the taker tries it 10 times at once.  Before the file's age counted, the taker got it."""
    held = contend(root, "holder", holder_shift, times=1, task=task)
    assert held["granted"] == 1
    assert_shifted(held, holder_off_ms)
    taker = contend(root, "taker", taker_shift, task=task)
    assert_shifted(taker, taker_off_ms)
    kind = "task lock" if task else "lock"
    print(f"\n{case}: {taker['granted']} overlapping grants in {TAKER_TRIES} tries of a live 30 s {kind}")
    assert taker["granted"] == 0, f"{case}: a live lock was granted again {taker['granted']} times"


@needs_faketime
@pytest.mark.slow
@pytest.mark.parametrize("task", [False, True], ids=["pi-lock", "task-lock"])
@pytest.mark.parametrize(("holder_shift", "taker_shift"), [("-1h", None), (None, "+60s")])
def test_a_lock_abandoned_by_a_skewed_holder_comes_back_once_its_lease_has_passed(root, holder_shift, taker_shift, task):
    """The other half of the rule: the lock of a holder that is gone is free once its file is
    as old as its lease (2 s here), whatever the two clocks say."""
    assert contend(root, "holder", holder_shift, times=1, ttl_ms=2_000, task=task)["granted"] == 1
    assert contend(root, "early", taker_shift, times=1, ttl_ms=2_000, task=task)["granted"] == 0
    time.sleep(2.2)
    assert contend(root, "later", taker_shift, times=1, ttl_ms=2_000, task=task)["granted"] == 1


@needs_faketime
@pytest.mark.slow
@pytest.mark.parametrize(("shift", "offset_s", "direction"), [("-1h", 3600, "behind"), ("+90s", 90, "ahead of")])
def test_a_lock_holders_skew_is_a_problem_naming_the_file_and_the_skew(root, shift, offset_s, direction):
    assert contend(root, "sess-skewed", shift, times=1)["granted"] == 1
    assert contend(root, "sess-honest", None, times=1, resource="build")["granted"] == 1  # no skew: no problem
    snapshot = SnapshotBuilder(DirectoryStore(root, read_only=True), clock=SYSTEM_CLOCK).build()
    skew = [p for p in snapshot.problems if p.kind == "clock-skew"]
    print(f"\nholder {shift}: {[str(p) for p in skew]}")
    assert [p.where for p in skew] == ["locks/deploy.lock"]
    measured = int(skew[0].message.split(" s ")[0].rsplit(" ", 1)[1])
    assert "holder sess-skewed's clock was" in skew[0].message and direction in skew[0].message
    assert abs(measured - offset_s) <= 5, skew[0].message
