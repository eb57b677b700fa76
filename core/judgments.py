"""What each instance file means at an instant, and each judgment kept while it stands.

A snapshot judges every instance file on every build: its status, whether pi
counts it, the liveness of its pid and the problems it shows.  A rebuild
mostly follows one rewritten file, so :class:`Judge` keeps each judgment with
the span of time over which it stands (heartbeat age crossing the stale and
timeout thresholds, the file's own age crossing the timeout, the pid's answer
expiring in the :class:`~core.procs.LivenessCache`) and judges again only a
file whose entry is another object (the store read it anew), or whose span
``now`` left.  The ages themselves are not part of a judgment: the snapshot
takes them from the timestamps at each build.  Reuse changes nothing a build
shows (``tests/test_judgments.py`` compares it with judging from scratch).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from .labels import Labelled
from .models import CoordinatorConfig, InstanceInfo
from .procs import Liveness, LivenessCache
from .store import INSTANCES, Loaded, Space

# A heartbeat this far in the future means the writer's clock is ahead of ours.
CLOCK_SKEW_TOLERANCE_MS = 5_000

_NEVER = sys.maxsize  # the end of a span no time bounds
_ALWAYS = -sys.maxsize


class Status(str, Enum):
    ALIVE = "alive"  # heartbeat within two intervals
    STALE = "stale"  # heartbeat late, but pi still counts it (younger than the timeout)
    DEAD = "dead"  # its process is gone, or (another host) heartbeat and file past the timeout
    STALLED = "stalled"  # heartbeat past the timeout, yet its process runs (stopped?): never removed
    CORRUPT = "corrupt"  # the file cannot be read as an instance
    DRAINING = "draining"  # alive, finishing its work at an operator's request
    OFFLINE = "offline"  # drained and left: its file is gone, its drain request remains


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # corrupt | unreadable | clock-skew | unknown-version | config | dead-pid
    where: str  # "instances/x.lock", "coordinator.json", "environment"...
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}"


def where(space: Space, key: str) -> str:
    """The file a problem names, relative to the store's root."""
    return f"{space.name}/{key}{space.suffix}"


class Judgment(NamedTuple):
    """One instance as judged, and the span ``[since_ms, until_ms)`` of ``now`` over which it stands."""

    key: str
    entry: Loaded[InstanceInfo] | None  # None: an instance that left (offline)
    status: Status
    counted: bool  # alive by pi's rule, so part of every figure
    liveness: Liveness
    problems: tuple[Problem, ...]
    since_ms: int
    until_ms: int
    labelled: Labelled  # what its label is made of
    figures_key: tuple[object, ...] | None  # what the fleet's figures read of it (counted ones only)


def span(turns: Iterable[int], now: int) -> tuple[int, int]:
    """The span ``[since, until)`` around ``now`` that none of the instants ``turns``
    (where some verdict turns) falls inside: what held at ``now`` holds all over it."""
    since, until = _ALWAYS, _NEVER
    for turn in turns:
        if turn <= now:
            if turn > since:
                since = turn
        elif turn < until:
            until = turn
    return since, until


def offline(instance_id: str) -> Judgment:
    """An instance drained and gone: only its drain request remains."""
    return Judgment(
        instance_id, None, Status.OFFLINE, False, Liveness.UNKNOWN, (), _ALWAYS, _NEVER, Labelled(instance_id), None
    )


def figures_key(info: InstanceInfo) -> tuple[object, ...]:
    """All that the fleet's figures (limits, models, steal candidates) read of a counted
    instance: two alive sets with equal keys, in the same order, give equal figures."""
    return (info.instance_id, info.pending, info.model_pairs, bool(info.honours_claims))


