"""Is the process behind an instance file still the one that wrote it?

pi decides only by heartbeat age (60 s by default).  On the same host we can
do better: a pid that no longer exists, is a zombie, or belongs to a process
that started *after* the instance registered (the pid was reused) is dead at
once.  ``psutil`` gives the process start time portably (Linux, macOS, BSD),
which is why it is a dependency.
"""

from __future__ import annotations

import os
import socket
from enum import Enum

import psutil

# Start times are compared with this slack: clocks tick in coarse steps and
# pi records ``startedAt`` a little after its process started.
START_SLACK_MS = 2_000

HOSTNAME = socket.gethostname()


class Liveness(Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"  # another host, or the OS would not tell


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAVE_PROC = os.path.exists("/proc/self/stat")
_BOOT_TIME_S = psutil.boot_time()


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """``(state, start epoch ms)`` from ``/proc/{pid}/stat``, or ``None`` if there is no such process.

    One small read instead of psutil's several: a snapshot of a large fleet
    asks about every pid.  Same formula as psutil (boot time + start ticks).
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2 :].split()
    started = (_BOOT_TIME_S + int(fields[19]) / _CLOCK_TICKS) * 1000
    return fields[0], int(started)


def own_start_ms() -> int:
    """When this process started, in epoch milliseconds (written into our instance file)."""
    if _HAVE_PROC:
        found = _proc_stat(os.getpid())
        if found is not None:
            return found[1]
    return int(psutil.Process(os.getpid()).create_time() * 1000)


def check(
    pid: int,
    *,
    registered_ms: int,
    recorded_start_ms: int | None = None,
    hostname: str | None = None,
) -> Liveness:
    """Liveness of the process an instance file names.

    ``recorded_start_ms`` is what a ``core`` instance wrote about itself; pi's
    instances do not write it, so for them a process that started after the
    instance registered (``registered_ms``) is taken to be a reused pid.
    """
    if hostname is not None and hostname != HOSTNAME:
        return Liveness.UNKNOWN
    if pid <= 0:
        return Liveness.DEAD
    if pid == os.getpid():
        return Liveness.ALIVE
    if _HAVE_PROC:
        try:
            found = _proc_stat(pid)
        except (OSError, ValueError, IndexError):
            found = None
        else:
            if found is None or found[0] in (b"Z", b"X"):
                return Liveness.DEAD
            return _judge(found[1], registered_ms, recorded_start_ms)
    try:
        os.kill(pid, 0)  # the cheap answer first: most dead pids stop here
    except ProcessLookupError:
        return Liveness.DEAD
    except (PermissionError, OverflowError, OSError):
        pass
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return Liveness.DEAD
        started = int(process.create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return Liveness.DEAD
    except (psutil.AccessDenied, OSError):
        return Liveness.ALIVE if psutil.pid_exists(pid) else Liveness.DEAD
    return _judge(started, registered_ms, recorded_start_ms)


def _judge(started_ms: int, registered_ms: int, recorded_start_ms: int | None) -> Liveness:
    """Is a process that started at ``started_ms`` the one the instance file describes?"""
    if recorded_start_ms:
        return Liveness.ALIVE if abs(started_ms - recorded_start_ms) <= START_SLACK_MS else Liveness.DEAD
    return Liveness.ALIVE if started_ms <= registered_ms + START_SLACK_MS else Liveness.DEAD


def gone(liveness: Liveness, heartbeat_age_ms: int, file_age_ms: int, timeout_ms: int) -> bool:
    """The one rule of death, for an instance and for a claimant.

    A process that is running with the recorded start time is never gone,
    however old its heartbeat (stopped, debugged, starved: it may resume at any
    moment and carry on); one that is not running is gone at once.  Only where
    the OS cannot tell (another host) do the heartbeat and the file's own age
    decide, both past the timeout (a fresh file with an old heartbeat is a
    skewed clock, not a death).
    """
    if liveness is Liveness.ALIVE:
        return False
    if liveness is Liveness.DEAD:
        return True
    return heartbeat_age_ms >= timeout_ms and file_age_ms >= timeout_ms


class LivenessCache:
    """Remembers answers for a short while: a snapshot of 1,000 instances
    rebuilt every second must not ask the OS about 1,000 pids each time.
    A process that dies is seen dead at most ``ttl_ms`` after it died."""

    def __init__(self, ttl_ms: int = 2_000) -> None:
        self.ttl_ms = ttl_ms
        self._answers: dict[tuple[int, int, int | None, str | None], tuple[Liveness, int]] = {}

    def answer(
        self,
        pid: int,
        *,
        registered_ms: int,
        recorded_start_ms: int | None,
        hostname: str | None,
        now_ms: int,
    ) -> tuple[Liveness, int]:
        """The liveness of the process (:func:`check`), and the instant (epoch ms) from
        which a later question is put to the OS again: until then, this answer stands."""
        key = (pid, registered_ms, recorded_start_ms, hostname)
        cached = self._answers.get(key)
        if cached is not None and now_ms < cached[1]:
            return cached
        liveness = check(pid, registered_ms=registered_ms, recorded_start_ms=recorded_start_ms, hostname=hostname)
        if len(self._answers) > 10_000:
            self._answers.clear()
        found = self._answers[key] = (liveness, now_ms + self.ttl_ms)
        return found
