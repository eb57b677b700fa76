"""Why an instance waits: the pure function, the snapshot, ``SlotTimeout`` and ``pi-dash why``."""

from __future__ import annotations

import json
import math
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.clock import ManualClock, utc_from_ms
from core.coordinator import Coordinator
from core.locks import LockService
from core.models import (
    Backoff429,
    DistributedLock,
    GcraBucket,
    InstanceInfo,
    InstanceParallelism,
    ModelParallelism,
    ProviderRateState,
    SharedBackoff,
)
from core.provider_config import parse_settings
from core.ratelimit import SharedRateLimiter
from core.slots import SlotTimeout
from core.snapshot import SnapshotBuilder
from core.stealing import steal_resource
from core.store import DirectoryStore
from core.waits import InstanceWaits, WaitKind, explain, instance_waits
from pi_dashboard.cli import main

NOW = 1_900_000_000_000
UNBOUND = parse_settings(
    {"crossInstance": {"providers": {"openai": {"requestsPerMinute": 6_000_000, "burst": 100_000}}}}, "test"
)


def _info(instance_id: str = "me", draining_since: int | None = None) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pid=1,
        session_id="s",
        started_at=utc_from_ms(NOW - 10_000),
        last_heartbeat=utc_from_ms(NOW),
        cwd="/w",
        active_models=[{"provider": "openai", "model": "gpt-4o", "since": utc_from_ms(NOW - 5_000)}],
        draining_since=draining_since,
    )


def _model(active: int, effective: int, current: int = 4, reason: str = "initial", multiplier: float = 1) -> ModelParallelism:
    return ModelParallelism(
        provider="openai",
        model="gpt-4o",
        base_parallelism=4,
        current_parallelism=current,
        min_parallelism=1,
        max_parallelism=16,
        effective_parallelism=effective,
        active_requests=active,
        adjustment_reason=reason,
        cross_instance_multiplier=multiplier,
    )


def _parallelism(model: ModelParallelism | None = None) -> InstanceParallelism:
    models = {"openai:gpt-4o": model} if model else {}
    return InstanceParallelism(instance_id="me", updated_at=NOW, models=models)


