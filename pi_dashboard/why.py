"""``pi-dash why INSTANCE``: one paragraph on what holds an instance's work back."""

from __future__ import annotations

from core.snapshot import FleetSnapshot
from core.waits import explain

from .text import printable


def why(snapshot: FleetSnapshot, query: str) -> tuple[int, str]:
    """Exit status and text: 0 with the paragraph, 1 when the name matches none or several."""
    found = snapshot.find_instances(query)
    if not found:
        return 1, f"No instance is called {printable(query)!s} (by id, name or id prefix)."
    if len(found) > 1:
        names = "\n".join(f"  {printable(v.instance_id)}" for v in sorted(found, key=lambda v: v.instance_id))
        return 1, f"{len(found)} instances match {printable(query)}; give more of the id:\n{names}"
    view = found[0]
    waits = snapshot.waits.get(view.instance_id)
    if waits is None:
        return 0, printable(f"{view.instance_id} ({view.status.value}) is not running, so nothing of it waits.")
    label = snapshot.label(view.instance_id)
    return 0, printable(explain(waits, view.status.value, snapshot.taken_at_ms, label=label, shorten=snapshot.shorten))