class Judge:
    """Judges instance files at successive instants, keeping each judgment while it stands.

    ``liveness`` is None where pids are not checked (every liveness unknown).
    """

    def __init__(self, liveness: LivenessCache | None) -> None:
        self._liveness = liveness
        self._kept: dict[str, Judgment] = {}
        self._thresholds: tuple[int, int] | None = None
        self._dead_pid_problems: dict[tuple[str, int], Problem] = {}

    def judge_all(
        self, instances: list[tuple[str, Loaded[InstanceInfo]]], now: int, config: CoordinatorConfig, keep: bool = True
    ) -> list[Judgment]:
        """Every instance's judgment at ``now``, in the order given; kept for later
        calls unless ``keep`` is false (a caller that will not call again)."""
        thresholds = (config.heartbeat_timeout_ms, 2 * config.heartbeat_interval_ms)
        kept = self._kept
        if thresholds != self._thresholds or len(kept) > len(instances):
            kept.clear()  # judged by other thresholds, or some files are gone
            self._thresholds = thresholds
        timeout, stale_after = thresholds
        judged = []
        for key, entry in instances:
            found = kept.get(key)
            if found is None or found.entry is not entry or not found.since_ms <= now < found.until_ms:
                found = self._judge(key, entry, now, timeout, stale_after)
                if keep:
                    kept[key] = found
            judged.append(found)
        return judged

    def _judge(self, key: str, entry: Loaded[InstanceInfo], now: int, timeout: int, stale_after: int) -> Judgment:
        info = entry.record
        if info is None:
            return Judgment(key, entry, Status.CORRUPT, False, Liveness.UNKNOWN, (), _ALWAYS, _NEVER, Labelled(key), None)
        heartbeat = info.heartbeat_ms
        age = now - heartbeat
        counted = age < timeout
        # Where each test below turns: heartbeat ahead by the tolerance, stale, past the
        # timeout; the file past the timeout.
        turns = [heartbeat - CLOCK_SKEW_TOLERANCE_MS, heartbeat + stale_after, heartbeat + timeout, entry.modified_ms + timeout]
        liveness = Liveness.UNKNOWN
        if self._liveness is not None:
            liveness, answered_until = self._liveness.answer(
                info.pid,
                registered_ms=info.started_ms,
                recorded_start_ms=info.process_started_at,
                hostname=info.hostname,
                now_ms=now,
            )
            turns.append(answered_until)  # a later build asks the OS again
        problems = []
        if age < -CLOCK_SKEW_TOLERANCE_MS:
            problems.append(Problem("clock-skew", where(INSTANCES, key), f"heartbeat is {-age // 1000} s in the future"))
        elif not counted and now - entry.modified_ms < timeout:
            written = (now - entry.modified_ms) // 1000
            problems.append(
                Problem(
                    "clock-skew",
                    where(INSTANCES, key),
                    f"file written {written} s ago but its heartbeat is {age // 1000} s old",
                )
            )
        if problems:
            turns += [now, now + 1]  # the message counts the seconds: it stands for this instant only
        if liveness is Liveness.DEAD:
            status = Status.DEAD
            problems.append(self._dead_pid_problem(key, info.pid))
        elif not counted:
            # Its process runs with the recorded start time: stopped, not gone (procs.gone).
            status = Status.STALLED if liveness is Liveness.ALIVE else Status.DEAD
        elif info.draining_since is not None:
            status = Status.DRAINING
        elif age >= stale_after:
            status = Status.STALE
        else:
            status = Status.ALIVE
        return Judgment(
            key,
            entry,
            status,
            counted,
            liveness,
            tuple(problems),
            *span(turns, now),
            Labelled(info.instance_id, info.instance_name, info.pid),
            figures_key(info) if counted else None,
        )

    def _dead_pid_problem(self, key: str, pid: int) -> Problem:
        # The same words for the same dead instance on every build: made once.
        problem = self._dead_pid_problems.get((key, pid))
        if problem is None:
            if len(self._dead_pid_problems) > 10_000:
                self._dead_pid_problems.clear()
            problem = self._dead_pid_problems[(key, pid)] = Problem(
                "dead-pid", where(INSTANCES, key), f"pid {pid} is not running; pi counts it until its heartbeat expires"
            )
        return problem
