"""The dashboard's queue history: deepest queue per step, sparklines that match it bar for bar."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from pi_dashboard.queue_history import SPARK_LEVELS, QueueHistory, sparkline

STEP = 6_000
IDS = ("a", "b", "c")


def snapshot(at_ms: int, depths: dict[str, int]) -> SimpleNamespace:
    """What the history reads of a FleetSnapshot: when, and each counted instance's pending."""
    views = [SimpleNamespace(instance_id=i, pending=d, counted=True) for i, d in depths.items()]
    return SimpleNamespace(taken_at_ms=at_ms, instances=views)


frames = st.lists(
    st.tuples(st.integers(0, 4 * STEP), st.dictionaries(st.sampled_from(IDS), st.integers(0, 30))),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(frames)
def test_sparklines_show_each_steps_deepest_queue(steps: list[tuple[int, dict[str, int]]]) -> None:
    history = QueueHistory(60_000, STEP)
    at, expected = 0, {}  # step -> instance -> deepest
    for advance, depths in steps:
        at += advance
        history.add(snapshot(at, depths))
        step = at // STEP
        seen = expected.setdefault(step, {})
        for instance_id, depth in depths.items():
            seen[instance_id] = max(depth, seen.get(instance_id, -1))
        scale = history.deepest()
        window = range(step - 9, step + 1)
        assert scale == max((d for s in window for d in expected.get(s, {}).values()), default=0)
        for instance_id in IDS:  # asked on every snapshot, as the Instances table does
            bars = history.sparkline(instance_id, scale)
            assert bars == sparkline([expected.get(s, {}).get(instance_id) for s in window], scale)
            assert len(bars) == 10


def test_bars_rise_with_the_depth() -> None:
    assert sparkline([None, 0, 1, 15, 30], 30) == " " + SPARK_LEVELS[0] + SPARK_LEVELS[1] + SPARK_LEVELS[4] + SPARK_LEVELS[-1]
