"""Work stealing with exactly-once claims and persisted statistics.

pi's ``stealWork`` only *picks* an entry; two thieves can pick the same one and
run the task twice.  Here every executor of a stealable entry (each thief, and
the owner itself before it runs its own entry) must first *claim* it with the
store's atomic create-if-absent under ``pi-dash/claims/``: exactly one claim
succeeds.  The ``steal:{owner}`` lock pi uses is still taken around a steal so
that pi's own thieves and ours keep out of each other's way.

A claim's key is ``{owner}/{entryId}``; when that cannot be a file name (a long
or hostile id) the store gives it a bounded name without the ``/``.  A key
with other than one ``/`` does not tell owner from entry (an entry id may hold
``/``), so then the pair is read from the claim itself, which names both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .clock import SYSTEM_CLOCK, Clock
from .events import EventLog
from .locks import DEFAULT_TTL_MS, LockService
from .models import BroadcastQueueState, CorruptRecord, StealableQueueEntry, StealClaim, StealingStats
from .semantics import is_busy_queue, pick_steal_entry
from .store import CLAIMS, STEALING_STATS, EntryUnreadable, Loaded, Store, StoreError, read_record

CLAIM_SEPARATOR = "/"
MAX_PICKS_PER_STEAL = 3


def claim_key(owner_instance_id: str, entry_id: str) -> str:
    return f"{owner_instance_id}{CLAIM_SEPARATOR}{entry_id}"


def split_claim_key(key: str) -> tuple[str, str]:
    """``(owner, entryId)`` as a claim's key spells them (a bounded name spells neither: no ``/``)."""
    owner, _, entry_id = key.partition(CLAIM_SEPARATOR)  # an instance id, a file name in pi's spaces, holds no "/"
    return owner, entry_id


def claim_pair(key: str, claim: StealClaim | None) -> tuple[str, str]:
    """``(owner, entryId)`` of a claim: from the record when there is one, else from its key."""
    if claim is not None:
        return claim.owner_instance_id, claim.entry_id
    return split_claim_key(key)


STEAL_PREFIX = "steal:"


def steal_resource(owner_instance_id: str) -> str:
    return f"{STEAL_PREFIX}{owner_instance_id}"


def offered_to_claiming_thieves(state: BroadcastQueueState) -> tuple[StealableQueueEntry, ...]:
    """The entries a queue offers to thieves that claim (only ``core`` owners offer any)."""
    return state.claimable_entries or ()


@dataclass(frozen=True, slots=True)
class StolenWork:
    """An entry this instance now owns exclusively."""

    owner_instance_id: str
    entry: StealableQueueEntry
    claim: StealClaim


