"""Records of ``locks/{resource}.lock``: a held lock with an expiry."""

from __future__ import annotations

from pydantic import Field

from ._base import EpochMs, Record


class DistributedLock(Record):
    """A lock as pi writes it: ``lockId`` is ``{holderInstanceId}-{Date.now() base 36}``.

    Times are epoch milliseconds, each on the clock of the process that wrote
    it.  A lock is free for anyone to take over once ``expires_at`` has passed
    and the file has been as old as its lease (:meth:`lease_ms`), which is how
    the lock of a process that died holding it comes back.

    ``written_at`` (pi-dash's, absent from pi's locks) is when the holder last
    wrote the lock, acquiring or renewing it: with ``expires_at`` it gives the
    lease in the holder's own clock, so that clock's offset cancels out.
    """

    lock_id: str = Field(min_length=1)
    acquired_at: EpochMs
    expires_at: EpochMs
    resource: str
    written_at: EpochMs | None = None

    @property
    def holder(self) -> str:
        """The instance id that took the lock (``lockId`` minus its time suffix)."""
        head, sep, _ = self.lock_id.rpartition("-")
        return head if sep else self.lock_id

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at

    @property
    def stamped_at(self) -> int:
        """When the holder wrote this version of the lock, by its own clock."""
        return self.acquired_at if self.written_at is None else self.written_at

    def lease_ms(self) -> int:
        """How long the lock lasts from its last write: a span within one clock, the
        holder's, so the holder's offset from everyone else's cancels out."""
        return max(0, self.expires_at - self.stamped_at)

    def writer_offset_ms(self, modified_ms: int) -> int:
        """How far the holder's clock was ahead (positive) or behind the clock that stamped
        the file (``modified_ms``) when it wrote this version of the lock."""
        return self.stamped_at - modified_ms

    def ttl_left_ms(self, now_ms: int) -> int:
        return max(0, self.expires_at - now_ms)
