"""Dynamic parallelism (seed 002) with pi's constants, checked with an injected clock."""

from __future__ import annotations

import json

import pytest

from core.clock import ManualClock
from core.parallelism import (
    AdjusterConfig,
    DynamicParallelismAdjuster,
    build_key,
    create_parallelism_adjuster,
    format_dynamic_parallelism_summary,
    get_parallelism,
    get_parallelism_adjuster,
    reset_parallelism_adjuster,
)
from core.store import PARALLELISM

P, M = "OpenAI", "GPT-4o"


@pytest.fixture
def adjuster(clock: ManualClock) -> DynamicParallelismAdjuster:
    return DynamicParallelismAdjuster(clock=clock)


def test_defaults_are_pis(adjuster):
    config = adjuster.get_config(P, M)
    assert (config.base_parallelism, config.min_parallelism, config.max_parallelism) == (4, 1, 16)
    assert adjuster.get_parallelism(P, M) == 4
    assert build_key(P, M) == "openai:gpt-4o"


@pytest.mark.parametrize(
    ("error", "expected"),
    [("429", [2, 1, 1]), ("timeout", [3, 2, 1]), ("error", [3, 2, 1])],
)
def test_reductions_follow_the_formula(adjuster, error, expected):
    # 429: floor(4*0.7)=2, floor(2*0.7)=1; timeout: floor(4*0.9)=3, floor(2.7)=2, floor(1.8)=1;
    # error: floor(4*0.95)=3, floor(2.85)=2, floor(1.9)=1 - and never below min.
    seen = []
    for _ in expected:
        adjuster.adjust_for_error(P, M, error)
        seen.append(adjuster.get_config(P, M).current_parallelism)
    assert seen == expected


def test_the_reason_says_what_an_error_did(adjuster):
    """A 429 at the minimum lowers nothing, and the reason (shown by ``pi-dash why``) says so."""
    adjuster.adjust_for_error(P, M, "429")
    assert adjuster.get_config(P, M).adjustment_reason == "429 error: 4 -> 2"
    adjuster.adjust_for_error(P, M, "429", seen_by="sess-b")
    adjuster.adjust_for_error(P, M, "429", seen_by="sess-b")
    assert adjuster.get_config(P, M).adjustment_reason == "429 error (reported by sess-b): held at 1, its minimum"


def test_recovery_waits_for_a_quiet_window_then_grows_by_ten_percent(adjuster, clock):
    big = DynamicParallelismAdjuster(AdjusterConfig(base_parallelism=10, max_parallelism=16), clock=clock)
    big.adjust_for_error(P, M, "429")  # 10 -> 7
    assert big.get_config(P, M).current_parallelism == 7
    clock.advance(299_999)
    assert not big.attempt_recovery(P, M)  # an error within 5 minutes
    clock.advance(2)
    assert big.attempt_recovery(P, M)  # ceil(7 * 1.1) = 8
    assert big.get_config(P, M).current_parallelism == 8
    clock.advance(59_999)
    assert not big.attempt_recovery(P, M)  # 60 s since the last change not yet passed
    clock.advance(1)
    big.process_automatic_recovery()  # ceil(8.8) = 9
    clock.advance(60_000)
    big.process_automatic_recovery()  # ceil(9.9) = 10
    clock.advance(60_000)
    big.process_automatic_recovery()  # at base: stays
    assert big.get_config(P, M).current_parallelism == 10


def test_health_and_recommended_backoff(adjuster, clock):
    assert adjuster.get_health(P, M).healthy
    adjuster.adjust_for_error(P, M, "429")
    clock.advance(300)
    adjuster.adjust_for_error(P, M, "429")
    clock.advance(1_000)
    health = adjuster.get_health(P, M)
    assert health.recent429_count == 2 and not health.healthy
    assert health.recommended_backoff_ms == 1000 * 2**2 - 1_000
    clock.advance(3_000)
    assert adjuster.get_health(P, M).recommended_backoff_ms == 0
    for _ in range(10):
        adjuster.adjust_for_error(P, M, "429")
    assert adjuster.get_health(P, M).recommended_backoff_ms == 60_000  # capped


def test_healthy_needs_eighty_percent_of_base_and_no_recent_errors(clock):
    adjuster = DynamicParallelismAdjuster(AdjusterConfig(base_parallelism=10), clock=clock)
    adjuster.adjust_for_error(P, M, "error")  # 10 -> 9
    assert not adjuster.get_health(P, M).healthy
    clock.advance(300_001)
    assert adjuster.get_health(P, M).healthy  # 9 >= 8 and the error left the window


