"""Records of ``locks/{resource}.lock``: a held lock with an expiry."""

from __future__ import annotations

from pydantic import Field

from ._base import EpochMs, Record


class DistributedLock(Record):
    """A lock as pi writes it: ``lockId`` is ``{holderInstanceId}-{Date.now() base 36}``.

    Times are epoch milliseconds.  A lock whose ``expires_at`` has passed is
    free for anyone to take over, which is how the lock of a process that died
    holding it comes back.
    """

    lock_id: str = Field(min_length=1)
    acquired_at: EpochMs
    expires_at: EpochMs
    resource: str

    @property
    def holder(self) -> str:
        """The instance id that took the lock (``lockId`` minus its time suffix)."""
        head, sep, _ = self.lock_id.rpartition("-")
        return head if sep else self.lock_id

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at

    def ttl_left_ms(self, now_ms: int) -> int:
        return max(0, self.expires_at - now_ms)
