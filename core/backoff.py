"""Cross-instance 429 backoff: one instance's 429 makes every instance using that model wait.

The shared record (``pi-dash/backoff/{provider:model}.json``) holds a deadline
and the recent 429s.  A 429 pushes the deadline to ``now + Retry-After`` when
the provider sent one, else to ``now + min(60 s, 1 s * 2^n)`` with ``n`` the
429s in the window (pi's recommended backoff at the moment of the error); the
deadline never moves back.  Every instance reads the record before starting a
request, waits until the deadline, and applies to its own parallelism each
429 another instance saw, with that 429's time, so reductions and recovery are
shared as well.
"""

from __future__ import annotations

from .clock import SYSTEM_CLOCK, Clock
from .models import Backoff429, CorruptRecord, SharedBackoff
from .parallelism import MAX_BACKOFF_MS, build_key
from .store import BACKOFF, EntryUnreadable, Store

WINDOW_MS = 300_000  # pi's error window
MAX_KEPT = 50
MAX_RETRY_AFTER_MS = 120_000
"""The largest Retry-After a provider may send: no one 429 defers the fleet longer."""
# No instance's clock is a day off: a deadline further ahead was written by something
# else, and waiting for it would stop the model for good, so it is ignored.
TRUSTED_AHEAD_MS = 86_400_000


def honoured_until(backoff: SharedBackoff, now_ms: int, age_ms: int) -> int:
    """The deadline an instance waits for: the record's, but at most
    :data:`MAX_RETRY_AFTER_MS` after the record was last written (``age_ms``, by
    the store's clock), so a writer whose clock ran hours ahead cannot hold the
    fleet for hours; none at all when it lies over a day ahead."""
    if _untrusted(backoff.until, now_ms):
        return 0
    return min(backoff.until, now_ms + max(0, MAX_RETRY_AFTER_MS - age_ms))


def _untrusted(until: int, now_ms: int) -> bool:
    return until > now_ms + TRUSTED_AHEAD_MS


def deadline_skew_ms(backoff: SharedBackoff, now_ms: int) -> int:
    """How far the deadline lies past the latest any 429 could set now: positive when
    the writer's clock ran ahead of ours."""
    return backoff.until - now_ms - MAX_RETRY_AFTER_MS


def exponential_backoff_ms(recent_429s: int) -> int:
    return min(MAX_BACKOFF_MS, 1000 * 2**recent_429s)


class BackoffBoard:
    def __init__(self, store: Store, instance_id: str, clock: Clock = SYSTEM_CLOCK, window_ms: int = WINDOW_MS) -> None:
        self.store = store
        self.instance_id = instance_id
        self.clock = clock
        self.window_ms = window_ms

    def report_429(self, provider: str, model: str, retry_after_ms: int | None = None) -> SharedBackoff:
        """Record a 429 and push the shared deadline; returns the record now stored."""
        provider, model = provider.lower(), model.lower()
        now = self.clock.now_ms()

        def apply(raw: bytes | None) -> bytes:
            current = _trusted(_parse(raw), now) or SharedBackoff(provider=provider, model=model)
            recent = tuple(e for e in current.recent429s if e.at > now - self.window_ms)
            recent = (*recent, Backoff429(at=now, instance_id=self.instance_id, retry_after_ms=retry_after_ms))[-MAX_KEPT:]
            wait = retry_after_ms if retry_after_ms is not None else exponential_backoff_ms(len(recent))
            until = max(current.until, now + min(MAX_RETRY_AFTER_MS, max(0, wait)))
            return current.model_copy(update={"until": until, "recent429s": recent}).to_json()

        return SharedBackoff.from_json(self.store.update(BACKOFF, build_key(provider, model), apply))

    def current(self, provider: str, model: str) -> SharedBackoff | None:
        """The shared record, its deadline as :func:`honoured_until` honours it."""
        try:
            blob = self.store.read(BACKOFF, build_key(provider, model))
        except EntryUnreadable:
            return None
        shared = None if blob is None else _parse(blob.data)
        if shared is None or shared.until <= (now := self.clock.now_ms()):
            return shared
        until = honoured_until(shared, now, self.store.now_ms() - blob.modified_ms)
        return shared if until == shared.until else shared.model_copy(update={"until": until})


def _trusted(shared: SharedBackoff | None, now_ms: int) -> SharedBackoff | None:
    """``shared``, less a deadline no instance could have set (over a day ahead)."""
    if shared is not None and _untrusted(shared.until, now_ms):
        return shared.model_copy(update={"until": 0})
    return shared


def _parse(raw: bytes | None) -> SharedBackoff | None:
    if not raw:
        return None
    try:
        return SharedBackoff.from_json(raw)
    except CorruptRecord:
        return None  # a bad record is replaced by the next 429; waiting on garbage helps nobody
