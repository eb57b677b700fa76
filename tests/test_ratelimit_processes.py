"""The shared rate limiter, the fleet's 429 backoff and dynamic parallelism, with real processes.

Every cross-process test here starts separate OS processes (multiprocessing,
"spawn" start method) on one coordination directory; the single-process tests
drive the formulas with an injected :class:`~core.clock.ManualClock`.

1. 8 processes hammering one provider (600 req/window, burst 100, window
   scaled to 6 s): no sliding window ever holds more than ``burst + W * rate``
   grants, the allowed rate is used to >= 98 %, nobody starves and nobody
   starts before its reserved slot.
2. One instance's 429 (Retry-After 1.5 s) holds back another instance's next
   request until the shared deadline and halves its parallelism (4 -> 2), with
   the reporter named; pi's recovery and recommended-backoff formulas.
3. An instance SIGKILLed while holding two LLM slots stops counting, its
   files (instance and parallelism state) are removed, and a newcomer gets
   the full parallelism back.
4. Bad ``crossInstance`` config never raises, names file, key path and
   reason, and leaves the defaults in force (plus a hypothesis fuzz).
5. Adaptive control: x0.9 per 429 down to the minimum, x1.05 after each quiet
   period up to the maximum, every change in the event log.

Worker functions live in :mod:`tests.ratelimit_workers` (spawn needs
importable targets).  Figures are printed (``-s`` shows them).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import signal
import tempfile
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.backoff import BackoffBoard
from core.clock import ManualClock
from core.coordinator import Coordinator
from core.events import EventLog
from core.models import InstanceParallelism
from core.parallelism import DynamicParallelismAdjuster
from core.provider_config import DEFAULT_PROVIDER_LIMITS, load_settings, parse_settings
from core.ratelimit import SharedRateLimiter
from core.snapshot import SnapshotBuilder, Status
from core.store import INSTANCES, PARALLELISM, DirectoryStore, read_record
from tests import ratelimit_workers as rw
from tests.child_processes import CTX, fleet

START_TIMEOUT_S = 30  # spawning interpreters on a loaded 2-core machine
PROVIDER, MODEL = rw.PROVIDER, rw.MODEL
KEY = f"{PROVIDER}:{MODEL}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def max_in_window(times: list[float], window_ms: float) -> tuple[int, float]:
    """The most grants in any half-open window ``[t, t + window_ms)`` starting at a grant; and that ``t``."""
    best, best_at = 0, times[0] if times else 0.0
    for i, t in enumerate(times):
        n = bisect.bisect_left(times, t + window_ms, lo=i) - i
        if n > best:
            best, best_at = n, t
    return best, best_at


# --------------------------------------------------------------------------- 1
HAMMERERS = 8
HAMMER_S = 4.0
LIMIT_RPW, BURST, PERIOD_MS = 600, 100, 6_000  # 600 per 6 s window: 100 req/s, emission interval 10 ms
HAMMER_CONFIG = {"crossInstance": {"providers": {PROVIDER: {"requestsPerMinute": LIMIT_RPW, "burst": BURST}}}}


@pytest.mark.slow
def test_eight_processes_share_one_limit_exactly_fully_and_fairly(root):
    rate_per_ms = LIMIT_RPW / PERIOD_MS
    with fleet() as f:
        start = CTX.Event()
        for i in range(HAMMERERS):
            f.spawn(rw.hammer, str(root), f"p{i}", HAMMER_CONFIG, PERIOD_MS, HAMMER_S, start)
        f.collect(rw.READY, HAMMERERS, START_TIMEOUT_S)
        start.set()
        results = f.collect(rw.RESULT, HAMMERERS, HAMMER_S + START_TIMEOUT_S)

    per_process = {name: r["grants"] for name, r in results.items()}
    starts = sorted(s for grants in per_process.values() for s, _, _ in grants)
    total = len(starts)
    duration = starts[-1] - starts[0]

    # (a) exact: over *every* window of length W (each grant time as a window
    # start, half-open), at most burst + W * rate grants.  The 6 s window is
    # the configured one; as the run is only ~4 s long, shorter windows are
    # checked as well, since those are the ones the limiter must actually hold.
    windows = {}
    for window in (PERIOD_MS, 2_000, 1_000, 500, 100, 30):
        most, at = max_in_window(starts, window)
        allowed = BURST + window * rate_per_ms
        windows[window] = (most, allowed)
        assert most <= allowed, (
            f"{most} grants in the {window} ms window from {at - starts[0]:.1f} ms, allowed {allowed:.0f}"
        )

    # (b) utilisation: in [first, last] at most burst + duration * rate grants
    # can start (GCRA: the k-th grant after the first starts no earlier than
    # k * T - tau later); the fleet must use >= 98 % of that.
    possible = BURST + duration * rate_per_ms
    utilisation = total / possible

    # (c) fairness: each process gets at least half of an equal share.
    counts = {name: len(g) for name, g in per_process.items()}
    fair = total / HAMMERERS

    # (d) nobody starts before its slot: wall clock after acquire >= reserved start.
    early = [
        (name, round(start_ms - actual, 3))
        for name, grants in per_process.items()
        for start_ms, actual, _ in grants
        if actual < start_ms - 1.0
    ]
    late = sorted(actual - start_ms for grants in per_process.values() for start_ms, actual, _ in grants)
    figures = (
        f"{total} grants in {duration:.0f} ms (possible {possible:.1f}): utilisation {utilisation:.2%}; "
        f"per process {sorted(counts.values())}; max per window {windows}; "
        f"lateness after the slot p50 {late[len(late) // 2]:.2f} ms, max {late[-1]:.2f} ms"
    )
    print(f"\nhammer: {figures}")
    assert total <= possible + 1e-6, figures
    assert utilisation >= 0.98, figures
    assert min(counts.values()) >= 0.5 * fair, figures
    assert not early, f"started before the reserved slot (name, ms early): {early[:10]}; {figures}"


# --------------------------------------------------------------------------- 2
RETRY_AFTER_S = 1.5


@pytest.mark.slow
def test_a_429_in_one_process_holds_back_and_shrinks_another(root):
    with fleet() as f:
        go_b, go_a = CTX.Event(), CTX.Event()
        f.spawn(rw.reporter_429, str(root), RETRY_AFTER_S, go_b)
        f.spawn(rw.follower_after_429, str(root), "A", False, go_a)
        f.spawn(rw.follower_after_429, str(root), "A-async", True, go_a)
        ready = f.collect(rw.READY, 3, START_TIMEOUT_S)
        go_b.set()
        b = f.collect(rw.RESULT, 1, START_TIMEOUT_S)["B"]
        go_a.set()
        followers = f.collect(rw.RESULT, 2, START_TIMEOUT_S + RETRY_AFTER_S)

    b_id, until = b["instance_id"], b["until"]
    shared = BackoffBoard(DirectoryStore(root), "observer").current(PROVIDER, MODEL)
    assert shared is not None and shared.until == until
    assert [e.instance_id for e in shared.recent429s] == [b_id]
    assert until - b["reported_at_ms"] >= RETRY_AFTER_S * 1000 - 1, "Retry-After not honoured in the deadline"
    assert b["own_current"] == 2

    for name, a in followers.items():
        figures = (
            f"{name}: asked {until - a['asked_at_ms']:.0f} ms before the deadline, entered "
            f"{a['entered_at_ms'] - until:+.1f} ms after it; current {a['current']}, effective {a['effective']}, "
            f"reason {a['reason']!r}"
        )
        print(f"\n429: {figures}")
        assert ready[name]["current_before"] == 4, figures
        assert a["asked_at_ms"] < until - 500, f"the follower asked too late to prove anything; {figures}"
        assert a["entered_at_ms"] >= until - 1.0, f"entered before the fleet's deadline; {figures}"
        assert a["entered_at_ms"] < until + 1_000, f"waited far past the deadline; {figures}"
        assert a["until_seen"] == until
        assert a["current"] == 2, figures
        assert b_id in a["reason"] and "429" in a["reason"] and "4 -> 2" in a["reason"], figures
        assert a["recent429"] == 1 and not a["healthy"], figures
        # Its share: floor(current / instances using the model), B being one of them (1 or 2 counted).
        assert a["effective"] in (1, 2), figures

    events, _, bad = EventLog(DirectoryStore(root)).read()
    assert bad == 0
    kinds = [(e.kind, e.instance_id) for e in events]
    assert ("429", b_id) in kinds
    for name, a in followers.items():
        assert any(
            e.kind == "parallelism" and e.instance_id == a["instance_id"] and b_id in e.message for e in events
        ), f"no parallelism event of {name} naming {b_id}: {kinds}"


def test_recovery_and_recommended_backoff_formulas():
    clock = ManualClock()
    adjuster = DynamicParallelismAdjuster(clock=clock)
    health = lambda: adjuster.get_health(PROVIDER, MODEL)  # noqa: E731
    current = lambda: adjuster.get_config(PROVIDER, MODEL).current_parallelism  # noqa: E731

    assert current() == 4 and health().healthy and health().recommended_backoff_ms == 0
    t429 = clock.now_ms()
    adjuster.adjust_for_error(PROVIDER, MODEL, "429")
    assert current() == 2  # max(1, floor(4 * 0.7))
    # recommended backoff = max(0, min(60000, 1000 * 2^n) - ms since the last 429), n = 1
    assert health().recommended_backoff_ms == 2_000
    clock.advance(500)
    assert health().recommended_backoff_ms == 1_500
    clock.advance(1_500)
    assert health().recommended_backoff_ms == 0
    clock.advance(1_000)
    t429 = clock.now_ms()
    adjuster.adjust_for_error(PROVIDER, MODEL, "429")  # n = 2
    assert current() == 1  # floor(2 * 0.7) = 1, the minimum
    assert health().recommended_backoff_ms == 4_000
    clock.advance(1_000)
    assert health().recommended_backoff_ms == 3_000
    for _ in range(5):  # n = 7: 1000 * 2^7 = 128 s, capped at 60 s
        adjuster.adjust_for_error(PROVIDER, MODEL, "429")
    t429 = clock.now_ms()
    assert current() == 1  # never below the minimum
    assert health().recent429_count == 7 and health().recommended_backoff_ms == 60_000
    clock.advance(59_000)
    assert health().recommended_backoff_ms == 1_000

    # Recovery: nothing while any error is within 5 minutes...
    clock.set(t429 + 60_000)
    assert not adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 1
    clock.set(t429 + 300_000)  # the error is exactly 5 min old: still in the window
    assert not adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 1
    clock.set(t429 + 300_001)
    assert adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 2  # min(4, ceil(1 * 1.1))
    assert health().recent429_count == 0 and health().recommended_backoff_ms == 0
    # ... and nothing within 60 s of the last change.
    changed = clock.now_ms()
    clock.set(changed + 59_999)
    assert not adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 2
    clock.set(changed + 60_000)
    assert adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 3  # ceil(2 * 1.1) = 3
    assert not health().healthy  # 3 < 0.8 * 4
    clock.advance(60_000)
    assert adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 4  # min(4, ceil(3.3))
    assert health().healthy
    clock.advance(600_000)
    assert not adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 4  # never above base

    # A new error restarts the quiet period.
    adjuster.adjust_for_error(PROVIDER, MODEL, "429")
    t429 = clock.now_ms()
    assert current() == 2
    clock.set(t429 + 200_000)
    adjuster.adjust_for_error(PROVIDER, MODEL, "timeout")  # floor(2 * 0.9) = 1
    assert current() == 1
    clock.set(t429 + 300_001)  # the 429 left the window, the timeout did not
    assert not adjuster.attempt_recovery(PROVIDER, MODEL)
    clock.set(t429 + 500_001)
    assert adjuster.attempt_recovery(PROVIDER, MODEL) and current() == 2
    reason = adjuster.get_config(PROVIDER, MODEL).adjustment_reason
    assert reason == "recovery: 1 -> 2", reason


# --------------------------------------------------------------------------- 3
SHORT = {"heartbeat_interval_ms": 200, "heartbeat_timeout_ms": 1000}


def _parallelism_record(store: DirectoryStore, instance_id: str) -> InstanceParallelism | None:
    found = read_record(store, PARALLELISM, instance_id, InstanceParallelism)
    return None if found is None else found[0]


@pytest.mark.slow
def test_sigkilled_slot_holder_stops_counting_and_its_state_is_removed(root):
    store = DirectoryStore(root)
    timeout_ms = SHORT["heartbeat_timeout_ms"]
    with fleet() as f:
        doomed = f.spawn(rw.doomed_slot_holder, str(root), SHORT)
        info = f.collect(rw.READY, 1, START_TIMEOUT_S)["doomed"]
        dead_id = info["instance_id"]

        # Its two slots are published (request counts are written within 200 ms).
        deadline = time.monotonic() + 5
        record = _parallelism_record(store, dead_id)
        while (record is None or record.models[KEY].active_requests != 2) and time.monotonic() < deadline:
            time.sleep(0.02)
            record = _parallelism_record(store, dead_id)
        assert record is not None and record.models[KEY].active_requests == 2, record

        before = SnapshotBuilder(store, config=SHORT).build()
        view = before.instance(dead_id)
        assert view is not None and view.counted and view.status is Status.ALIVE, view
        assert [(p.instance_id, p.state.active_requests) for p in before.parallelism] == [(dead_id, 2)]
        assert [(m.provider, m.model, m.instance_count) for m in before.models] == [(PROVIDER, MODEL, 1)]

        survivor = Coordinator(root=root, config=SHORT, settings=parse_settings({}, "test"))
        survivor.register(heartbeat=False)
        assert survivor.instances_for_model(PROVIDER, MODEL) == 1  # the doomed one; the survivor uses nothing yet

        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(5)
        killed_at = now_ms()
        assert doomed.exitcode == -signal.SIGKILL

    # At once: the pid is known dead on this host (pi would count it until its heartbeat expires).
    at_once = SnapshotBuilder(store, config=SHORT).build()
    view = at_once.instance(dead_id)
    assert view is not None and view.status is Status.DEAD, view
    assert any(p.kind == "dead-pid" and dead_id in p.where for p in at_once.problems), at_once.problems
    heartbeat_age = view.heartbeat_age_ms
    survivor.heartbeat()
    with survivor.llm_slot(PROVIDER, MODEL):
        share_with_dead = survivor.adjuster.get_parallelism(PROVIDER, MODEL)
    if heartbeat_age is not None and heartbeat_age < timeout_ms - 300:
        # The dead one's heartbeat was still fresh: by pi's rule it is counted, so the share is halved.
        assert share_with_dead == 2, share_with_dead
    survivor.unregister()

    # After the heartbeat timeout nobody counts it any more, dead slots included.
    time.sleep(max(0.0, (killed_at + timeout_ms + 100 - now_ms()) / 1000))
    observer = Coordinator(root=root, config=SHORT, settings=parse_settings({}, "test"))
    assert observer.instances_for_model(PROVIDER, MODEL) == 0
    after = SnapshotBuilder(store, config=SHORT).build()
    view = after.instance(dead_id)
    assert view is not None and not view.counted and view.status is Status.DEAD, view
    assert after.models == () and after.figures.active_count == 1  # pi's floor of one
    assert after.parallelism == (), "the dead instance's in-flight slots are still shown"

    # Cleanup removes the instance file and its parallelism state together.
    assert _parallelism_record(store, dead_id) is not None  # still there before the cleanup
    assert observer.cleanup_dead_instances() == [dead_id]
    assert dead_id not in store.keys(INSTANCES)
    assert dead_id not in store.keys(PARALLELISM), "parallelism state of a dead instance left behind"
    final = SnapshotBuilder(store, config=SHORT).build()
    assert final.instance(dead_id) is None and final.parallelism == ()

    # A newcomer gets the full parallelism for that model.
    with fleet() as f:
        f.spawn(rw.parallelism_probe, str(root), SHORT)
        probe = f.collect(rw.RESULT, 1, START_TIMEOUT_S)["probe"]
    print(
        f"\nSIGKILL: dead heartbeat {heartbeat_age} ms old when detected; survivor's share with it counted "
        f"{share_with_dead}; newcomer after cleanup: {probe}"
    )
    assert probe["instances_for_model"] == 1
    assert probe["current"] == 4 and probe["effective"] == 4, probe


# --------------------------------------------------------------------------- 4
SOURCE = "/home/dev/project/.pi/config.json"
DEFAULTS = {name: (float(rpm), burst) for name, (rpm, burst) in DEFAULT_PROVIDER_LIMITS.items()}


def limits_of(settings: Any) -> dict[str, tuple[float, int]]:
    return {name: (settings.limit(name).requests_per_minute, settings.limit(name).burst) for name in DEFAULTS}


def names_path(problem: str, path: str) -> bool:
    """``problem`` names ``path``: as one dotted path, or as ``section: rest`` (how pydantic's location is appended)."""
    if path in problem:
        return True
    head, _, tail = path.rpartition(".")
    while head:
        if f"{head}: {tail}" in problem:
            return True
        head, _, last = head.rpartition(".")
        tail = f"{last}.{tail}"
    return False


# (document, key path the problem must name, words of the reason)
BAD_SECTIONS = [
    ({"crossInstance": {"providers": {"openai": {"requestsPerMinute": "fast"}}}},
     "crossInstance.providers.openai.requestsPerMinute", "valid number"),
    ({"crossInstance": {"providers": {"openai": {"requestsPerMinute": -5}}}},
     "crossInstance.providers.openai.requestsPerMinute", "greater than or equal to 0.001"),
    ({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 0}}}},
     "crossInstance.providers.openai.requestsPerMinute", "greater than or equal to 0.001"),
    ({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 1e-300}}}},  # would overflow every wait
     "crossInstance.providers.openai.requestsPerMinute", "greater than or equal to 0.001"),
    ({"crossInstance": {"providers": {"openai": {"burst": -1}}}},
     "crossInstance.providers.openai.burst", "greater than 0"),
    ({"crossInstance": {"providers": {"openai": {"burst": 2.5}}}},
     "crossInstance.providers.openai.burst", "integer"),
    ({"crossInstance": {"providers": {"openai": {"burst": [100]}}}},
     "crossInstance.providers.openai.burst", "integer"),
    ({"crossInstance": {"providers": {"openai": {"models": {"gpt-4o": {"requestsPerMinute": -1}}}}}},
     "crossInstance.providers.openai.models.gpt-4o.requestsPerMinute", "greater than or equal to 0.001"),
    ({"crossInstance": {"providers": {"openai": {"models": ["gpt-4o"]}}}},
     "crossInstance.providers.openai.models", "dictionary"),
    ({"crossInstance": {"providers": {"anthropic": 50}}}, "crossInstance.providers.anthropic", "dictionary"),
    ({"crossInstance": {"providers": {"gemini": None}}}, "crossInstance.providers.gemini", "dictionary"),
    ({"crossInstance": {"providers": ["openai"]}}, "crossInstance.providers", "expected an object"),
    ({"crossInstance": "fast please"}, "crossInstance", "expected an object"),
    ({"crossInstance": {"adaptiveRateControl": {"reductionFactor": 1.5}}},
     "crossInstance.adaptiveRateControl.reductionFactor", "less than 1"),
    ({"crossInstance": {"adaptiveRateControl": {"quietPeriodMs": -1}}},
     "crossInstance.adaptiveRateControl.quietPeriodMs", "greater than 0"),
    ({"crossInstance": {"adaptiveRateControl": {"minRequestsPerMinute": 100, "maxRequestsPerMinute": 10}}},
     "crossInstance.adaptiveRateControl", "larger than"),
    ({"crossInstance": {"adaptiveRateControl": "on"}}, "crossInstance.adaptiveRateControl", "dictionary"),
    ({"crossInstance": {"instances": {"ci": {"priority": 11}}}}, "crossInstance.instances.ci.priority", "less than"),
    ({"crossInstance": {"instances": {"ci": {"reservedCapacity": -3}}}},
     "crossInstance.instances.ci.reservedCapacity", "greater than or equal to 0"),
    ({"crossInstance": {"instances": [1, 2]}}, "crossInstance.instances", "expected an object"),
]


