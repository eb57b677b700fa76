"""The Redis GCRA script decides as ``core.ratelimit.gcra_step`` does: the same sequence of
requests, 429s and clock jumps gives the same answers and the same state on both backends
(to the 14 significant digits Redis's cjson writes numbers with)."""

from __future__ import annotations

import json
import random

import pytest

from core.clock import ManualClock
from core.models import CorruptRecord, ProviderRateState
from core.provider_config import parse_settings
from core.ratelimit import SharedRateLimiter
from core.store import RATE_LIMITS
from tests.conftest import make_store

SETTINGS = {
    "crossInstance": {
        "providers": {"openai": {"requestsPerMinute": 600, "burst": 5, "models": {"gpt-4o*": {"requestsPerMinute": 120, "burst": 2}}}},
        "adaptiveRateControl": {"quietPeriodMs": 5_000},
        "instances": {"ci": {"priority": 9, "reservedCapacity": 60}, "bg": {"priority": 1}},
    }
}


@pytest.fixture
def stores(request, tmp_path):
    directory, redis_store = make_store("directory", request, tmp_path), make_store("redis", request, tmp_path)
    yield directory, redis_store
    redis_store.flush_prefix()


def test_the_script_and_the_python_step_agree(stores):
    clock = ManualClock(1_900_000_000_000)
    settings = parse_settings(SETTINGS, "t")
    limiters = [
        {name: SharedRateLimiter(store, settings, instance_name=name, clock=clock) for name in ("ci", "bg", "anon")}
        for store in stores
    ]
    rng = random.Random(7)
    answers: list[list[object]] = [[], []]
    for step in range(400):
        name = rng.choice(["ci", "bg", "anon"])
        model = rng.choice(["gpt-4o", "gpt-4o-mini", "o3", ""])
        max_wait = rng.choice([None, 0, 500])
        report = rng.random() < 0.05
        for limiter, out in zip((side[name] for side in limiters), answers):
            if report:
                out.append(limiter.report_429("openai").effective_requests_per_minute)
            else:
                booked = limiter.reserve("openai", model, max_wait_ms=max_wait)
                out.append(booked and (booked.bucket, booked.start_ms, booked.wait_ms))
        assert answers[0][-1] == pytest.approx(answers[1][-1], rel=1e-13, abs=0.05), f"step {step}"
        clock.advance(rng.choice([0, 0, 10, 100, 1_000, 7_000, 70_000]))
    python, script = (ProviderRateState.from_json(store.read(RATE_LIMITS, "openai").data) for store in stores)
    assert script.model_dump(exclude={"buckets", "effective_requests_per_minute"}) == python.model_dump(
        exclude={"buckets", "effective_requests_per_minute"}
    )
    assert script.effective_requests_per_minute == pytest.approx(python.effective_requests_per_minute, rel=1e-13)
    assert {k: b.tat for k, b in script.buckets.items()} == pytest.approx({k: b.tat for k, b in python.buckets.items()})
    assert python.total_grants > 100 and len(python.buckets) >= 3  # pool, reserved:ci, a model


HOSTILE_STATES = [
    {"grantsPerSecond": {"abc": 1}},
    {"grantsPerSecond": {"1900000000": -1}},
    {"grantsPerSecond": {"99999999999999999999": 1}},
    {"buckets": {"pool": {"tat": 1e300}}},
    {"buckets": {"pool": {"tat": -5}}},
    {"buckets": {"pool": "soon"}},
    {"effectiveRequestsPerMinute": 1e-300},
    {"requestsPerMinute": 1e12},
    {"burst": 0},
    {"last429At": 1e17},
    {"totalGrants": -3},
]


@pytest.mark.parametrize("change", HOSTILE_STATES, ids=lambda change: str(change))
def test_a_state_out_of_range_is_started_afresh_by_both(stores, change):
    """A rate record no reader would accept (written by a bug elsewhere) never stops the
    provider's requests: both backends start it afresh and grant the same slot."""
    clock = ManualClock(1_900_000_000_000)
    settings = parse_settings(SETTINGS, "t")
    base = {"formatVersion": 1, "provider": "openai", "requestsPerMinute": 600, "burst": 5,
            "effectiveRequestsPerMinute": 600, "buckets": {"pool": {"tat": 1_900_000_100_000}},
            "grantsPerSecond": {"1899999995": 2}, "totalGrants": 2}
    raw = json.dumps({**base, **change}).encode()
    with pytest.raises(CorruptRecord):
        ProviderRateState.from_json(raw)
    answers = []
    for store in stores:
        store.write(RATE_LIMITS, "openai", raw)
        booked = SharedRateLimiter(store, settings, instance_name="anon", clock=clock).reserve("openai", "o3")
        answers.append(booked and (booked.bucket, booked.start_ms))
        ProviderRateState.from_json(store.read(RATE_LIMITS, "openai").data)  # what was written back is valid
    assert answers[0] == answers[1] == ("pool", 1_900_000_000_000)


def test_a_bucket_booked_beyond_a_week_is_ignored_by_both(stores):
    """A valid-looking arrival time in the year 2150 would stop the provider for good."""
    clock = ManualClock(1_900_000_000_000)
    settings = parse_settings(SETTINGS, "t")
    state = {"formatVersion": 1, "provider": "openai", "requestsPerMinute": 600, "burst": 5, "effectiveRequestsPerMinute": 600,
             "buckets": {"pool": {"tat": 5_700_000_000_000}}}
    answers = []
    for store in stores:
        store.write(RATE_LIMITS, "openai", json.dumps(state).encode())
        booked = SharedRateLimiter(store, settings, instance_name="anon", clock=clock).reserve("openai", "o3")
        answers.append(booked and (booked.bucket, booked.start_ms))
    assert answers[0] == answers[1] == ("pool", 1_900_000_000_000)
