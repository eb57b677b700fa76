"""pi-dash's own records for work stealing: persisted statistics and exactly-once claims."""

from __future__ import annotations

from ._base import Count, DurationMs, EpochMs, Record
from .queue import StealableQueueEntry

FORMAT_VERSION = 1
MAX_LATENCY_SAMPLES = 100


class StealingStats(Record):
    """One instance's stealing statistics (``pi-dash/stealing-stats/{instanceId}.json``).

    pi keeps these in memory only; persisting them lets other processes and the
    dashboard see them.  Times are epoch milliseconds, as in pi's interface.
    """

    KEEP_NULL = frozenset({"last_attempt_at", "last_success_at"})
    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    instance_id: str
    total_attempts: Count = 0
    successful_steals: Count = 0
    failed_attempts: Count = 0
    last_attempt_at: EpochMs | None = None
    last_success_at: EpochMs | None = None
    avg_latency_ms: DurationMs = 0
    latency_samples: tuple[DurationMs, ...] = ()

    @property
    def success_rate(self) -> float:
        return self.successful_steals / self.total_attempts if self.total_attempts else 0.0

    def with_attempt(self, *, success: bool, latency_ms: float, now_ms: int) -> StealingStats:
        samples = (*self.latency_samples, round(latency_ms, 3))[-MAX_LATENCY_SAMPLES:]
        return self.model_copy(
            update={
                "total_attempts": self.total_attempts + 1,
                "successful_steals": self.successful_steals + success,
                "failed_attempts": self.failed_attempts + (not success),
                "last_attempt_at": now_ms,
                "last_success_at": now_ms if success else self.last_success_at,
                "latency_samples": samples,
                "avg_latency_ms": round(sum(samples) / len(samples), 3),
            }
        )


class StealClaim(Record):
    """Proof that one executor, and only one, took a stealable entry.

    Created with an atomic create-if-absent, so of all the thieves (and the
    owner, which claims its own entries before running them) exactly one wins.
    The claimant's process (pid, host, start time) is recorded so that a claim
    whose claimant died can be told apart, and released, without its instance
    file; ``done_at`` is set when the claimant finished the entry.
    """

    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    owner_instance_id: str
    entry_id: str
    claimed_by: str
    claimed_at: EpochMs
    entry: StealableQueueEntry | None = None
    claimant_pid: int | None = None
    claimant_hostname: str | None = None
    claimant_started_at: int | None = None  # the claimant's process start, epoch ms
    done_at: int | None = None