@pytest.mark.parametrize(("document", "path", "reason"), BAD_SECTIONS, ids=[c[1] + ":" + c[2] for c in BAD_SECTIONS])
def test_bad_section_is_reported_with_file_key_and_reason_and_defaults_kept(tmp_path, document, path, reason):
    file = tmp_path / "config.json"
    file.write_text(json.dumps(document))
    for settings, source in ((parse_settings(document, SOURCE), SOURCE), (load_settings(file), str(file))):
        assert len(settings.problems) == 1, settings.problems
        problem = settings.problems[0]
        assert problem.startswith(f"{source}: "), problem
        assert names_path(problem, path), f"{path!r} not named in {problem!r}"
        assert reason in problem, problem
        assert limits_of(settings) == DEFAULTS
        assert settings.adaptive.reduction_factor == 0.9 and settings.adaptive.recovery_factor == 1.05


def test_unknown_provider_is_reported_and_used_as_given_with_the_defaults_intact():
    settings = parse_settings({"crossInstance": {"providers": {"mistral": {"requestsPerMinute": 30}}}}, SOURCE)
    assert len(settings.problems) == 1
    problem = settings.problems[0]
    assert problem.startswith(f"{SOURCE}: crossInstance.providers.mistral: unknown provider"), problem
    assert limits_of(settings) == DEFAULTS
    assert (settings.limit("mistral").requests_per_minute, settings.limit("mistral").burst) == (30, 10)


