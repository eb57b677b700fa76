"""Hostile entries in a coordination directory never crash, block, hide or destroy anything.

Every space (``instances/``, ``queue-states/``, ``locks/``,
``pi-dash/stealing-stats/``, ``pi-dash/claims/``) and ``coordinator.json`` get
corrupt, truncated, empty, binary, huge (sparse, over ``MAX_BLOB_BYTES``),
deeply nested, wrongly typed and unknown-keyed files, symlinks (to
``/etc/passwd`` and dangling), FIFOs, directories, mode-000 files and files with
hostile names.  For each:

* ``SnapshotBuilder.build()`` never raises (nor blocks: an alarm guards every test);
* every bad entry appears in ``snapshot.problems`` with its path;
* valid neighbouring files are still shown correctly;
* a registered ``Coordinator``'s ``enhanced_heartbeat()`` deletes nothing a live
  instance owns: a corrupt instance file goes only when it is older than the
  timeout *and* the pid in its name is not running.

Time: the engines' clock runs ``AHEAD`` ms ahead of the real clock, so a file
whose mtime is the real "now" is ``AHEAD`` ms old to them ("old") while a file
whose mtime is set to the engines' now is fresh ("recent"), and every mtime is
still after this process started (so our own pid is never taken for a reused one).

Known core bugs are pinned by ``xfail(strict=True)`` tests at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.clock import ManualClock
from core.coordinator import Coordinator
from core.models import InstanceInfo
from core.snapshot import SnapshotBuilder, Status
from core.store import DirectoryStore
from core.store.directory import MAX_BLOB_BYTES, encode_key
from tests.helpers import write_dated

IS_ROOT = os.geteuid() == 0
AHEAD = 200_000  # the engines' clock is this far ahead of the file system's
TIMEOUT = 60_000
NEVER_A_PID = 4_194_304 + 4_242  # above Linux's largest possible pid_max (2**22)
MY_PID = os.getpid()
NEIGHBOUR = f"sess-0e1ghb0r-pid{MY_PID}-mlra44s2-nb01"
NEIGHBOUR_ENTRIES = ("entry-1", "entry-2")
PASSWD = Path("/etc/passwd")

SPACES = {  # name: (suffix, verbatim key)
    "instances": (".lock", True),
    "queue-states": (".json", True),
    "locks": (".lock", True),
    "pi-dash/stealing-stats": (".json", False),
    "pi-dash/claims": (".json", False),
    "pi-dash/parallelism": (".json", False),
    "pi-dash/backoff": (".json", False),
    "pi-dash/rate-limits": (".json", False),
    "pi-dash/control": (".json", False),
}
IN_PLACE = {"pi-dash/backoff", "pi-dash/rate-limits"}  # an empty file there means "not written yet"
BACKOFF_KEY = "openai:gpt-4o"
CONFIG = "coordinator.json"

UNREADABLE = {"fifo", "directory", "symlink_passwd", "symlink_dangling", "symlink_valid", "huge"}
CORRUPT = {"garbage", "truncated", "empty", "whitespace", "deep", "wrong_type", "unknown_keys_only", "non_object", "invalid_utf8", "bom"}
KINDS = sorted(UNREADABLE | CORRUPT | {"mode000"})


class Hung(BaseException):
    """Raised by the alarm; a BaseException so that no ``except OSError`` in core can swallow it."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(*_: object) -> None:
        raise Hung(f"core blocked for {seconds} s on a hostile entry")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _never_hang() -> Iterator[None]:
    """A FIFO or lock that blocks core would hang the suite: fail instead."""
    with deadline(120):
        yield


