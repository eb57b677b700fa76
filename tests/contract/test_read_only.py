"""A store opened read-only refuses every write, on every backend, and changes nothing."""

from __future__ import annotations

import pytest

from core.control import FleetControl
from core.coordinator import Coordinator
from core.locks import LockService
from core.snapshot import SnapshotBuilder
from core.store import ALL_SPACES, BACKOFF, CLAIMS, INSTANCES, LOCKS, RATE_LIMITS, ReadOnlyStore, Store

from tests.backends import open_store, spec_of


def _everything(store: Store) -> dict[str, bytes]:
    found = {f"{space.name}/{key}": blob.data for space in ALL_SPACES for key, blob in store.read_all(space).items()}
    events, _ = store.read_events(0, 10_000)
    return {**found, "events": b"\n".join(events)}


def test_every_write_is_refused_and_nothing_changes(any_store):
    writer = Coordinator(any_store)
    writer.register(heartbeat=False)
    writer.set_active_model("openai", "gpt-4o")
    with writer.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=1)
    lock = LockService(any_store, writer.instance_id).try_acquire("deploy:staging")
    key = writer.instance_id
    current = any_store.read(INSTANCES, key).data
    viewer = open_store(spec_of(any_store), read_only=True)
    before = _everything(any_store)

    attempts = {
        "write": lambda: viewer.write(INSTANCES, "new", b"{}"),
        "write in place": lambda: viewer.write(RATE_LIMITS, "openai", b"{}"),
        "create": lambda: viewer.create(CLAIMS, "a/b", b"{}"),
        "create_or_read": lambda: viewer.create_or_read(LOCKS, "deploy_staging", b"{}"),
        "replace_if": lambda: viewer.replace_if(INSTANCES, key, current, b"{}"),
        "delete_if": lambda: viewer.delete_if(INSTANCES, key, current),
        "delete": lambda: viewer.delete(INSTANCES, key),
        "update": lambda: viewer.update(BACKOFF, "openai:gpt-4o", lambda raw: b"{}"),
        "append_event": lambda: viewer.append_event(b'{"at": 1, "kind": "x", "message": "y"}'),
        "a coordinator registering": lambda: Coordinator(viewer).register(heartbeat=False),
        "taking a lock": lambda: LockService(viewer, "viewer").try_acquire("other"),
    }
    refused = []
    for name, attempt in attempts.items():
        with pytest.raises(ReadOnlyStore):
            attempt()
        refused.append(name)
    assert len(refused) == len(attempts)

    # The dashboard's actions go through the same store: refused, reported, nothing done.
    control = FleetControl(viewer, "pi-dash:test")
    for result in (control.request_drain(key), control.release_lock(lock)):
        assert not result.done and "read-only" in result.message

    # Reading still works, and sees the fleet as it is.
    snapshot = SnapshotBuilder(viewer).build()
    assert snapshot.instance(key) is not None and "(read-only)" in snapshot.source
    assert _everything(any_store) == before
    writer.unregister()