def test_good_parts_survive_beside_bad_ones():
    settings = parse_settings(
        {
            "crossInstance": {
                "providers": {
                    "openai": {"requestsPerMinute": 900},
                    "anthropic": {"requestsPerMinute": "lots"},
                    "deepseek": {"burst": 0},
                },
                "adaptiveRateControl": {"reductionFactor": 0.5},
                "instances": {"good": {"priority": 9}, "bad": {"priority": "high"}},
            }
        },
        SOURCE,
    )
    assert limits_of(settings) == {**DEFAULTS, "openai": (900.0, 100)}
    assert settings.adaptive.reduction_factor == 0.5
    assert settings.policy("good").priority == 9 and settings.policy("bad").priority == 5
    assert len(settings.problems) == 3, settings.problems
    for problem, path in zip(
        settings.problems,
        (
            "crossInstance.providers.anthropic.requestsPerMinute",
            "crossInstance.providers.deepseek.burst",
            "crossInstance.instances.bad.priority",
        ),
    ):
        assert problem.startswith(SOURCE) and names_path(problem, path), (problem, path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{\"crossInstance\": {\"providers\": ", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b"[\"crossInstance\"]", "expected a JSON object"),
        (b"42", "expected a JSON object"),
        (b"null", "expected a JSON object"),
    ],
    ids=["truncated", "empty", "not-utf8", "deeply-nested", "array", "number", "null"],
)
def test_unreadable_file_keeps_the_defaults(tmp_path, content, reason):
    file = tmp_path / "config.json"
    file.write_bytes(content)
    settings = load_settings(file)
    assert len(settings.problems) == 1 and settings.problems[0].startswith(f"{file}: "), settings.problems
    assert reason in settings.problems[0], settings.problems
    assert limits_of(settings) == DEFAULTS