def test_cross_instance_limits_share_and_never_stall(adjuster):
    adjuster.apply_cross_instance_limits(P, M, 3)
    assert adjuster.get_parallelism(P, M) == 1  # floor(4/3)
    adjuster.apply_cross_instance_limits(P, M, 8)
    assert adjuster.get_parallelism(P, M) == 1  # floor(0.5) would stall: the minimum holds
    adjuster.apply_cross_instance_limits(P, M, 1)
    assert adjuster.get_parallelism(P, M) == 4


def test_requests_success_and_states(adjuster):
    adjuster.request_started(P, M)
    adjuster.request_started(P, M)
    adjuster.request_completed(P, M)
    adjuster.record_success(P, M, 120)
    adjuster.record_success(P, M, 80)
    config, health = adjuster.get_all_states()["openai:gpt-4o"]
    assert health.active_requests == 1 and health.avg_response_ms == 100
    assert config.current_parallelism == 4
    adjuster.request_completed(P, M)
    adjuster.request_completed(P, M)  # never negative
    assert adjuster.get_health(P, M).active_requests == 0


def test_try_start_respects_the_effective_parallelism(adjuster):
    adjuster.apply_cross_instance_limits(P, M, 2)
    assert [adjuster.try_start(P, M) for _ in range(3)] == [True, True, False]
    adjuster.request_completed(P, M)
    assert adjuster.try_start(P, M)


def test_listeners_hear_changes_until_they_unsubscribe(adjuster):
    heard = []
    unsubscribe = adjuster.on_parallelism_change(heard.append)
    adjuster.on_parallelism_change(lambda change: 1 / 0)  # a broken listener does not break others
    adjuster.adjust_for_error(P, M, "429")
    unsubscribe()
    adjuster.adjust_for_error(P, M, "429")
    assert [(c.old, c.new) for c in heard] == [(4, 2)]


def test_reset_and_reset_all(adjuster):
    adjuster.adjust_for_error(P, M, "429")
    adjuster.adjust_for_error("anthropic", "claude", "429")
    adjuster.reset(P, M)
    assert adjuster.get_config(P, M).current_parallelism == 4
    adjuster.reset_all()
    assert adjuster.get_config("anthropic", "claude").current_parallelism == 4


def test_state_is_persisted_for_other_processes(store, clock):
    adjuster = DynamicParallelismAdjuster(clock=clock, store=store, instance_id="sess-x")
    adjuster.adjust_for_error(P, M, "429")
    adjuster.request_started(P, M)
    adjuster.shutdown()
    data = json.loads(store.read(PARALLELISM, "sess-x").data)
    model = data["models"]["openai:gpt-4o"]
    assert (model["currentParallelism"], model["activeRequests"], model["recent429Count"]) == (2, 1, 1)
    assert data["formatVersion"] == 1 and data["instanceId"] == "sess-x"


def test_own_429s_are_counted_for_good_and_others_are_not(store, clock):
    """``own429Total`` is a counter (Prometheus' 429s total): the 5-minute window forgets, it does not,
    and a 429 another instance reported is that instance's to count."""
    adjuster = DynamicParallelismAdjuster(clock=clock, store=store, instance_id="sess-x")
    adjuster.adjust_for_error(P, M, "429")
    adjuster.adjust_for_error(P, M, "429", seen_by="sess-y")
    adjuster.adjust_for_error(P, M, "timeout")
    clock.advance(10 * 60_000)
    adjuster.adjust_for_error(P, M, "429")
    adjuster.shutdown()
    model = json.loads(store.read(PARALLELISM, "sess-x").data)["models"]["openai:gpt-4o"]
    assert (model["recent429Count"], model["own429Total"]) == (1, 2)


def test_summary_and_module_functions():
    reset_parallelism_adjuster()
    assert get_parallelism(P, M) == 4
    get_parallelism_adjuster().adjust_for_error(P, M, "timeout")
    assert "openai:gpt-4o: 3/4" in format_dynamic_parallelism_summary()
    reset_parallelism_adjuster()
    assert create_parallelism_adjuster(base_parallelism=8).get_parallelism(P, M) == 8
    with pytest.raises(ValueError):
        AdjusterConfig(min_parallelism=5, base_parallelism=4)
