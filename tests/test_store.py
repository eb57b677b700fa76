"""The directory backend's contract: atomic writes, create-if-absent, compare-and-swap/delete."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from core.store import CLAIMS, INSTANCES, LOCKS, EntryUnreadable, RecordCache, StoreError
from core.models import InstanceInfo


def test_write_then_read_round_trips_bytes(store):
    store.write(INSTANCES, "a", b'{"x": 1}')
    blob = store.read(INSTANCES, "a")
    assert blob is not None and blob.data == b'{"x": 1}' and blob.key == "a"
    assert (store.root / "instances" / "a.lock").read_bytes() == b'{"x": 1}'


def test_read_of_absent_key_is_none(store):
    assert store.read(INSTANCES, "missing") is None
    assert store.versions(INSTANCES) == {}


def test_new_directories_are_0700_and_files_0600(store):
    store.write(CLAIMS, "owner/entry", b"{}")
    path = store.root / "pi-dash" / "claims"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    files = list(path.iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_write_leaves_no_temporary_files(store):
    for i in range(20):
        store.write(INSTANCES, "a", str(i).encode())
    assert sorted(p.name for p in (store.root / "instances").iterdir()) == ["a.lock"]


def test_create_is_create_if_absent(store):
    assert store.create(LOCKS, "r", b"first")
    assert not store.create(LOCKS, "r", b"second")
    assert store.read(LOCKS, "r").data == b"first"
    assert sorted(p.name for p in (store.root / "locks").iterdir()) == ["r.lock"]


def test_a_create_is_one_unnamed_file_linked_in_place(store):
    """O_TMPFILE then linkat: the lock's directory never holds a temporary name."""
    assert store.create(LOCKS, "r", b"lock")
    path = store.root / "locks" / "r.lock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_nlink == 1
    assert store._unnamed_files, "this file system has unnamed files: the create should have used one"


def test_a_file_system_without_unnamed_files_creates_through_a_named_temporary_file(store, monkeypatch):
    real_open = os.open
    tries = []

    def no_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            tries.append(path)
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    assert store.create(LOCKS, "r", b"first")
    assert not store.create(LOCKS, "r", b"second")
    assert store.create(LOCKS, "s", b"other")
    assert store.read(LOCKS, "r").data == b"first" and store.read(LOCKS, "s").data == b"other"
    assert sorted(p.name for p in (store.root / "locks").iterdir()) == ["r.lock", "s.lock"]
    assert len(tries) == 1  # asked once, then remembered


def test_replace_if_and_delete_if_compare_exact_bytes(store):
    store.write(LOCKS, "r", b"v1")
    assert not store.replace_if(LOCKS, "r", b"other", b"v2")
    assert store.replace_if(LOCKS, "r", b"v1", b"v2")
    assert not store.delete_if(LOCKS, "r", b"v1")
    assert store.read(LOCKS, "r").data == b"v2"
    assert store.delete_if(LOCKS, "r", b"v2")
    assert store.read(LOCKS, "r") is None
    assert not store.delete_if(LOCKS, "r", b"v2")


def test_versions_change_on_every_rewrite(store):
    store.write(INSTANCES, "a", b"1")
    first = store.versions(INSTANCES)["a"]
    store.write(INSTANCES, "a", b"1")
    assert store.versions(INSTANCES)["a"] != first


def test_encoded_keys_survive_any_text(store):
    key = "sess/../ü [bold]x[/] %41\n"
    store.write(CLAIMS, key, b"{}")
    assert store.keys(CLAIMS) == [key]
    assert store.read(CLAIMS, key).data == b"{}"


@pytest.mark.parametrize("space", [INSTANCES, CLAIMS])
@pytest.mark.parametrize("key", ["", "a/b", "../x", ".hidden", "x\0y", "y" * 300, "日本語" * 30, "\ud800x", "sess/" + "é" * 120])
def test_keys_that_cannot_be_file_names_get_bounded_names(store, root, space, key):
    """A key no file could be named after is stored under a bounded name (prefix, ``~``, hash),
    which a listing gives back as its key and which every operation accepts."""
    store.write(space, key, b"{}")
    assert store.read(space, key).data == b"{}"
    (listed,) = store.keys(space)
    assert listed == store.listed_key(space, key)
    assert store.read(space, listed).data == b"{}"
    (name,) = os.listdir(root / space.name)
    assert len(os.fsencode(name)) <= 255 and "/" not in name and not name.startswith(".")
    not_a_name = not key or "\ud800" in key or len(key.encode("utf-8", "surrogatepass")) > 200 or (space.verbatim and ("/" in key or "\0" in key or key[0] == "."))
    if not_a_name:
        assert "~" in listed and listed != key
    else:
        assert listed == key  # a key with a plain name keeps it
    assert store.create(space, key, b"[]") is False
    assert store.delete_if(space, key, b"{}") and store.keys(space) == []