def test_missing_or_unopenable_file_keeps_the_defaults(tmp_path):
    missing = load_settings(tmp_path / "nope.json")
    assert missing.problems == (f"{tmp_path / 'nope.json'}: not found; defaults used",)
    assert limits_of(missing) == DEFAULTS
    a_directory = load_settings(tmp_path)
    assert len(a_directory.problems) == 1 and a_directory.problems[0].startswith(f"{tmp_path}: ")
    assert limits_of(a_directory) == DEFAULTS
    assert load_settings(None).problems == () and limits_of(load_settings(None)) == DEFAULTS


def test_problem_names_the_whole_dotted_key_path():
    settings = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": -5}}}}, SOURCE)
    assert "crossInstance.providers.openai.requestsPerMinute" in settings.problems[0], settings.problems


def test_boolean_limit_is_reported_not_taken_as_one():
    settings = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": True}}}}, SOURCE)
    assert settings.problems, "a boolean limit was accepted without a word"
    assert settings.limit("openai").requests_per_minute == 500


def test_infinite_limit_is_rejected_or_usable(tmp_path, store, clock):
    file = tmp_path / "config.json"
    file.write_text('{"crossInstance": {"providers": {"openai": {"requestsPerMinute": 1e999}}}}')
    settings = load_settings(file)
    limiter = SharedRateLimiter(store, settings, clock=clock)
    assert limiter.reserve(PROVIDER, MODEL) is not None
    assert settings.problems or math.isfinite(settings.limit("openai").requests_per_minute)


