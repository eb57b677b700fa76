"""Clocks that are off: no instance can defer the fleet's requests beyond the largest
Retry-After a provider may send, whatever its clock says; such skew is a problem shown.

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
