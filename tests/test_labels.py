"""Instance labels (core.labels): short, unique in any fleet, the same for the same fleet."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from core.labels import Labelled, Labels, candidates, instance_labels, shorten_ids

HEX = "0123456789abcdef"
pi_ids = st.builds(
    lambda session, pid, time, suffix: f"sess-{session}-pid{pid}-{time}-{suffix}",
    st.text(HEX, min_size=8, max_size=8),
    st.integers(1, 99_999),
    st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=6, max_size=8),
    st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=4, max_size=4),
)
any_ids = st.one_of(pi_ids, st.text(min_size=1, max_size=40))
names = st.one_of(st.none(), st.sampled_from(["atlas", "birch", "cedar", "1a2b", "sess-1a2b"]), st.text(max_size=12))
members = st.builds(Labelled, any_ids, names, st.one_of(st.none(), st.integers(1, 99_999)))
fleets = st.lists(members, max_size=40, unique_by=lambda m: m.instance_id)


@settings(max_examples=400, deadline=None)
@given(fleets)
def test_labels_are_unique_in_any_fleet(fleet: list[Labelled]) -> None:
    labels = instance_labels(fleet)
    assert set(labels) == {m.instance_id for m in fleet}
    assert len(set(labels.values())) == len(fleet)
    for member in fleet:
        assert labels[member.instance_id] in candidates(member)


@settings(max_examples=200, deadline=None)
@given(fleets, st.randoms())
def test_the_same_fleet_gets_the_same_labels_in_any_order(fleet: list[Labelled], shuffler: random.Random) -> None:
    shuffled = list(fleet)
    shuffler.shuffle(shuffled)
    assert instance_labels(shuffled) == instance_labels(fleet)


@settings(max_examples=200, deadline=None)
@given(st.lists(pi_ids, min_size=1, max_size=30, unique=True))
def test_pi_ids_are_told_apart_by_the_shortest_unique_session_prefix(ids: list[str]) -> None:
    labels = instance_labels([Labelled(i) for i in ids])
    for instance_id, label in labels.items():
        session = instance_id.split("-")[1]
        others = [o.split("-")[1] for o in ids if o != instance_id]
        if not any(o.startswith(session[:4]) for o in others):
            assert label == session[:4]  # nobody shares its first four: four it is
        assert len(label) <= len(instance_id)


def test_names_first_then_the_pid_where_names_repeat() -> None:
    atlas = Labelled("sess-atlas-42-pid7414-mx6k1pe0-otmz", "atlas", 7414)
    atlas_again = Labelled("sess-atlas-43-pid7500-mx6k1pe0-otmz", "atlas", 7500)  # restarted, old file still there
    birch = Labelled("sess-birch-3b-pid7415-mx6k1pf4-pcbh", "birch", 7415)
    pi = Labelled("sess-1a2b3c4d-pid48213-mlr81kae-k3j9")
    assert instance_labels([atlas, birch, pi]) == {atlas.instance_id: "atlas", birch.instance_id: "birch", pi.instance_id: "1a2b"}
    assert instance_labels([atlas, atlas_again, birch]) == {
        atlas.instance_id: "atlas·7414",
        atlas_again.instance_id: "atlas·7500",
        birch.instance_id: "birch",
    }


def test_an_id_outside_the_fleet_gets_a_label_nobody_wears() -> None:
    a = "sess-1a2b3c4d-pid48213-mlr81kae-k3j9"
    labels = Labels(instance_labels([Labelled(a)]))
    gone = "sess-1a2b9999-pid4-mlr81kae-k3j9"  # a lock's holder that left
    assert labels.of(a) == "1a2b" and labels.of(gone) == "1a2b9"
    assert labels.of("pi-dash:ops@devbox") == "pi-dash:ops@devbox"  # not an instance: as it is


def test_event_messages_name_instances_by_label() -> None:
    a, b = "sess-1a2b3c4d-pid48213-mlr81kae-k3j9", "sess-7f3e9a01-pid48377-mlr8kumx-q0zz"
    labels = instance_labels([Labelled(a), Labelled(b)])
    message = f"{b} stole task-build-3 (high) from {a}; ({a}), {a}."
    assert shorten_ids(message, labels.get) == "7f3e stole task-build-3 (high) from 1a2b; (1a2b), 1a2b."
    assert shorten_ids("nothing  to\tsee", labels.get) == "nothing  to\tsee"