def test_huge_reserved_capacity_leaves_the_limiter_usable(store, clock):
    settings = parse_settings({"crossInstance": {"instances": {"ci": {"reservedCapacity": 1e306}}}}, SOURCE)
    limiter = SharedRateLimiter(store, settings, clock=clock)  # any instance, not only "ci"
    assert limiter.reserve(PROVIDER, MODEL) is not None


# Junk for the crossInstance section: any JSON value, with the real keys
# offered often enough to reach every validator.
_KEYS = st.sampled_from(
    ["providers", "adaptiveRateControl", "instances", "models", "requestsPerMinute", "burst", "enabled",
     "reductionFactor", "recoveryFactor", "minRequestsPerMinute", "maxRequestsPerMinute", "quietPeriodMs",
     "priority", "reservedCapacity", "openai", "anthropic", "deepseek", "gemini", "OpenAI", "mistral", "gpt-4o",
     "*", "gpt-?", ""]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False)
    | st.just(math.nan)
    | st.text(max_size=8)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=_JSON, instance=st.sampled_from([None, "openai", "ci", "gpt-4o"]))
@example(section={"providers": {"openai": {"requestsPerMinute": 1e-300, "burst": 10**18}}}, instance=None)
@example(section={"instances": {"ci": {"reservedCapacity": 1e100}}}, instance="ci")
@example(section={"adaptiveRateControl": {"minRequestsPerMinute": 1e308}}, instance=None)
def test_junk_cross_instance_section_never_raises_and_leaves_usable_limits(section, instance):
    settings = parse_settings({"crossInstance": section}, SOURCE)
    assert all(p.startswith(f"{SOURCE}: ") for p in settings.problems), settings.problems
    names = set(DEFAULTS) | set(settings.providers) | {"unheard-of"}
    for name in names:
        limit = settings.limit(name)
        assert math.isfinite(limit.requests_per_minute) and limit.requests_per_minute > 0, (name, limit)
        assert limit.burst >= 1, (name, limit)
    # Usable: a limiter with these settings decides, and the first request to a provider starts at once.
    with tempfile.TemporaryDirectory() as tmp:
        limiter = SharedRateLimiter(DirectoryStore(tmp), settings, instance_name=instance, clock=ManualClock())
        for name in sorted(n for n in names if n)[:6]:  # "" cannot name a record: nobody asks for it
            reservation = limiter.reserve(name, MODEL)
            assert reservation is not None and reservation.wait_ms == 0, (name, reservation)
            again = limiter.reserve(name, MODEL, max_wait_ms=60_000)
            assert again is None or (math.isfinite(again.start_ms) and again.wait_ms >= 0), (name, again)