def _rate(tat_ahead_ms: float, rpm: float = 60, burst: int = 1) -> ProviderRateState:
    return ProviderRateState(
        provider="openai",
        requests_per_minute=rpm,
        burst=burst,
        effective_requests_per_minute=rpm * 0.9,
        buckets={"pool": GcraBucket(tat=NOW + tat_ahead_ms)},
        grants_per_second={str(NOW // 1000 - 10): 7},
    )


def test_a_core_instance_with_nothing_holding_it_back_says_so():
    waits = instance_waits(_info(), _parallelism(_model(1, 4)), {}, {}, [], NOW)
    assert waits.records_waits and waits.reasons == () and waits.cell == ""
    assert "is not held back" in explain(waits, "alive", NOW)


def test_pi_instances_record_nothing_rather_than_not_waiting():
    backoff = SharedBackoff(provider="openai", model="gpt-4o", until=NOW + 5_000)
    waits = instance_waits(_info(), None, {"openai:gpt-4o": backoff}, {"openai": _rate(30_000)}, [], NOW)
    assert not waits.records_waits and waits.reasons == () and waits.cell == "n/a"
    assert "records nothing" in explain(waits, "alive", NOW)


def test_every_reason_with_its_figures_and_the_dominant_one():
    backoff = SharedBackoff(
        provider="openai",
        model="gpt-4o",
        until=NOW + 12_000,
        recent429s=[Backoff429(at=NOW - 3_000, instance_id="peer", retry_after_ms=15_000)],
    )
    lock = DistributedLock(lock_id="thief-abc", acquired_at=NOW - 4_000, expires_at=NOW + 26_000, resource="steal:me")
    waits = instance_waits(
        _info(draining_since=NOW - 2_000),
        _parallelism(_model(2, 2, current=2, reason="429 from peer", multiplier=0.5)),
        {"openai:gpt-4o": backoff},
        {"openai": _rate(3_000 + 0)},
        [lock],
        NOW,
    )
    by_kind = {r.kind: r for r in waits.reasons}
    assert set(by_kind) == set(WaitKind)
    assert by_kind[WaitKind.BACKOFF].figures == {
        "until": NOW + 12_000,
        "remainingMs": 12_000,
        "retryAfterMs": 15_000,
        "deadlineFrom": "retry-after",
        "reportedBy": "peer",
        "recent429s": 1,
    }
    assert by_kind[WaitKind.PARALLELISM].figures["inFlight"] == 2 and by_kind[WaitKind.PARALLELISM].ends_in_ms is None
    assert "lowered to 2 of 4 by 429 from peer" in by_kind[WaitKind.PARALLELISM].text
    assert by_kind[WaitKind.RATE_LIMIT].figures["nextSlotMs"] == 3_000
    assert by_kind[WaitKind.RATE_LIMIT].figures["usedLastMinute"] == 7
    assert by_kind[WaitKind.LOCK].figures["holder"] == "thief" and by_kind[WaitKind.LOCK].ends_in_ms == 26_000
    assert waits.dominant.kind is WaitKind.DRAINING and waits.cell == "draining +4"
    # Without the drain, the reason that ends last (the lock's TTL) dominates.
    rest = InstanceWaits("me", True, tuple(r for r in waits.reasons if r.kind is not WaitKind.DRAINING))
    assert rest.dominant.kind is WaitKind.LOCK
    paragraph = explain(rest, "alive", NOW)
    assert paragraph.startswith("me (alive) is held back by 4 things: the lock steal:me held by thief")
    assert "Retry-After 15 s, reported by peer" in paragraph


def test_a_computed_deadline_and_an_own_lock_and_a_free_limiter():
    backoff = SharedBackoff(
        provider="openai", model="gpt-4o", until=NOW + 4_000, recent429s=[Backoff429(at=NOW - 100, instance_id="me")]
    )
    own = DistributedLock(lock_id="me-abc", acquired_at=NOW, expires_at=NOW + 30_000, resource="steal:me")
    waits = instance_waits(_info(), _parallelism(), {"openai:gpt-4o": backoff}, {"openai": _rate(-5_000)}, [own], NOW)
    (reason,) = waits.reasons
    assert reason.kind is WaitKind.BACKOFF and reason.figures["deadlineFrom"] == "computed"
    assert "computed from the recent 429s" in reason.text


@given(
    until=st.integers(NOW - 60_000, NOW + 60_000),
    active=st.integers(0, 8),
    effective=st.integers(1, 8),
    ahead=st.floats(-60_000, 60_000),
)
def test_reasons_appear_exactly_when_their_condition_holds(until, active, effective, ahead):
    backoff = SharedBackoff(provider="openai", model="gpt-4o", until=until)
    waits = instance_waits(
        _info(), _parallelism(_model(active, effective)), {"openai:gpt-4o": backoff}, {"openai": _rate(ahead)}, [], NOW
    )
    kinds = [r.kind for r in waits.reasons]
    assert (WaitKind.BACKOFF in kinds) == (until > NOW)
    assert (WaitKind.PARALLELISM in kinds) == (active >= effective)
    assert (WaitKind.RATE_LIMIT in kinds) == (_rate(ahead).next_slot_ms(NOW) > 0)
    assert all(r.ends_in_ms is None or r.ends_in_ms > 0 for r in waits.reasons)
    assert (waits.dominant is None) == (not kinds)


# ------------------------------------------------------------------ real instances


@pytest.fixture
def fleet(root):
    made = []

    def make() -> Coordinator:
        c = Coordinator(root=root, settings=UNBOUND)
        c.register(heartbeat=False)
        c.set_active_model("openai", "gpt-4o")
        made.append(c)
        return c

    yield make
    for c in made:
        c.unregister()


def _waits_of(root, instance_id: str, kind: WaitKind, timeout: float = 10.0):
    """The snapshot's reason of that kind, once the instance's records show it."""
    builder = SnapshotBuilder(Coordinator(root=root).store)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = builder.build()
        reasons = [r for r in snapshot.waits[instance_id].reasons if r.kind is kind]
        if reasons:
            return snapshot, reasons[0]
        time.sleep(0.05)
    raise AssertionError(f"no {kind.value} reason for {instance_id}")


def test_the_snapshot_names_the_shared_backoff_and_who_reported_it(root, fleet, capsys):
    reporter, waiter = fleet(), fleet()
    with waiter.llm_slot("openai", "gpt-4o"):
        pass  # the waiter's parallelism record exists: it records its waits
    with reporter.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=30)
    snapshot, reason = _waits_of(root, waiter.instance_id, WaitKind.BACKOFF)
    assert reason.figures["reportedBy"] == reporter.instance_id and reason.figures["retryAfterMs"] == 30_000
    assert 25_000 < reason.ends_in_ms <= 30_000

    assert main(["status", "--json", "--root", str(root)]) == 0
    (entry,) = [i for i in json.loads(capsys.readouterr().out)["instances"] if i["key"] == waiter.instance_id]
    assert entry["recordsWaits"] is True
    assert [w["kind"] for w in entry["waits"]] == ["backoff"] and entry["waits"][0]["reportedBy"] == reporter.instance_id

    assert main(["why", waiter.instance_id[:-3], "--root", str(root)]) == 0
    out = capsys.readouterr().out
    # The instance by its label, then its full id once; the reporter by its label.
    waiter_label, reporter_label = snapshot.label(waiter.instance_id), snapshot.label(reporter.instance_id)
    assert waiter_label != waiter.instance_id and reporter_label != reporter.instance_id
    assert out.startswith(
        f"{waiter_label} ({waiter.instance_id}, alive) is held back by one thing: the shared 429 backoff of openai:gpt-4o"
    )
    assert f"Retry-After 30 s, reported by {reporter_label})" in out


def test_parallelism_at_its_cap_is_shown_while_a_request_runs(root, fleet):
    first, *_ = [fleet() for _ in range(4)]  # four instances share 4: one each
    with first.llm_slot("openai", "gpt-4o"):
        _, reason = _waits_of(root, first.instance_id, WaitKind.PARALLELISM)
        assert (reason.figures["inFlight"], reason.figures["effective"]) == (1, 1)
        assert "shared with other instances" in reason.text
        with pytest.raises(SlotTimeout) as raised:
            with first.llm_slot("openai", "gpt-4o", timeout=0.1):
                pass
    assert raised.value.waited_on is WaitKind.PARALLELISM
    assert "1 of 1 requests of openai:gpt-4o in flight" in str(raised.value)


def test_a_slot_timeout_names_the_backoff_it_waited_on(root, fleet):
    c = fleet()
    with c.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=30)
    with pytest.raises(SlotTimeout) as raised:
        with c.llm_slot("openai", "gpt-4o", timeout=0.1):
            pass
    assert raised.value.waited_on is WaitKind.BACKOFF and "429 backoff of openai:gpt-4o has" in str(raised.value)


