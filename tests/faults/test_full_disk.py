"""A disk filled to the last byte: every write lands whole or raises, and nothing is lost.

A small tmpfs is filled by a file that takes every free byte, so the next page
any write needs is refused: a write crossing into it comes back short, one
that needs a whole new page fails.  Before, short writes were ignored: an event
line was cut and glued to the next one, and ``report_429`` returned as if it
had succeeded while the backoff record was left as invalid JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.backoff import BackoffBoard
from core.coordinator import Coordinator
from core.events import EventLog
from core.models import FleetEvent
from core.provider_config import parse_settings
from core.store import INSTANCES, DirectoryStore, StoreError
from tests.faults.actors import MODEL, PROVIDER
from tests.faults.conftest import fill_to_last_byte, small_tmpfs

pytestmark = pytest.mark.slow


def runtime(mount: Path) -> DirectoryStore:
    root = mount / "runtime"
    root.mkdir(mode=0o700)
    store = DirectoryStore(root)
    store.ensure_layout()
    return store


def event(n: int) -> bytes:
    return FleetEvent(at=1_771_373_735_675 + n, kind="test", message=f"event {n:04d} " + "m" * 90).model_dump_json(
        by_alias=True
    ).encode()


def test_event_appends_on_a_full_disk_are_whole_or_raised() -> None:
    with small_tmpfs(256) as mount:
        store = runtime(mount)
        appended = list(range(5))
        for n in appended:
            store.append_event(event(n))
        filler = fill_to_last_byte(mount)
        failures, untyped = [], []
        for n in range(5, 120):
            try:
                store.append_event(event(n))
                appended.append(n)
            except StoreError as exc:
                failures.append(str(exc))
            except OSError as exc:
                untyped.append(repr(exc))
        filler.unlink()
        for n in range(120, 130):  # room again: these must land, and clean
            store.append_event(event(n))
            appended.append(n)
        events, _, unreadable = EventLog(store).read(0, 10_000)
    seen = {int(e.message.split()[1]) for e in events}
    lost = sorted(set(appended) - seen)
    print(f"\nevents on a full disk: {len(appended)} appended, {len(failures)} refused (typed), "
          f"{len(untyped)} untyped, {len(lost)} lost {lost}, {unreadable} torn line(s) skipped")  # fmt: skip
    assert failures, "the disk never refused an append: the test tried nothing"
    assert untyped == []
    assert all("pi-dash/events/000001.jsonl" in message for message in failures), failures
    assert lost == []
    assert unreadable <= 1  # the one line the disk cut short, reported, not glued to the next


def test_report_429_on_a_full_disk_raises_or_is_kept() -> None:
    """Each 429 report either raises a typed error or is in the shared record afterwards,
    and the record is never left unreadable (the fleet would lose its deadline)."""
    with small_tmpfs(256) as mount:
        store = runtime(mount)
        board = BackoffBoard(store, "instance-" + "x" * 200)
        kept_before_fill = [board.report_429(PROVIDER, MODEL, retry_after_ms=1000 + n) for n in range(3)]
        assert kept_before_fill[-1].until > 0
        filler = fill_to_last_byte(mount)
        returned, failures, untyped = [0, 1, 2], [], []
        for n in range(3, 45):
            try:
                board.report_429(PROVIDER, MODEL, retry_after_ms=1000 + n)
                returned.append(n)
            except StoreError as exc:
                failures.append(str(exc))
            except OSError as exc:
                untyped.append(repr(exc))
        current = BackoffBoard(store, "observer").current(PROVIDER, MODEL)
        filler.unlink()
    kept = set() if current is None else {e.retry_after_ms - 1000 for e in current.recent429s}
    lost = sorted(set(returned) - kept)
    print(f"\n429 reports on a full disk: {len(returned)} returned, {len(failures)} raised (typed), "
          f"{len(untyped)} untyped, record {'unreadable' if current is None else 'whole'}, {len(lost)} lost")  # fmt: skip
    assert failures, "the disk never refused a report: the test tried nothing"
    assert untyped == []
    assert current is not None, "the backoff record was left unreadable: the fleet sees no backoff"
    assert lost == []
    assert all("pi-dash/backoff/" in message for message in failures), failures


def test_register_that_failed_on_a_full_disk_succeeds_when_retried() -> None:
    with small_tmpfs(256) as mount:
        store = runtime(mount)
        coordinator = Coordinator(
            store, config={"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000}, settings=parse_settings({}, "t")
        )
        filler = fill_to_last_byte(mount)
        with pytest.raises(StoreError, match="No space left on device"):
            coordinator.register(cwd="/work")
        failed_but_initialised = coordinator.is_initialized
        filler.unlink()
        try:
            info = coordinator.register(cwd="/work")
            written = store.read(INSTANCES, info.instance_id)
            first = None if written is None else written.version
            time.sleep(1.0)  # ten heartbeat intervals: the heartbeat rewrites the file
            later = store.read(INSTANCES, info.instance_id)
            assert coordinator.register(cwd="/work").instance_id == info.instance_id  # a second call is a no-op
        finally:
            coordinator.unregister()
    print(f"\nregister on a full disk: raised, initialised after failure {failed_but_initialised}, "
          f"file after retry {written is not None}, heartbeat {later is not None and later.version != first}")  # fmt: skip
    assert not failed_but_initialised
    assert written is not None, "the retried register wrote no instance file"
    assert later is not None and later.version != first, "the retried register started no heartbeat"