class StealingService:
    """Claims and statistics for one instance."""

    def __init__(
        self,
        store: Store,
        locks: LockService,
        instance_id: str,
        clock: Clock = SYSTEM_CLOCK,
        events: EventLog | None = None,
    ) -> None:
        self.store = store
        self.locks = locks
        self.instance_id = instance_id
        self.clock = clock
        self.events = events
        self._stats_lock = threading.Lock()
        self._stats = self._load_stats()

    # --------------------------------------------------------------- claims
    def claim(self, owner_instance_id: str, entry: StealableQueueEntry | str) -> StealClaim | None:
        """Claim an entry for this instance; ``None`` if somebody claimed it first."""
        entry_id = entry if isinstance(entry, str) else entry.id
        claim = StealClaim(
            owner_instance_id=owner_instance_id,
            entry_id=entry_id,
            claimed_by=self.instance_id,
            claimed_at=self.clock.now_ms(),
            entry=None if isinstance(entry, str) else entry,
        )
        created = self.store.create(CLAIMS, claim_key(owner_instance_id, entry_id), claim.to_json())
        return claim if created else None

    def claim_holder(self, owner_instance_id: str, entry_id: str) -> str | None:
        """Who claimed an entry, if anyone."""
        try:
            found = read_record(self.store, CLAIMS, claim_key(owner_instance_id, entry_id), StealClaim)
        except (CorruptRecord, EntryUnreadable):
            return "unknown"
        return None if found is None else found[0].claimed_by

    def claimed_pairs(self, owners: Iterable[str] | None = None) -> frozenset[tuple[str, str]]:
        """``(owner, entryId)`` of every claim, optionally only for ``owners``."""
        wanted = None if owners is None else set(owners)
        pairs = set()
        for key in self.store.keys(CLAIMS):
            pair = split_claim_key(key) if key.count(CLAIM_SEPARATOR) == 1 else self._read_pair(key)
            if pair is not None and (wanted is None or pair[0] in wanted):
                pairs.add(pair)
        return frozenset(pairs)

    def _read_pair(self, key: str) -> tuple[str, str] | None:
        try:
            found = read_record(self.store, CLAIMS, key, StealClaim)
        except (CorruptRecord, StoreError):
            return None
        return None if found is None else claim_pair(key, found[0])

    # ---------------------------------------------------------------- steal
    def safe_steal(self, remote_states: Iterable[BroadcastQueueState]) -> StolenWork | None:
        """Steal the most urgent unclaimed entry offered to claiming thieves by
        the busy queues among ``remote_states`` (pi's choice, in directory order), or ``None``.

        Counts as one attempt whenever there was a queue to steal from.
        """
        victims = [s for s in remote_states if is_busy_queue(s)]
        if not victims:
            return None
        started = self.clock.monotonic()
        stolen = None
        try:
            stolen = self._steal_from(victims)
        finally:
            self._record_attempt(stolen is not None, (self.clock.monotonic() - started) * 1000)
        return stolen

    def _steal_from(self, victims: list[BroadcastQueueState]) -> StolenWork | None:
        skip = set(self.claimed_pairs(s.instance_id for s in victims))
        for _ in range(MAX_PICKS_PER_STEAL):
            offer = pick_steal_entry(victims, frozenset(skip), offered_to_claiming_thieves)
            if offer is None:
                return None
            state, entry = offer
            lock = self.locks.try_acquire(steal_resource(state.instance_id), DEFAULT_TTL_MS)
            if lock is None:
                # Another thief is working on this queue: try the others.
                victims = [v for v in victims if v.instance_id != state.instance_id]
                continue
            try:
                claim = self.claim(state.instance_id, entry)
            finally:
                self.locks.release(lock)
            if claim is not None:
                if self.events is not None:
                    self.events.emit(
                        "steal", f"{self.instance_id} stole {entry.id} ({entry.tool_name}, {entry.priority}) from {state.instance_id}"
                    )
                return StolenWork(state.instance_id, entry, claim)
            skip.add((state.instance_id, entry.id))
        return None

    # ---------------------------------------------------------------- stats
    def _load_stats(self) -> StealingStats:
        try:
            found = read_record(self.store, STEALING_STATS, self.instance_id, StealingStats)
        except (CorruptRecord, StoreError):
            found = None
        return found[0] if found else StealingStats(instance_id=self.instance_id)

    @property
    def stats(self) -> StealingStats:
        return self._stats

    def _record_attempt(self, success: bool, latency_ms: float) -> None:
        with self._stats_lock:
            self._stats = self._stats.with_attempt(success=success, latency_ms=latency_ms, now_ms=self.clock.now_ms())
            stats = self._stats
        self._save(stats)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = StealingStats(instance_id=self.instance_id)
            stats = self._stats
        self._save(stats)

    def _save(self, stats: StealingStats) -> None:
        # Statistics are advisory: losing the last one in a power cut is fine.
        self.store.write(STEALING_STATS, self.instance_id, stats.to_json(), durable=False)

    # -------------------------------------------------------------- cleanup
    def cleanup_claims(
        self,
        claims: Mapping[str, Loaded[StealClaim]],
        queue_states: Mapping[str, BroadcastQueueState],
        live_instances: set[str],
        retention_ms: int,
    ) -> list[str]:
        """Forget claims nobody can still need.

        A claim must outlive every queue state that still offers its entry,
        or a thief reading that state could claim the entry again.  So a claim
        goes only when its owner is gone, or when the owner no longer offers the
        entry and the claim is older than ``retention_ms``.
        """
        now = self.clock.now_ms()
        removed = []
        for key, loaded in claims.items():
            if loaded.raw is None:
                continue
            owner, entry_id = claim_pair(key, loaded.record)
            state = queue_states.get(owner)
            offered = state is not None and any(
                e.id == entry_id for e in (*state.stealable_entries, *offered_to_claiming_thieves(state))
            )
            claimed_at = loaded.record.claimed_at if loaded.record else loaded.modified_ms
            old = now - claimed_at > retention_ms
            gone = owner not in live_instances and state is None
            if (gone or (old and not offered)) and self.store.delete_if(CLAIMS, key, loaded.raw):
                removed.append(key)
        return removed