# ---------------------------------------------------------------- documents
def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def pretty(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def instance_doc(iid: str, pid: int, now: int, pending: int = 4) -> dict[str, Any]:
    return {
        "instanceId": iid,
        "pid": pid,
        "sessionId": "0e1ghb0r-0000",
        "startedAt": iso(now - 1_000),
        "lastHeartbeat": iso(now),
        "cwd": "/srv/ok",
        "activeModels": [{"provider": "openai", "model": "gpt-4o", "since": iso(now - 500)}],
        "pendingTaskCount": pending,
    }


def queue_doc(owner: str, now: int) -> dict[str, Any]:
    return {
        "instanceId": owner,
        "timestamp": iso(now),
        "pendingTaskCount": 4,
        "activeOrchestrations": 1,
        "stealableEntries": [
            {"id": e, "toolName": "subagent_run", "priority": "high", "instanceId": owner, "enqueuedAt": iso(now - 100)}
            for e in NEIGHBOUR_ENTRIES
        ],
    }


def lock_doc(owner: str, now: int) -> dict[str, Any]:
    return {"lockId": f"{owner}-mlra44s2", "acquiredAt": now, "expiresAt": now + 30_000, "resource": f"steal:{owner}"}


def stats_doc(owner: str, now: int) -> dict[str, Any]:
    return {
        "formatVersion": 1,
        "instanceId": owner,
        "totalAttempts": 3,
        "successfulSteals": 2,
        "failedAttempts": 1,
        "lastAttemptAt": now,
        "lastSuccessAt": now,
        "avgLatencyMs": 1.5,
        "latencySamples": [1, 2],
    }


def claim_doc(owner: str, entry: str, now: int) -> dict[str, Any]:
    return {"formatVersion": 1, "ownerInstanceId": owner, "entryId": entry, "claimedBy": "sess-thief", "claimedAt": now}


def parallelism_doc(owner: str, now: int) -> dict[str, Any]:
    model = {
        "provider": "openai",
        "model": "gpt-4o",
        "baseParallelism": 4,
        "currentParallelism": 2,
        "minParallelism": 1,
        "maxParallelism": 16,
        "effectiveParallelism": 2,
        "recentErrors": [{"type": "429", "timestamp": now - 1_000}],
        "recent429Count": 1,
    }
    return {"formatVersion": 1, "instanceId": owner, "updatedAt": now, "models": {BACKOFF_KEY: model}}


def backoff_doc(now: int) -> dict[str, Any]:
    return {"formatVersion": 1, "provider": "openai", "model": "gpt-4o", "until": now + 5_000,
            "recent429s": [{"at": now - 1_000, "instanceId": NEIGHBOUR}]}


def rate_doc(now: int) -> dict[str, Any]:
    return {"formatVersion": 1, "provider": "openai", "requestsPerMinute": 500, "burst": 100, "effectiveRequestsPerMinute": 450,
            "buckets": {"pool": {"tat": now}}, "grantsPerSecond": {str(now // 1000): 3}, "totalGrants": 3}


def valid_doc(space: str, now: int) -> dict[str, Any]:
    return {
        "instances": instance_doc("sess-x", 1, now),
        "queue-states": queue_doc("sess-x", now),
        "locks": lock_doc("sess-x", now),
        "pi-dash/stealing-stats": stats_doc("sess-x", now),
        "pi-dash/claims": claim_doc("sess-x", "e", now),
        "pi-dash/parallelism": parallelism_doc("sess-x", now),
        "pi-dash/backoff": backoff_doc(now),
        "pi-dash/rate-limits": rate_doc(now),
        "pi-dash/control": {"formatVersion": 1, "instanceId": "sess-x", "action": "drain", "requestedAt": now, "requestedBy": "dash"},
        CONFIG: {"totalMaxLlm": 8},
    }[space]


WRONG_TYPES = {
    "instances": [("instanceId", 5), ("instanceId", ""), ("pid", "abc"), ("pid", [1]), ("pid", 1.5), ("lastHeartbeat", "yesterday"),
                  ("startedAt", None), ("activeModels", "gpt-4o"), ("activeModels", [{"provider": 1}]), ("pendingTaskCount", -1),
                  ("pendingTaskCount", "many"), ("cwd", {"a": 1})],
    "queue-states": [("pendingTaskCount", "x"), ("pendingTaskCount", -3), ("timestamp", "nope"), ("stealableEntries", {}),
                     ("stealableEntries", [1]), ("instanceId", None)],
    "locks": [("lockId", ""), ("acquiredAt", "now"), ("expiresAt", [1]), ("resource", 5), ("acquiredAt", 1.5)],
    "pi-dash/stealing-stats": [("instanceId", 7), ("totalAttempts", -1), ("latencySamples", "x"), ("formatVersion", "one")],
    "pi-dash/claims": [("ownerInstanceId", None), ("claimedAt", "x"), ("entry", 5), ("claimedBy", [])],
    "pi-dash/parallelism": [("instanceId", None), ("updatedAt", "soon"), ("models", []), ("models", {"k": {"provider": "x"}})],
    "pi-dash/backoff": [("provider", 1), ("until", "later"), ("recent429s", [{"at": "x"}]), ("formatVersion", None)],
    "pi-dash/control": [("action", "explode"), ("requestedAt", "x"), ("instanceId", None), ("requestedBy", 5)],
    "pi-dash/rate-limits": [("burst", "many"), ("requestsPerMinute", None), ("buckets", {"pool": {"tat": "x"}}), ("grantsPerSecond", [])],
    CONFIG: [("totalMaxLlm", "8"), ("totalMaxLlm", 0), ("heartbeatTimeoutMs", -5), ("heartbeatIntervalMs", 2.5), ("totalMaxLlm", True)],
}


def _not_a_config(data: bytes) -> bool:
    """Bytes that are no usable coordinator.json (and so no record of any space either)."""
    try:
        return not isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return True


CONFIG_KINDS = [k for k in KINDS if k not in ("unknown_keys_only", "bom")]  # both are usable configs (see xfail below)


def hostile_bytes(kind: str, space: str, now: int, data: st.DataObject | None) -> bytes:
    """The content of a regular-file kind (``data`` draws the variable part under hypothesis)."""

    def draw(strategy: st.SearchStrategy[Any], default: Any) -> Any:
        return data.draw(strategy) if data is not None else default

    if kind in UNREADABLE:
        return b""  # made by plant(), not by content
    valid = pretty(valid_doc(space, now))
    garbage = st.binary(min_size=1, max_size=200).filter(_not_a_config)
    if kind == "garbage":
        return draw(garbage, b"\x00\xff\xfe garbage \x89PNG")
    if kind == "truncated":
        return valid[: draw(st.integers(1, len(valid) - 2), len(valid) // 2)]
    if kind == "empty":
        return b""
    if kind == "whitespace":
        return draw(st.sampled_from([b" ", b"\n", b" \t\r\n "]), b"  \n")
    if kind == "deep":
        depth = draw(st.integers(300, 60_000), 100_000)
        return b"[" * depth + b"]" * depth if space == CONFIG or draw(st.booleans(), True) else b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "wrong_type":
        key, bad = draw(st.sampled_from(WRONG_TYPES[space]), WRONG_TYPES[space][0])
        return pretty({key: bad} if space == CONFIG else {**valid_doc(space, now), key: bad})
    if kind == "unknown_keys_only":
        return pretty({"somethingElse": 1, "nested": {"ü": ["[bold]x[/bold]", None]}, "τ": True})
    if kind == "non_object":
        return draw(st.sampled_from([b"null", b"[]", b"42", b'"str"', b"true", b"[{}]"]), b"null")
    if kind == "invalid_utf8":
        return valid.replace(b'"', b'"\xff\xfe', 1) if space != CONFIG else b'{"totalMaxLlm": "\xff"}'
    if kind == "bom":
        return b"\xef\xbb\xbf" + valid
    if kind == "mode000":
        return draw(garbage, b"\x00secret")
    raise AssertionError(kind)


# ------------------------------------------------------------------ entries
@dataclass(frozen=True)
class Entry:
    space: str  # a key of SPACES, or CONFIG
    filename: str  # on disk, in the space's directory
    key: str | None  # the key core sees (None: core should ignore the file)
    kind: str
    old: bool

    @property
    def path(self) -> str:
        return self.filename if self.space == CONFIG else f"{self.space}/{self.filename}"

    @property
    def where(self) -> str:
        """How a snapshot names the entry in ``problems``."""
        if self.space == CONFIG:
            return CONFIG
        return f"{self.space}/{self.key}{SPACES[self.space][0]}"

    @property
    def problem_kind(self) -> str | None:
        if self.space == CONFIG:
            return "config"
        if self.space in IN_PLACE and self.kind == "empty":
            return None  # created but never written: as good as absent
        if self.kind in UNREADABLE or (self.kind == "mode000" and not IS_ROOT):
            return "unreadable"
        return "corrupt"


def plant(root: Path, entry: Entry, content: bytes, real_now: int, clock_now: int) -> None:
    path = root / entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = entry.kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inner.lock").write_bytes(b"{}")
    elif kind == "symlink_passwd":
        os.symlink(PASSWD, path)
    elif kind == "symlink_dangling":
        os.symlink("/nonexistent/pi-dash/nowhere", path)
    elif kind == "symlink_valid":
        os.symlink(root / "instances" / f"{NEIGHBOUR}.lock", path)
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(MAX_BLOB_BYTES + 1 + len(content))
    else:
        path.write_bytes(content)
        if kind == "mode000":
            path.chmod(0)
    ms = real_now if entry.old else clock_now
    os.utime(path, ns=(ms * 1_000_000, ms * 1_000_000), follow_symlinks=False)


def neighbour_paths() -> list[str]:
    return [
        f"instances/{NEIGHBOUR}.lock",
        f"queue-states/{NEIGHBOUR}.json",
        f"locks/steal_{NEIGHBOUR}.lock",
        f"pi-dash/stealing-stats/{encode_key(NEIGHBOUR)}.json",
        f"pi-dash/claims/{encode_key(NEIGHBOUR + '/' + NEIGHBOUR_ENTRIES[0])}.json",
        f"pi-dash/parallelism/{encode_key(NEIGHBOUR)}.json",
        f"pi-dash/backoff/{encode_key(BACKOFF_KEY)}.json",
        "pi-dash/rate-limits/openai.json",
    ]


def build_fleet(root: Path, real_now: int, clock_now: int, config: bool = True) -> None:
    """The valid neighbours: one live instance (this process), its queue, lock, stats, a claim,
    its parallelism state, a shared backoff and a rate limiter."""
    files = {
        f"instances/{NEIGHBOUR}.lock": instance_doc(NEIGHBOUR, MY_PID, clock_now),
        f"queue-states/{NEIGHBOUR}.json": queue_doc(NEIGHBOUR, clock_now),
        f"locks/steal_{NEIGHBOUR}.lock": lock_doc(NEIGHBOUR, clock_now),
        f"pi-dash/stealing-stats/{encode_key(NEIGHBOUR)}.json": stats_doc(NEIGHBOUR, clock_now),
        f"pi-dash/claims/{encode_key(NEIGHBOUR + '/' + NEIGHBOUR_ENTRIES[0])}.json": claim_doc(NEIGHBOUR, NEIGHBOUR_ENTRIES[0], clock_now),
        f"pi-dash/parallelism/{encode_key(NEIGHBOUR)}.json": parallelism_doc(NEIGHBOUR, clock_now),
        f"pi-dash/backoff/{encode_key(BACKOFF_KEY)}.json": backoff_doc(clock_now),
        "pi-dash/rate-limits/openai.json": rate_doc(clock_now),
    }
    if config:
        files[CONFIG] = {"totalMaxLlm": 8}
    for rel, doc in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(pretty(doc))
    # The lock's file written when its holder says (a lock stamped apart from its file is clock skew).
    lock = f"locks/steal_{NEIGHBOUR}.lock"
    write_dated(root / lock, pretty(files[lock]), clock_now)


def neighbour_files(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in neighbour_paths()}


_PID = re.compile(r"-pid(\d+)-")


def pid_running(pid: int) -> bool:
    if pid == MY_PID:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def expect_deleted(
    entry: Entry, live: set[str], dead_instances: set[str] = frozenset(), instance_keys: set[str] = frozenset()
) -> bool:
    """What ``enhanced_heartbeat`` may remove; everything else must survive byte for byte.

    ``dead_instances``: keys of the instance files expected to go (their queue states and
    parallelism states go with them); ``instance_keys``: every instance key left after that.
    """
    if entry.key is None or entry.space == CONFIG:
        return False
    if entry.space == "pi-dash/parallelism" and entry.key in dead_instances:
        return entry.kind != "directory"  # removed unconditionally with its dead instance
    if entry.problem_kind == "unreadable":
        return False
    if entry.space == "queue-states":
        return entry.key in dead_instances
    if entry.space == "pi-dash/parallelism":
        return entry.old and entry.key not in instance_keys  # an orphan past the heartbeat timeout
    if entry.space == "instances":
        match = _PID.search(entry.key)
        return entry.old and (match is None or not pid_running(int(match.group(1))))
    if entry.space == "locks":
        return entry.old  # a corrupt lock past its 60 s grace
    if entry.space == "pi-dash/claims":
        owner, _, entry_id = entry.key.rpartition("/")
        gone = owner not in live and owner != NEIGHBOUR  # the neighbour also has a queue state
        offered = owner == NEIGHBOUR and entry_id in NEIGHBOUR_ENTRIES
        return gone or (entry.old and not offered)
    return False  # stats (a day), control requests (10 min), backoffs and rate limits: never within AHEAD


def snapshot(root: Path, clock_now: int):
    return SnapshotBuilder(DirectoryStore(root), clock=ManualClock(now_ms=clock_now), env={}).build()


def check_neighbours(snap, total: int, active: int, coordinator_id: str | None = None) -> None:
    view = snap.instance(NEIGHBOUR)
    assert view is not None and view.problem is None
    assert view.status is Status.ALIVE and view.counted
    assert view.info.pending_task_count == 4 and view.info.active_models[0].model == "gpt-4o"
    assert view.queue is not None and [e.id for e in view.queue.stealable_entries] == list(NEIGHBOUR_ENTRIES)
    assert view.stats is not None and view.stats.total_attempts == 3
    assert snap.figures.active_count == active
    assert snap.figures.parallel_limit == max(1, total // active)
    # the neighbour's dynamic share: weight 1/5 against the coordinator's 1 (pending 0)
    expected = total if active == 1 else max(1, min(total, int(total * (1 / 5) / (1 / 5 + 1) + 0.5)))
    assert view.parallel_limit == expected
    assert snap.figures.total_pending == 4 and snap.figures.busy_instances == 1
    assert snap.figures.stealable_tasks == 2
    (queue,) = [q for q in snap.queues if q.instance_id == NEIGHBOUR]
    assert queue.fresh and queue.claimed_entries >= 1
    (lock,) = [lv for lv in snap.locks if lv.key == f"steal_{NEIGHBOUR}"]
    assert lock.lock is not None and not lock.expired and lock.problem is None
    assert [(v.instance_id, v.state.current_parallelism) for v in snap.parallelism if v.instance_id == NEIGHBOUR] == [(NEIGHBOUR, 2)]
    (backoff,) = snap.backoffs
    assert (backoff.provider, backoff.model, backoff.recent429s, backoff.instances_waiting) == ("openai", "gpt-4o", 1, 1)
    (rate,) = snap.rate_limits
    assert (rate.provider, rate.burst, rate.used_last_minute) == ("openai", 100, 3)
    assert snap.stealing.attempts == 3 and snap.stealing.successes == 2
    assert [(m.provider, m.model) for m in snap.models] == [("openai", "gpt-4o")]
    if coordinator_id is not None:
        assert snap.instance(coordinator_id).status is Status.ALIVE


# ------------------------------------------------------------------- names
FIXED_STEMS = [
    "with space",
    "[bold]x",
    "[red]alert[reset]",
    "[link=https:evil]click",
    "ünïcödé 名前 🚀",
    "x" * 236,
    "é" * 120,  # 240 bytes
    "-rf",
    "$(touch pwned)",
    "a\\b",
    "tab\there",
    "new\nline",
    "x.lock",
    "*",
    "?",
    "~",
    "'quoted'",
    '"dq"',
    "%41",
    "%zz",
    "nul",
    "sess-zzzzzzzz-pidNaN-abc-0001",
]
RANDOM_STEM = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40)


def _visible_stem(stem: str) -> bool:
    return not stem.startswith(".") and len(stem.encode()) <= 240 and "-pid" not in stem and stem != NEIGHBOUR


def _instance_stem(stem: str) -> bool:
    # A dead instance's parallelism state is deleted under the same key, %-encoded: longer keys
    # make enhanced_heartbeat() raise (test_dead_instance_with_a_long_name_does_not_break_cleanup).
    return _visible_stem(stem) and len(encode_key(stem)) <= 240


@st.composite
def entries(draw) -> Entry:
    space = draw(st.sampled_from([*SPACES, CONFIG]))
    kind = draw(st.sampled_from(CONFIG_KINDS if space == CONFIG else KINDS))
    old = draw(st.booleans())
    if space == CONFIG:
        return Entry(CONFIG, CONFIG, CONFIG, kind, old)
    suffix, verbatim = SPACES[space]
    ignored = draw(st.integers(0, 9)) == 0
    if ignored:
        stem = draw(RANDOM_STEM.filter(lambda s: len(s.encode()) < 200))
        filename = draw(st.sampled_from([f".{stem}{suffix}", f"{stem}.bak", f"{stem}{suffix}.old", f"{stem}{suffix.upper()}", encode_key(stem)]))
        if filename.endswith(suffix) and not filename.startswith("."):
            filename = "." + filename
        if len(filename.encode()) > 250:
            filename = f".long{suffix}"
        return Entry(space, filename, None, kind, old)
    if verbatim:
        if space == "instances" and draw(st.booleans()):
            pid = draw(st.sampled_from([MY_PID, NEVER_A_PID]))
            stem = f"sess-{draw(st.sampled_from(['deadbeef', 'c0ffee00', '12345678']))}-pid{pid}-mlra44s2-{draw(st.sampled_from(['0001', 'zzzz']))}"
        else:
            accept = _instance_stem if space == "instances" else _visible_stem
            stem = draw((st.sampled_from(FIXED_STEMS) | RANDOM_STEM).filter(accept))
        return Entry(space, stem + suffix, stem, kind, old)
    if space == "pi-dash/claims" and draw(st.booleans()):
        key = f"{NEIGHBOUR}/{draw(st.sampled_from(NEIGHBOUR_ENTRIES) | RANDOM_STEM)}"
    else:
        key = draw(st.sampled_from(FIXED_STEMS) | RANDOM_STEM)
    if key in (NEIGHBOUR, BACKOFF_KEY, "openai", f"{NEIGHBOUR}/{NEIGHBOUR_ENTRIES[0]}") or len(encode_key(key)) > 240:
        key = "fallback [x] ü"
    return Entry(space, encode_key(key) + suffix, key, kind, old)


# ------------------------------------------------------------ the property
def run_fleet(root: Path, planted: list[tuple[Entry, bytes]]) -> None:
    real_now = time.time_ns() // 1_000_000
    clock_now = real_now + AHEAD
    config_hostile = any(e.space == CONFIG for e, _ in planted)
    build_fleet(root, real_now, clock_now, config=not config_hostile)
    for entry, content in planted:
        plant(root, entry, content, real_now, clock_now)
    passwd_before = (PASSWD.read_bytes(), PASSWD.stat().st_mtime_ns)
    total = 6 if config_hostile else 8
    visible = [e for e, _ in planted if e.key is not None]

    snap = snapshot(root, clock_now)
    got = {(p.kind, p.where) for p in snap.problems}
    assert got == {(e.problem_kind, e.where) for e in visible if e.problem_kind}, (got, visible)
    assert snap.config.total_max_llm == total
    assert snap.figures.status_counts[Status.CORRUPT] == sum(1 for e in visible if e.space == "instances")
    check_neighbours(snap, total, active=1)
    json.dumps(snap.to_dict())

    before = neighbour_files(root)
    coord = Coordinator(DirectoryStore(root), clock=ManualClock(now_ms=clock_now), env={})
    assert coord.total_max_llm == total
    assert bool(coord.config_problems) is config_hostile
    me = coord.register(session_id="ffffffffcoord", cwd="/w", heartbeat=False).instance_id
    try:
        coord.enhanced_heartbeat()
        live = {NEIGHBOUR, me}
        dead = {e.key for e, _ in planted if e.space == "instances" and expect_deleted(e, live)}
        left = {NEIGHBOUR, me} | {e.key for e, _ in planted if e.space == "instances" and e.key and e.key not in dead}
        for entry, _ in planted:
            exists = os.path.lexists(root / entry.path)
            assert exists is not expect_deleted(entry, live, dead, left), (entry, "deleted" if not exists else "kept")
        assert neighbour_files(root) == before
        assert (PASSWD.read_bytes(), PASSWD.stat().st_mtime_ns) == passwd_before

        again = snapshot(root, clock_now)
        remaining = {(e.problem_kind, e.where) for e in visible if e.problem_kind and os.path.lexists(root / e.path)}
        assert {(p.kind, p.where) for p in again.problems} == remaining
        check_neighbours(again, total, active=2, coordinator_id=me)
        assert coord.active_instance_count() == 2
        assert coord.steal_work() is not None  # the neighbour's queue is still offered
    finally:
        coord.unregister()


@settings(
    max_examples=70,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_hostile_directories(data: st.DataObject) -> None:
    picked = data.draw(st.lists(entries(), min_size=1, max_size=6, unique_by=lambda e: (e.space, e.filename)))
    planted = [(e, hostile_bytes(e.kind, e.space, 0, data)) for e in picked]
    root = Path(tempfile.mkdtemp(prefix="pi-hostile-"))
    try:
        run_fleet(root, planted)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------- every kind, every space
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_in_every_space(tmp_path: Path, kind: str) -> None:
    planted = []
    for space, (suffix, verbatim) in SPACES.items():
        for old in (False, True):
            key = f"hostile {kind} {'old' if old else 'new'} [bold]ü"
            filename = (key if verbatim else encode_key(key)) + suffix
            planted.append((Entry(space, filename, key, kind, old), hostile_bytes(kind, space, 0, None)))
    run_fleet(tmp_path / "runtime", planted)


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_every_kind_as_coordinator_json(tmp_path: Path, kind: str) -> None:
    run_fleet(tmp_path / "runtime", [(Entry(CONFIG, CONFIG, CONFIG, kind, False), hostile_bytes(kind, CONFIG, 0, None))])


def test_coordinator_json_with_only_unknown_keys_means_defaults(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_bytes(hostile_bytes("unknown_keys_only", CONFIG, 0, None))
    snap = SnapshotBuilder(DirectoryStore(tmp_path), clock=ManualClock(), env={}).build()
    assert snap.problems == () and snap.config.total_max_llm == 6


@pytest.mark.parametrize(("key", "bad"), WRONG_TYPES[CONFIG])
def test_wrong_types_in_coordinator_json(tmp_path: Path, key: str, bad: Any) -> None:
    (tmp_path / CONFIG).write_bytes(pretty({"totalMaxLlm": 8, "heartbeatIntervalMs": 15_000, key: bad}))
    snap = SnapshotBuilder(DirectoryStore(tmp_path), clock=ManualClock(), env={}).build()
    assert [(p.kind, p.where) for p in snap.problems] == [("config", CONFIG)]
    assert key in snap.problems[0].message
    expected_total = 8 if key != "totalMaxLlm" else 6
    assert snap.config.total_max_llm == expected_total


@pytest.mark.parametrize("space", [s for s in SPACES])
def test_each_wrong_type_is_rejected(tmp_path: Path, space: str) -> None:
    suffix, verbatim = SPACES[space]
    for i, (key, bad) in enumerate(WRONG_TYPES[space]):
        name = f"wrong-{i}"
        path = tmp_path / space / ((name if verbatim else encode_key(name)) + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pretty({**valid_doc(space, 1_771_373_735_675), key: bad}))
    snap = SnapshotBuilder(DirectoryStore(tmp_path), clock=ManualClock(), env={}).build()
    assert sorted(p.where for p in snap.problems if p.kind == "corrupt") == sorted(
        f"{space}/wrong-{i}{suffix}" for i in range(len(WRONG_TYPES[space]))
    )


# ------------------------------------------------ instance deletion rules
@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_corrupt_instance_files_are_removed_only_when_old_and_pid_gone(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    root = tmp_path / "runtime"
    real_now = time.time_ns() // 1_000_000
    clock_now = real_now + AHEAD
    build_fleet(root, real_now, clock_now)
    time.sleep(0.05)
    real_now = time.time_ns() // 1_000_000  # every "old" mtime after the child started
    cases = {
        # (pid in the name, old?) -> removed?
        (MY_PID, False): False,
        (MY_PID, True): False,
        (sleeper.pid, False): False,
        (sleeper.pid, True): False,  # its process runs: never, however old
        (NEVER_A_PID, False): False,  # may be a live writer caught mid-write
        (NEVER_A_PID, True): True,
        (None, False): False,
        (None, True): True,
    }
    names = {}
    for (pid, old), _ in cases.items():
        stem = f"sess-c0rrupt0-pid{pid}-mlra44s2-{'old0' if old else 'new0'}" if pid else f"no-pid-here-{'old' if old else 'new'}"
        names[(pid, old)] = stem
        path = root / "instances" / f"{stem}.lock"
        path.write_bytes(b'{\n  "instanceId": "' + stem.encode() + b'",\n  "pid": ')  # caught mid-write
        ms = real_now if old else clock_now
        os.utime(path, ns=(ms * 1_000_000, ms * 1_000_000))

    clock = ManualClock(now_ms=clock_now)
    coord = Coordinator(DirectoryStore(root), clock=clock, env={})
    coord.register(heartbeat=False)
    try:
        coord.enhanced_heartbeat()
        for key, removed in cases.items():
            assert (root / "instances" / f"{names[key]}.lock").exists() is not removed, key
        # once the child is gone its old corrupt file goes too
        sleeper.kill()
        sleeper.wait()
        clock.advance(3_000)  # past the liveness cache
        coord.enhanced_heartbeat()
        assert not (root / "instances" / f"{names[(sleeper.pid, True)]}.lock").exists()
        assert (root / "instances" / f"{names[(sleeper.pid, False)]}.lock").exists()
        assert (root / "instances" / f"{NEIGHBOUR}.lock").exists()
    finally:
        coord.unregister()


def test_a_file_older_than_its_pids_process_is_a_reused_pid(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Documented behaviour: a corrupt file last written before its pid's process started is not that process's."""
    root = tmp_path / "runtime"
    real_now = time.time_ns() // 1_000_000
    build_fleet(root, real_now, real_now)
    path = root / "instances" / f"sess-c0rrupt0-pid{sleeper.pid}-mlra44s2-0001.lock"
    path.write_bytes(b"{")
    an_hour_ago = (real_now - 3_600_000) * 1_000_000
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    coord = Coordinator(DirectoryStore(root), clock=ManualClock(now_ms=real_now), env={})
    assert coord.cleanup_dead_instances() == [path.stem]


def test_live_instance_with_skewed_clock_is_kept(tmp_path: Path) -> None:
    """A fresh file whose heartbeat looks old (the writer's clock is behind) is not a dead instance."""
    root = tmp_path / "runtime"
    real_now = time.time_ns() // 1_000_000
    build_fleet(root, real_now, real_now)
    skewed = f"sess-5kewed00-pid{NEVER_A_PID}-mlra44s2-0001"
    doc = {**instance_doc(skewed, NEVER_A_PID, real_now - 10 * TIMEOUT), "hostname": "another-host"}
    (root / "instances" / f"{skewed}.lock").write_bytes(pretty(doc))
    coord = Coordinator(DirectoryStore(root), clock=ManualClock(now_ms=real_now), env={})
    assert coord.cleanup_dead_instances() == []
    snap = snapshot(root, real_now)
    assert snap.instance(skewed).status is Status.DEAD
    assert [p.kind for p in snap.problems if skewed in p.where] == ["clock-skew"]


def test_truncated_live_instance_file_is_kept_and_reported(tmp_path: Path) -> None:
    """pi rewrites in place: a reader can catch a live instance's file half-written."""
    root = tmp_path / "runtime"
    real_now = time.time_ns() // 1_000_000
    build_fleet(root, real_now, real_now)
    full = (root / "instances" / f"{NEIGHBOUR}.lock").read_bytes()
    (root / "instances" / f"{NEIGHBOUR}.lock").write_bytes(full[: len(full) // 3])
    snap = snapshot(root, real_now)
    assert [(p.kind, p.where) for p in snap.problems] == [("corrupt", f"instances/{NEIGHBOUR}.lock")]
    assert snap.instance(NEIGHBOUR).status is Status.CORRUPT
    coord = Coordinator(DirectoryStore(root), clock=ManualClock(now_ms=real_now + 10 * TIMEOUT), env={})
    coord.register(heartbeat=False)
    coord.enhanced_heartbeat()
    assert (root / "instances" / f"{NEIGHBOUR}.lock").read_bytes() == full[: len(full) // 3]
    coord.unregister()


# ------------------------------------------------------------- edge cases
def test_blob_cap_boundary(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    doc = pretty(instance_doc(NEIGHBOUR, MY_PID, real_now))
    path = tmp_path / "instances" / f"{NEIGHBOUR}.lock"
    path.parent.mkdir(parents=True)
    path.write_bytes(doc + b" " * (MAX_BLOB_BYTES - len(doc)))  # exactly at the cap: read
    snap = snapshot(tmp_path, real_now)
    assert snap.problems == () and snap.instance(NEIGHBOUR).status is Status.ALIVE
    path.write_bytes(doc + b" " * (MAX_BLOB_BYTES - len(doc) + 1))  # one byte over: refused
    snap = snapshot(tmp_path, real_now)
    assert [(p.kind, p.where) for p in snap.problems] == [("unreadable", f"instances/{NEIGHBOUR}.lock")]


def test_deep_but_legal_unknown_keys_are_kept(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    doc = instance_doc(NEIGHBOUR, MY_PID, real_now)
    nested: Any = "bottom"
    for _ in range(60):
        nested = {"n": [nested]}
    raw = pretty({**doc, "deep": nested})
    assert InstanceInfo.from_json(raw).to_json() == raw
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / f"{NEIGHBOUR}.lock").write_bytes(raw)
    snap = snapshot(tmp_path, real_now)
    assert snap.problems == () and snap.instance(NEIGHBOUR).info.model_extra["deep"] == nested


def test_mode_000_file_with_valid_content(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    path = tmp_path / "instances" / f"{NEIGHBOUR}.lock"
    path.chmod(0)
    snap = snapshot(tmp_path, real_now)
    if IS_ROOT:  # root reads through permissions: the instance is simply there
        assert snap.problems == () and snap.instance(NEIGHBOUR).status is Status.ALIVE
    else:
        assert [(p.kind, p.where) for p in snap.problems] == [("unreadable", f"instances/{NEIGHBOUR}.lock")]
    coord = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=real_now), env={})
    coord.register(heartbeat=False)
    coord.enhanced_heartbeat()
    assert path.exists()
    coord.unregister()


def test_ignored_names_are_neither_shown_nor_touched(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    odd = []
    for space, (suffix, _) in SPACES.items():
        for name in (f".hidden{suffix}", f"notes{suffix}.bak", "README", f"x{suffix.upper()}", f".{NEIGHBOUR}{suffix}"):
            path = tmp_path / space / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"garbage")
            old = (real_now - 10 * TIMEOUT) * 1_000_000
            os.utime(path, ns=(old, old))
            odd.append(path)
    snap = snapshot(tmp_path, real_now)
    assert snap.problems == ()
    assert [v.instance_id for v in snap.instances] == [NEIGHBOUR]
    coord = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=real_now), env={})
    coord.register(heartbeat=False)
    coord.enhanced_heartbeat()
    coord.unregister()
    assert all(p.exists() for p in odd)


def test_sweep_removes_only_old_hidden_temp_files(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    stale = tmp_path / "instances" / f".{NEIGHBOUR}.lock.4242.deadbeef.tmp"
    fresh = tmp_path / "instances" / f".{NEIGHBOUR}.lock.4243.deadbeef.tmp"
    visible = tmp_path / "instances" / "looks-temporary.tmp"
    for path in (stale, fresh, visible):
        path.write_bytes(b"{")
    for path in (stale, visible):
        old = (real_now - 2 * TIMEOUT) * 1_000_000
        os.utime(path, ns=(old, old))
    coord = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=real_now), env={})
    coord.register(heartbeat=False)
    coord.enhanced_heartbeat()
    coord.unregister()
    assert not stale.exists() and fresh.exists() and visible.exists()


def test_symlinked_space_directory_is_read_safely(tmp_path: Path) -> None:
    """A space directory that is itself a symlink is listed (the OS follows it); its entries are read safely."""
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.json").write_bytes(b"{")
    shutil.rmtree(tmp_path / "queue-states")
    os.symlink(elsewhere, tmp_path / "queue-states")
    snap = snapshot(tmp_path, real_now)
    assert [(p.kind, p.where) for p in snap.problems] == [("corrupt", "queue-states/x.json")]
    assert snap.instance(NEIGHBOUR).status is Status.ALIVE


def test_coordinator_json_with_bom_is_not_used(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_bytes(b"\xef\xbb\xbf" + pretty({"totalMaxLlm": 8}))
    snap = SnapshotBuilder(DirectoryStore(tmp_path), clock=ManualClock(), env={}).build()
    assert snap.config.total_max_llm == 6 and [p.kind for p in snap.problems] == ["config"]


# ------------------------------------------------------ known core bugs
def _crash_with(tmp_path: Path, rel: bytes) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    with open(os.path.join(os.fsencode(tmp_path), rel), "wb") as handle:
        handle.write(b"garbage")
    snap = snapshot(tmp_path, real_now)
    assert snap.instance(NEIGHBOUR).status is Status.ALIVE
    assert len(snap.problems) == 1


def test_overlong_instance_name_is_reported_not_raised(tmp_path: Path) -> None:
    _crash_with(tmp_path, b"instances/" + b"x" * 245 + b".lock")


def test_overlong_stats_name_is_reported_not_raised(tmp_path: Path) -> None:
    _crash_with(tmp_path, b"pi-dash/stealing-stats/" + b"x" * 245 + b".json")


def test_non_utf8_instance_name_is_reported_not_raised(tmp_path: Path) -> None:
    _crash_with(tmp_path, b"instances/\xff\xfe.lock")


def test_overlong_name_does_not_stop_the_heartbeat_cleanup(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    (tmp_path / "instances" / ("y" * 245 + ".lock")).write_bytes(b"{")
    coord = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=real_now), env={})
    coord.register(heartbeat=False)
    try:
        coord.enhanced_heartbeat()
        assert coord.active_instance_count() == 2
    finally:
        coord.unregister()


@pytest.mark.parametrize("name", ["a b.json", "%41.json", "[bold]x.json", "sess-x%2fentry.json"])
def test_non_canonical_pi_dash_names_are_reported(tmp_path: Path, name: str) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    (tmp_path / "pi-dash" / "claims" / name).write_bytes(b"{")
    snap = snapshot(tmp_path, real_now)
    assert len(snap.problems) == 1


def test_dead_instance_with_a_long_name_does_not_break_cleanup(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    corrupt = tmp_path / "instances" / ("é" * 100 + ".lock")  # 205 bytes: a legal pi name, 600 chars %-encoded
    corrupt.write_bytes(b"{")
    old = (real_now - 10 * TIMEOUT) * 1_000_000
    os.utime(corrupt, ns=(old, old))
    coord = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=real_now), env={})
    coord.register(heartbeat=False)
    try:
        coord.enhanced_heartbeat()
        assert not corrupt.exists()
    finally:
        coord.unregister()


def _events_dir(root: Path) -> Path:
    path = root / "pi-dash" / "events"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_garbage_in_the_event_log_is_reported(tmp_path: Path) -> None:
    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    good = {"at": real_now, "kind": "429", "message": "rate limited", "instanceId": NEIGHBOUR}
    (_events_dir(tmp_path) / "000001.jsonl").write_bytes(b"garbage\n\xff\xfe\n" + json.dumps(good).encode() + b"\n{}\n")
    with open(_events_dir(tmp_path) / "000002.jsonl", "wb") as handle:
        handle.truncate(MAX_BLOB_BYTES + 1)  # sparse zeros: one unterminated "line"
    (_events_dir(tmp_path) / "000003.jsonl").mkdir()
    (_events_dir(tmp_path) / "notes.txt").write_bytes(b"x")
    snap = snapshot(tmp_path, real_now)
    assert [e.message for e in snap.events] == ["rate limited"]
    assert [(p.kind, p.where) for p in snap.problems] == [
        ("unreadable", "pi-dash/events/000003.jsonl"),
        ("corrupt", "pi-dash/events"),
    ]
    check_neighbours(snap, 8, active=1)


def test_fifo_event_segment_does_not_block_the_snapshot(tmp_path: Path) -> None:
    os.mkfifo(_events_dir(tmp_path) / "000001.jsonl")
    with deadline(1):
        snapshot(tmp_path, time.time_ns() // 1_000_000)


def test_fifo_event_segment_does_not_block_emitters(tmp_path: Path) -> None:
    os.mkfifo(_events_dir(tmp_path) / "000001.jsonl")
    coord = Coordinator(DirectoryStore(tmp_path), env={})
    coord.register(heartbeat=False)
    try:
        with deadline(1):
            coord.events.emit("test", "hello")
    finally:
        coord.unregister()


def test_symlinked_event_segment_is_not_followed(tmp_path: Path) -> None:
    os.symlink(PASSWD, _events_dir(tmp_path) / "000001.jsonl")
    snap = snapshot(tmp_path, time.time_ns() // 1_000_000)
    assert all("unreadable event line" not in p.message for p in snap.problems)
    assert any(p.kind == "unreadable" for p in snap.problems)


def test_a_held_lock_on_in_place_state_does_not_freeze_the_snapshot(tmp_path: Path) -> None:
    import fcntl

    real_now = time.time_ns() // 1_000_000
    build_fleet(tmp_path, real_now, real_now)
    fd = os.open(tmp_path / "pi-dash" / "rate-limits" / "openai.json", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer stopped (SIGSTOP, debugger) mid-update would
        with deadline(1):
            snapshot(tmp_path, real_now)
    finally:
        os.close(fd)