def test_bounded_names_are_stable_and_distinct(store):
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    assert store.listed_key(CLAIMS, long_a) == store.listed_key(CLAIMS, long_a) != store.listed_key(CLAIMS, long_b)
    assert store.listed_key(CLAIMS, long_a).startswith("a" * 40)


def test_symlinks_fifos_and_directories_are_unreadable_not_followed(store, root, tmp_path):
    (root / "instances").mkdir()
    target = tmp_path / "secret"
    target.write_text('{"pid": 1}')
    os.symlink(target, root / "instances" / "link.lock")
    os.mkfifo(root / "instances" / "fifo.lock")
    (root / "instances" / "dir.lock").mkdir()
    for key, reason in [("link", "symbolic link"), ("fifo", "not a regular file"), ("dir", "not a regular file")]:
        with pytest.raises(EntryUnreadable, match=reason):
            store.read(INSTANCES, key)


def test_missing_root_is_reported_clearly(tmp_path):
    from core.store import DirectoryStore, StoreUnavailable

    with pytest.raises(StoreUnavailable, match="does not exist"):
        DirectoryStore(tmp_path / "nope").check()


def test_unwritable_root_gives_a_store_error(tmp_path):
    from core.store import DirectoryStore

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        DirectoryStore(blocker / "runtime").write(INSTANCES, "a", b"{}")


def test_sweep_removes_only_old_temporary_files(store, root):
    store.write(INSTANCES, "a", b"{}")
    old = root / "instances" / ".a.lock.123.dead.tmp"
    fresh = root / "instances" / ".a.lock.456.live.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert store.sweep(older_than_ms=60_000) == 1
    assert not old.exists() and fresh.exists() and (root / "instances" / "a.lock").exists()


def _instance_json(instance_id: str, pending: int) -> bytes:
    return InstanceInfo.model_validate(
        {
            "instanceId": instance_id,
            "pid": 1,
            "sessionId": "s",
            "startedAt": "2026-02-18T00:15:35.675Z",
            "lastHeartbeat": "2026-02-18T00:15:35.675Z",
            "cwd": "/",
            "activeModels": [],
            "pendingTaskCount": pending,
        }
    ).to_json()


def test_record_cache_rereads_only_changed_entries(store, monkeypatch):
    for name in "abc":
        store.write(INSTANCES, name, _instance_json(name, 0))
    cache = RecordCache(store, INSTANCES, InstanceInfo)
    assert cache.refresh() and len(cache.records()) == 3
    reads = []
    original = store.read
    monkeypatch.setattr(store, "read", lambda space, key: reads.append(key) or original(space, key))
    assert not cache.refresh()
    assert reads == []
    store.write(INSTANCES, "b", _instance_json("b", 5))
    assert cache.refresh()
    assert reads == ["b"]
    assert cache.entries["b"].record.pending_task_count == 5
    store.delete(INSTANCES, "c")
    assert cache.refresh() and sorted(cache.entries) == ["a", "b"]


def test_record_cache_keeps_last_good_record_of_a_corrupted_file(store):
    store.write(INSTANCES, "a", _instance_json("a", 2))
    cache = RecordCache(store, INSTANCES, InstanceInfo)
    cache.refresh()
    store.write(INSTANCES, "a", b'{"instanceId": "a", "pid": ')
    cache.refresh()
    entry = cache.entries["a"]
    assert entry.record is None and "JSON" in entry.problem
    assert entry.last_good is not None and entry.last_good.pending_task_count == 2


def _increment(data: bytes | None) -> bytes:
    return b"1" if data is None else str(int(data) + 1).encode()


def test_update_is_read_modify_write(store):
    from core.store import PARALLELISM, RATE_LIMITS

    for space in (PARALLELISM, RATE_LIMITS):  # replaced, and in place
        for _ in range(5):
            store.update(space, "k", _increment)
        assert store.read(space, "k").data == b"5"
        assert store.update(space, "k", lambda data: None) == b"5"


def test_in_place_update_survives_removal_and_replacement(store, root):
    from core.store import RATE_LIMITS

    store.update(RATE_LIMITS, "openai", _increment)
    (root / "pi-dash" / "rate-limits" / "openai.json").unlink()
    assert store.update(RATE_LIMITS, "openai", _increment) == b"1"
    store.write(RATE_LIMITS, "openai", b"41")
    assert store.update(RATE_LIMITS, "openai", _increment) == b"42"
    store.update(RATE_LIMITS, "openai", lambda data: b"7")  # shorter: truncated
    assert store.read(RATE_LIMITS, "openai").data == b"7"