def test_a_slot_timeout_names_the_rate_limiter(root):
    tight = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 1, "burst": 1}}}}, "test")
    c = Coordinator(root=root, settings=tight)
    c.register(heartbeat=False)
    try:
        with c.llm_slot("openai", "gpt-4o"):
            pass
        with pytest.raises(SlotTimeout) as raised:
            with c.llm_slot("openai", "gpt-4o", timeout=0.2):
                pass
        assert raised.value.waited_on is WaitKind.RATE_LIMIT
        snapshot = SnapshotBuilder(c.store).build()
        (reason,) = snapshot.waits[c.instance_id].reasons
        assert reason.kind is WaitKind.RATE_LIMIT and 50_000 < reason.figures["nextSlotMs"] <= 60_000
    finally:
        c.unregister()


def test_why_for_a_lock_a_pi_instance_and_unknown_names(root, fleet, capsys):
    owner, thief = fleet(), fleet()
    assert LockService(thief.store, thief.instance_id).try_acquire(steal_resource(owner.instance_id), ttl_ms=30_000)
    assert main(["why", owner.instance_id, "--root", str(root)]) == 0
    out = capsys.readouterr().out
    label = SnapshotBuilder(Coordinator(root=root).store).build().label
    assert f"the lock steal:{owner.instance_id} held by {label(thief.instance_id)} " in out  # the lock by its name
    assert main(["why", "nobody", "--root", str(root)]) == 1
    assert "No instance is called nobody" in capsys.readouterr().err
    assert main(["why", "sess-", "--root", str(root)]) == 1
    assert "2 instances match sess-" in capsys.readouterr().err


@given(bookings=st.integers(0, 6), pool_bookings=st.integers(2, 8))
def test_reserved_capacity_is_the_instance_s_own_way_past_a_full_pool(bookings, pool_bookings):
    """An instance with capacity reserved for it waits for whichever of the pool and its own
    bucket frees first; the wait shown is never shorter than the limiter's, nor (once the record
    names its bucket: the reservation itself is in the config, which the dashboard has not)
    longer than its own bucket's next theoretical arrival."""
    config = {"crossInstance": {
        "providers": {"openai": {"requestsPerMinute": 60, "burst": 1}},
        "instances": {"alpha": {"reservedCapacity": 30}},
    }}
    settings = parse_settings(config, "test")
    clock = ManualClock(NOW)
    with tempfile.TemporaryDirectory() as tmp:
        store = DirectoryStore(tmp)
        store.ensure_layout()
        other = SharedRateLimiter(store, settings, instance_name="other", clock=clock)
        alpha = SharedRateLimiter(store, settings, instance_name="alpha", clock=clock)
        for _ in range(pool_bookings):
            assert other.reserve("openai", max_wait_ms=10 * 60_000) is not None
        for _ in range(bookings):
            alpha.reserve("openai", max_wait_ms=10 * 60_000)
        state = alpha.state("openai")
        for name, limiter in (("other", other), ("alpha", alpha)):
            info = _info().model_copy(update={"instance_name": name})
            waits = instance_waits(info, _parallelism(), {}, {"openai": state}, [], NOW)
            shown = next((r.ends_in_ms for r in waits.reasons if r.kind is WaitKind.RATE_LIMIT), 0)
            granted = limiter.reserve("openai", max_wait_ms=10 * 60_000)
            actual = granted.wait_ms if granted is not None else None
            if name == "other":
                assert shown == math.ceil(state.next_slot_ms(NOW))  # the pool alone
            else:
                own = state.buckets.get("reserved:alpha")
                assert actual is not None and shown >= actual - 1
                if own is not None:
                    assert shown <= max(0, math.ceil(min(state.next_slot_ms(NOW), own.tat - NOW)))
                    assert shown < math.ceil(state.next_slot_ms(NOW)) or own.tat >= NOW + state.next_slot_ms(NOW)
            state = alpha.state("openai")