# --------------------------------------------------------------------------- 5
def test_adaptive_control_reduces_recovers_clamps_and_logs(store, clock):
    quiet = 60_000
    settings = parse_settings(
        {
            "crossInstance": {
                "providers": {PROVIDER: {"requestsPerMinute": 600, "burst": 1}},
                "adaptiveRateControl": {"minRequestsPerMinute": 450, "quietPeriodMs": quiet},
            }
        },
        "test",
    )
    assert settings.problems == ()
    events = EventLog(store, "me", clock)
    limiter = SharedRateLimiter(store, settings, clock=clock, events=events)
    effective = lambda: limiter.state(PROVIDER).effective_requests_per_minute  # noqa: E731

    def spacing_ms() -> float:
        """Distance between two back-to-back reservations (burst 1): the emission interval in force."""
        first = limiter.reserve(PROVIDER, MODEL)
        second = limiter.reserve(PROVIDER, MODEL)
        assert first is not None and second is not None
        return second.start_ms - first.start_ms

    assert spacing_ms() == pytest.approx(60_000 / 600)
    assert effective() == 600
    expected = [600.0]
    # Each 429: x0.9, clamped to the minimum (450).
    for _ in range(4):
        clock.advance(1_000)
        limiter.report_429(PROVIDER)
        expected.append(max(450.0, expected[-1] * 0.9))
        assert effective() == pytest.approx(expected[-1])
    assert expected[1:] == pytest.approx([540, 486, 450, 450])
    assert limiter.state(PROVIDER).last429_at == clock.now_ms()
    clock.advance(10_000)  # let the booked slots pass
    # the reduced limit is the one enforced (arrival times are kept to 0.1 ms, rounded up)
    assert spacing_ms() == pytest.approx(60_000 / 450, abs=0.1)

    # Recovery happens on a later reserve, once quietPeriodMs passed without a 429 or a change.
    last_429 = clock.now_ms() - 10_000
    clock.set(last_429 + quiet - 1)
    limiter.reserve(PROVIDER, MODEL)
    assert effective() == 450
    clock.set(last_429 + quiet)
    limiter.reserve(PROVIDER, MODEL)
    assert effective() == pytest.approx(450 * 1.05)
    clock.advance(quiet - 1)  # a change restarts the quiet period
    limiter.reserve(PROVIDER, MODEL)
    assert effective() == pytest.approx(450 * 1.05)
    rises = [450 * 1.05]
    for _ in range(8):
        clock.advance(quiet)
        limiter.reserve(PROVIDER, MODEL)
        rises.append(min(600.0, rises[-1] * 1.05))
        assert effective() == pytest.approx(rises[-1])
    assert rises[-1] == 600  # clamped to the maximum (the configured limit)
    assert rises.index(600) == 5  # 450 * 1.05^6 > 600: six rises, the last one clamped

    # Every change, and only a change, is in the event log.
    logged, _, bad = EventLog(store).read()
    assert bad == 0
    messages = [e.message for e in logged if e.kind == "rate-limit"]
    assert messages == [
        "openai: 429, limit 600 -> 540 req/min",
        "openai: 429, limit 540 -> 486 req/min",
        "openai: 429, limit 486 -> 450 req/min",
        "openai: limit recovered 450 -> 472 req/min",
        "openai: limit recovered 472 -> 496 req/min",
        "openai: limit recovered 496 -> 521 req/min",
        "openai: limit recovered 521 -> 547 req/min",
        "openai: limit recovered 547 -> 574 req/min",
        "openai: limit recovered 574 -> 600 req/min",
    ], messages
    assert all(e.instance_id == "me" and e.provider == PROVIDER for e in logged)


def test_adaptive_control_is_shared_between_limiters_of_one_store(store, clock):
    """The controller's state lives in the store: a 429 seen by one limiter slows every other one."""
    settings = parse_settings({"crossInstance": {"providers": {PROVIDER: {"requestsPerMinute": 600, "burst": 1}}}}, "t")
    mine = SharedRateLimiter(store, settings, clock=clock)
    theirs = SharedRateLimiter(DirectoryStore(store.root), settings, clock=clock)
    theirs.report_429(PROVIDER)
    first, second = mine.reserve(PROVIDER), mine.reserve(PROVIDER)
    assert second.start_ms - first.start_ms == pytest.approx(60_000 / 540, abs=0.1)
    disabled = parse_settings({"crossInstance": {"adaptiveRateControl": {"enabled": False}}}, "t")
    other = SharedRateLimiter(store, disabled, clock=clock)
    before = other.state("anthropic")
    other.report_429("anthropic")
    assert before is None and other.state("anthropic").effective_requests_per_minute == 50
    assert other.state("anthropic").last429_at == clock.now_ms()