def test_event_log_reads_in_order_and_survives_rotation(store, monkeypatch):
    import core.store.directory as directory

    assert store.read_events() == ([], 0)
    for n in range(5):
        store.append_event(b'{"n": %d}' % n)
    first, cursor = store.read_events(0, limit=3)
    assert first == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    monkeypatch.setattr(directory, "EVENTS_MAX_BYTES", 60)
    for n in range(5, 9):
        store.append_event(b'{"n": %d}' % n)
    rest, cursor = store.read_events(cursor)
    assert rest == [b'{"n": %d}' % n for n in range(3, 9)]
    assert store.read_events(cursor) == ([], cursor)
    with pytest.raises(ValueError):
        store.append_event(b"two\nlines")
    with pytest.raises(ValueError):
        store.append_event(b"")


def test_a_reader_that_fell_behind_resumes_at_the_oldest_kept_segment(store, monkeypatch):
    import core.store.directory as directory

    monkeypatch.setattr(directory, "EVENTS_MAX_BYTES", 20)
    store.append_event(b'{"n": 0}')
    _, cursor = store.read_events(0)
    for n in range(1, 12):
        store.append_event(b'{"n": %d}' % n)
    assert len(list((store.root / "pi-dash" / "events").iterdir())) == directory.EVENTS_SEGMENTS_KEPT
    events, _ = store.read_events(cursor)
    numbers = [int(e.split(b":")[1].strip(b" }")) for e in events]
    assert numbers == sorted(numbers) and numbers[-1] == 11 and len(set(numbers)) == len(numbers)


def _stats(instance_id: str, attempts: int) -> bytes:
    from core.models import StealingStats

    return StealingStats(instance_id=instance_id, total_attempts=attempts).to_json()


def _settle(directory) -> None:
    """Date the directory's last change 10 s back, as if nothing had touched it since."""
    past = os.stat(directory).st_mtime - 10
    os.utime(directory, (past, past))


def test_a_rescan_skips_a_space_of_pi_dash_nothing_added_removed_or_replaced_in(store, monkeypatch):
    from core.models import StealingStats
    from core.store import STEALING_STATS
    import core.store.records as records

    store.write(STEALING_STATS, "a", _stats("a", 1))
    cache = RecordCache(store, STEALING_STATS, StealingStats)
    directory = store.root / "pi-dash" / "stealing-stats"
    _settle(directory)
    assert cache.refresh() and cache.entries["a"].record.total_attempts == 1
    listed = []
    monkeypatch.setattr(store, "versions", lambda space: listed.append(space) or type(store).versions(store, space))
    assert not cache.refresh() and listed == []  # the directory's mtime vouches for every entry

    store.write(STEALING_STATS, "a", _stats("a", 2))  # a replace changes the directory
    assert cache.refresh() and cache.entries["a"].record.total_attempts == 2 and listed == [STEALING_STATS]
    store.write(STEALING_STATS, "b", _stats("b", 1))
    assert cache.refresh() and set(cache.entries) == {"a", "b"}
    store.delete(STEALING_STATS, "b")
    assert cache.refresh() and set(cache.entries) == {"a"}

    # A foreign program rewriting a file in place leaves the directory alone: it
    # is seen once the token has been trusted for LISTING_TRUSTED_S.
    _settle(directory)
    assert not cache.refresh()  # the new token taken, nothing else changed
    (directory / "a.json").write_bytes(_stats("a", 3))
    assert not cache.refresh() and cache.entries["a"].record.total_attempts == 2
    monkeypatch.setattr(records, "LISTING_TRUSTED_S", 0.0)
    assert cache.refresh() and cache.entries["a"].record.total_attempts == 3


def test_a_directory_changed_within_its_timestamp_granularity_is_always_listed(store):
    """Two changes in one clock tick leave one mtime: a recent mtime vouches for nothing."""
    from core.models import StealingStats
    from core.store import STEALING_STATS

    store.write(STEALING_STATS, "a", _stats("a", 1))
    cache = RecordCache(store, STEALING_STATS, StealingStats)
    directory = store.root / "pi-dash" / "stealing-stats"
    cache.refresh()
    mtime = os.stat(directory).st_mtime_ns
    (directory / "a.json").write_bytes(_stats("a", 2))  # in place, and the mtime kept
    os.utime(directory, ns=(mtime, mtime))
    assert cache.refresh() and cache.entries["a"].record.total_attempts == 2


def test_pi_s_folders_are_always_listed(store):
    """pi rewrites its files in place, which never changes the directory."""
    from core.clock import utc_from_ms

    info = InstanceInfo(
        instance_id="a", pid=1, session_id="s", started_at=utc_from_ms(1_900_000_000_000), last_heartbeat=utc_from_ms(1_900_000_001_000), cwd="/"
    )
    store.write(INSTANCES, "a", info.to_json())
    cache = RecordCache(store, INSTANCES, InstanceInfo)
    _settle(store.root / "instances")
    cache.refresh()
    (store.root / "instances" / "a.lock").write_bytes(info.model_copy(update={"pid": 2}).to_json())
    assert cache.refresh() and cache.entries["a"].record.pid == 2
