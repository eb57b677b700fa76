"""One first frame, headless, in a fresh process, and its peers:

    python -m tests.bench.first_frame ROOT dashboard|snapshot|floor

``dashboard``: pi-dash on ROOT in ``run_test`` at 160x48, until the first frame
is rendered (the header's instance count on screen).  ``snapshot``: the
snapshot the dashboard starts from, built alone (what the first frame cannot
do without).  ``floor``: ``tests/bench/textual_floor.py``'s app, the least a
Textual app shows, to its first frame.  Each prints, as JSON, the CPU and wall
seconds from before its imports to that point, so the imports count, as they
do for a person starting pi-dash.
"""

from __future__ import annotations

import time

START_WALL, START_CPU = time.perf_counter(), time.process_time()

import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def elapsed() -> dict[str, float]:
    return {"wall": time.perf_counter() - START_WALL, "cpu": time.process_time() - START_CPU}


async def dashboard(root: str) -> dict[str, float]:
    from core.store import DirectoryStore
    from pi_dashboard.app import PiDashApp
    from pi_dashboard.widgets.instances_table import InstancesTable

    app = PiDashApp(DirectoryStore(root), live=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        app.export_screenshot()  # the frame, composed
        figures = elapsed()
        figures["rows"] = app.query_one(InstancesTable).row_count
    return figures


def snapshot(root: str) -> dict[str, float]:
    from core.snapshot import SnapshotBuilder
    from core.store import DirectoryStore

    built = SnapshotBuilder(DirectoryStore(root)).build(None)
    figures = elapsed()
    figures["rows"] = len(built.instances)
    return figures


async def floor() -> dict[str, float]:
    from tests.bench.textual_floor import Floor

    app = Floor(hz=1)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        app.export_screenshot()
        return elapsed()


if __name__ == "__main__":
    root, kind = sys.argv[1], sys.argv[2]
    if kind == "dashboard":
        result = asyncio.run(dashboard(root))
    elif kind == "snapshot":
        result = snapshot(root)
    else:
        result = asyncio.run(floor())
    print(json.dumps(result))
