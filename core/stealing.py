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

A claim lives until nobody can run its entry again:

* **claimed**: the claimant runs the entry, then marks the claim done
  (:meth:`StealingService.complete`).  Kept as long as the claimant lives:
  a stopped claimant is alive and resumes its work.
* **released**: a claim not done whose claimant is gone (on this host, its
  pid is not running with the recorded start time; elsewhere, its instance
  is gone by heartbeat) is deleted, so the entry is claimed and run again by
  its owner or another thief: run once, not lost.
* **done**: kept while the owner lives, until the owner has learnt it
  (``Coordinator.done_entries``) and dropped the entry; the owner itself then
  forgets it after ``retention`` (the heartbeat timeout plus the freshness
  of a queue state), by when every queue state that offered the entry is too
  old to act on.  A thief whose claim lands more than half a heartbeat
  timeout after it read the states (it was stopped in between) gives the
  claim back at once, so it cannot claim from a state that old.  pi's own
  instances never look at claims: theirs are forgotten once old and no
  longer offered, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .clock import SYSTEM_CLOCK, Clock
from .events import EventLog
from .locks import DEFAULT_TTL_MS, LockService
from . import procs
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
        self._process = (os.getpid(), procs.HOSTNAME, procs.own_start_ms())

    # --------------------------------------------------------------- claims
    def claim(self, owner_instance_id: str, entry: StealableQueueEntry | str) -> StealClaim | None:
        """Claim an entry for this instance; ``None`` if somebody claimed it first."""
        entry_id = entry if isinstance(entry, str) else entry.id
        pid, hostname, started_ms = self._process
        claim = StealClaim(
            owner_instance_id=owner_instance_id,
            entry_id=entry_id,
            claimed_by=self.instance_id,
            claimed_at=self.clock.now_ms(),
            entry=None if isinstance(entry, str) else entry,
            claimant_pid=pid,
            claimant_hostname=hostname,
            claimant_started_at=started_ms,
        )
        created = self.store.create(CLAIMS, claim_key(owner_instance_id, entry_id), claim.to_json())
        return claim if created else None

    def complete(self, owner_instance_id: str, entry_id: str) -> bool:
        """Mark this instance's claim done; ``False`` if it is no longer ours (released
        while we were taken for dead, so the entry may have run elsewhere too)."""
        key = claim_key(owner_instance_id, entry_id)
        for _ in range(3):
            try:
                found = read_record(self.store, CLAIMS, key, StealClaim)
            except (CorruptRecord, EntryUnreadable):
                return False
            if found is None or found[0].claimed_by != self.instance_id:
                return False
            claim, blob = found
            if claim.done_at is not None:
                return True
            done = claim.model_copy(update={"done_at": self.clock.now_ms()})
            if self.store.replace_if(CLAIMS, key, blob.data, done.to_json()):
                return True
        return False

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
    def safe_steal(
        self, remote_states: Iterable[BroadcastQueueState], read_at: float, max_delay_s: float
    ) -> StolenWork | None:
        """Steal the most urgent unclaimed entry offered to claiming thieves by
        the busy queues among ``remote_states`` (pi's choice, in directory order), or ``None``.

        ``read_at``: when the states were read (``clock.monotonic()``).  A
        claim that lands more than ``max_delay_s`` later (this process was
        stopped in between) is given back: the states no longer prove the
        entry is on offer, it may have run and its claim have been forgotten.
        Counts as one attempt whenever there was a queue to steal from.
        """
        victims = [s for s in remote_states if is_busy_queue(s)]
        if not victims:
            return None
        started = self.clock.monotonic()
        stolen = None
        try:
            stolen = self._steal_from(victims, read_at + max_delay_s)
        finally:
            self._record_attempt(stolen is not None, (self.clock.monotonic() - started) * 1000)
        return stolen

    def _steal_from(self, victims: list[BroadcastQueueState], claim_by: float) -> StolenWork | None:
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
            if claim is not None and self.clock.monotonic() > claim_by:
                # Held up (stopped?) since reading the states: give the claim back.
                self.store.delete_if(CLAIMS, claim_key(state.instance_id, entry.id), claim.to_json())
                return None
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
    def claimant_gone(self, claim: StealClaim, instance_gone: Callable[[str], bool | None]) -> bool | None:
        """Is the process that made ``claim`` gone?  By pid and start time where the
        OS can tell, else by the claimant's instance (``None``: it has no file)."""
        if claim.claimant_pid is not None:
            liveness = procs.check(
                claim.claimant_pid,
                registered_ms=claim.claimed_at,
                recorded_start_ms=claim.claimant_started_at,
                hostname=claim.claimant_hostname,
            )
            if liveness is not procs.Liveness.UNKNOWN:
                return liveness is procs.Liveness.DEAD
        return instance_gone(claim.claimed_by)

    def cleanup_claims(
        self,
        claims: Mapping[str, Loaded[StealClaim]],
        queue_states: Mapping[str, BroadcastQueueState],
        instance_gone: Callable[[str], bool | None],
        settles_own_claims: Callable[[str], bool],
        settled: Mapping[str, int],
        retention_ms: int,
    ) -> list[str]:
        """Release the claims of gone claimants and forget those nobody can still need.

        ``instance_gone(id)``: by :func:`core.procs.gone`, ``None`` if it has no file
        (gone too once that has lasted ``retention``); ``settles_own_claims(id)``:
        a ``core`` instance, which learns of its done entries and forgets their
        claims itself; ``settled``: this instance's entries it learnt were done,
        and when.  See the module's docstring for the lifecycle.
        """
        now = self.clock.now_ms()
        removed = []
        for key, loaded in claims.items():
            if loaded.raw is None:
                continue
            owner, entry_id = claim_pair(key, loaded.record)
            claim = loaded.record
            state = queue_states.get(owner)
            offered = state is not None and any(
                e.id == entry_id for e in (*state.stealable_entries, *offered_to_claiming_thieves(state))
            )
            old = now - (loaded.record.claimed_at if loaded.record else loaded.modified_ms) > retention_ms
            if owner != self.instance_id and state is None and instance_gone(owner) is not False:
                reason = "owner gone"  # nobody will offer or run its entries again
            elif claim is None:
                reason = "unreadable, old and no longer offered" if old and not offered else ""
            elif claim.done_at is None:
                gone = self.claimant_gone(claim, instance_gone)
                reason = f"released: {claim.claimed_by} is gone" if gone or (gone is None and old) else ""
            elif owner == self.instance_id:
                learnt = settled.get(entry_id)
                reason = "done and settled" if learnt is not None and now - learnt > retention_ms else ""
            elif settles_own_claims(owner):
                reason = ""  # its owner forgets it once it has learnt it is done
            else:
                reason = "done, old and no longer offered" if old and not offered else ""
            if reason and self.store.delete_if(CLAIMS, key, loaded.raw):
                removed.append(key)
                if reason.startswith("released") and self.events is not None:
                    self.events.emit("cleanup", f"claim on {entry_id} of {owner} {reason}: the entry is free to run")
        return removed
