"""Short labels for instances: what a person reads in every pane instead of a 36-character id.

pi's ids (``sess-1a2b3c4d-pid48213-mlr81kae-k3j9``) differ only in a few
characters, and a table of them is a table of ids.  :func:`instance_labels`
gives each instance of a fleet one short label, unique within the fleet:

* its name (``PI_INSTANCE_ID``, what ``config.json``'s ``instances`` refers to)
  where it has one: ``atlas``;
* else the shortest prefix of its session part that no other instance shares
  (at least four characters, like a short commit hash): ``1a2b``;
* where names or sessions collide, the pid joins: ``atlas·48213``, ``1a2b3c4d·48213``;
* and as the last resort, the full id (ids are unique, so this always ends).

Every candidate an instance has is tried in order; instances whose current
candidates collide all move on to their next one, until no two labels are
equal.  The result depends only on the set of (id, name, pid) it is given, so a
label does not change while the instances it must be told from stay the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

SEPARATOR = "·"  # between a name or session and the pid that tells it from another
MIN_PREFIX = 4  # the shortest session prefix used as a label
_PI_ID = re.compile(r"sess-(.+?)-pid(\d+)-([0-9a-z]+)-([0-9a-z]+)", re.DOTALL)
_GENERIC_PREFIXES = (8, 12, 16)  # ids of other shapes: their first characters, growing
_TOKEN = re.compile(r"(\s+)")
_TOKEN_EDGES = "()[]{}<>,;:.!?'\""


class Labelled(NamedTuple):
    """What a label may be made of: the id, the instance's name (or None) and its pid (or None)."""

    instance_id: str
    name: str | None = None
    pid: int | None = None


def candidates(instance: Labelled) -> list[str]:
    """The labels ``instance`` may take, shortest first; the last is its full id."""
    instance_id = instance.instance_id
    match = _PI_ID.fullmatch(instance_id)
    pid = instance.pid if instance.pid is not None else int(match.group(2)) if match else None
    session = match.group(1) if match else None
    found: list[str] = []
    if instance.name:
        found.append(instance.name)
        if pid is not None:
            found.append(f"{instance.name}{SEPARATOR}{pid}")
    if session is not None:
        found += [session[:n] for n in range(MIN_PREFIX, len(session))]
        found.append(session)
        if pid is not None:
            found.append(f"{session}{SEPARATOR}{pid}")
    elif not instance.name:
        found += [instance_id[:n] + "…" for n in _GENERIC_PREFIXES if n < len(instance_id) - 1]
    found.append(instance_id)
    return [label for label in dict.fromkeys(found) if label]


def instance_labels(instances: Iterable[Labelled]) -> dict[str, str]:
    """instance id -> its label, unique among ``instances`` (see the module docstring).

    Each instance starts at its first candidate; every group of instances whose
    current labels are equal moves on (those not yet at their full id), until
    no label repeats.  A group has at most one member at its full id (ids are
    unique), so each round moves at least one instance and the loop ends.
    """
    options: dict[str, list[str]] = {}
    for instance in instances:
        options.setdefault(instance.instance_id, candidates(instance))
    level = dict.fromkeys(options, 0)
    labels = {instance_id: choices[0] for instance_id, choices in options.items()}
    holders: dict[str, set[str]] = {}
    for instance_id, label in labels.items():
        holders.setdefault(label, set()).add(instance_id)
    unsettled = set(holders)  # labels that may be worn twice: at first all of them
    while unsettled:
        moving = []
        for label in unsettled:
            group = holders.get(label, ())
            if len(group) > 1:
                moving += [i for i in group if level[i] < len(options[i]) - 1]
        unsettled = set()
        for instance_id in moving:  # all move one step at once: their order changes nothing
            old = labels[instance_id]
            holders[old].discard(instance_id)
            if not holders[old]:
                del holders[old]
            level[instance_id] += 1
            label = labels[instance_id] = options[instance_id][level[instance_id]]
            holders.setdefault(label, set()).add(instance_id)
            unsettled.add(label)
    return labels


class Labels(dict[str, str]):
    """instance id -> label (:func:`instance_labels`), and a label for any other id.

    A lock's holder or an event's author may be an instance no longer in the
    fleet: :meth:`of` gives an id of pi's form its first candidate that no
    member wears, and any other name (an operator, ``pi-dash``) as it is.  One
    ``Labels`` is shared by the snapshots of a fleet whose instances did not
    change, so the set of labels in use is made once.
    """

    __slots__ = ("_taken",)

    def of(self, instance_id: str) -> str:
        found = self.get(instance_id)
        if found is not None:
            return found
        if not _PI_ID.fullmatch(instance_id):
            return instance_id
        try:
            taken = self._taken
        except AttributeError:
            taken = self._taken = frozenset(self.values())
        for label in candidates(Labelled(instance_id)):
            if label not in taken:
                return label
        return instance_id


def shorten_ids(text: str, label_of: Callable[[str], str | None]) -> str:
    """``text`` with every whitespace-separated word that is an instance id (``label_of``
    gives a label for it) replaced by that label: event messages name instances by id."""
    parts = _TOKEN.split(text)
    for n in range(0, len(parts), 2):
        word = parts[n]
        core = word.strip(_TOKEN_EDGES)
        label = label_of(core) if core else None
        if label is not None:
            start = word.index(core)
            parts[n] = word[:start] + label + word[start + len(core) :]
    return "".join(parts)
