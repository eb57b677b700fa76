"""Hostile records, names and event lines never take down a slot, a steal, the CLI or a snapshot.

Each example writes arbitrary records into a small healthy fleet: one field of a
valid record of some space (instances, queues, locks, every pi-dash space, the
event log) set to a hostile value (numbers at every magnitude, NaN and the
infinities, control, bidi and markup text, wrong types), a hostile dictionary
key (``grantsPerSecond``), a valid record under a hostile file name (not UTF-8,
long, non-ASCII), a queue whose owner id holds a NUL or 300 characters, and an
own entry with a hostile id.  Then it drives ``SnapshotBuilder.build``,
``pi-dash status``, ``status --json`` and ``limits`` (in process), ``llm_slot``,
``claim_own``, ``safe_steal_work`` and ``enhanced_heartbeat``, and checks:

* no exception escapes any of them (each call is counted; a module summary line
  reports "N hostile inputs, E escapes");
* every bad record is listed among the snapshot's problems, by file, and only
  the bad ones: the expectation for a number is computed here from the range
  its field documents (times in 2000-2199, counts 0..2**53, ...), not from the
  validator under test;
* the healthy records beside them still work: the neighbour is alive, its queue
  is still stolen from, the slot is granted, the expired lock is cleaned up.

``PI_DASH_HOSTILE_EXAMPLES`` (default 80) sets the examples per test; CI runs
the default, a longer hunt is ``PI_DASH_HOSTILE_EXAMPLES=2000 pytest tests/test_hostile_records.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.backoff import BackoffBoard
from core.clock import ManualClock
from core.coordinator import Coordinator
from core.models import (
    BroadcastQueueState,
    ControlRequest,
    CorruptRecord,
    DistributedLock,
    FleetEvent,
    InstanceInfo,
    InstanceParallelism,
    ProviderRateState,
    Record,
    SharedBackoff,
    StealClaim,
    StealingStats,
)
from core.models._base import MAX_DURATION_MS, MAX_EPOCH_MS, MIN_EPOCH_MS
from core.provider_config import load_settings, parse_settings
from core.snapshot import SnapshotBuilder, Status
from core.store import DirectoryStore
from core.store.directory import encode_key
from pi_dashboard import cli
from tests.helpers import write_dated
from tests.test_hostile_files import NEIGHBOUR, NEIGHBOUR_ENTRIES, iso, lock_doc, pretty, valid_doc

EXAMPLES = int(os.environ.get("PI_DASH_HOSTILE_EXAMPLES", "80"))
COUNTS: Counter[str] = Counter()
T = TypeVar("T")
FAST = {"crossInstance": {"providers": {"openai": {"requestsPerMinute": 6_000_000, "burst": 100_000}}}}

# space -> (suffix, verbatim, the key the valid document is planted under)
SPACES = {
    "instances": (".lock", True, "hostile-record"),
    "queue-states": (".json", True, "hostile-record"),
    "locks": (".lock", True, "hostile-record"),
    "pi-dash/stealing-stats": (".json", False, "hostile-record"),
    "pi-dash/claims": (".json", False, "hostile-record"),
    "pi-dash/parallelism": (".json", False, "hostile-record"),
    "pi-dash/backoff": (".json", False, "openai:gpt-4o"),
    "pi-dash/rate-limits": (".json", False, "openai"),  # the provider every slot here draws from
    "pi-dash/control": (".json", False, "hostile-record"),
}
MODEL = "openai:gpt-4o"  # the key of the parallelism document's one model
GRANT = "*grant*"  # stands for the valid grantsPerSecond key of the moment

# space -> (path to a field, the kind of value it documents)
FIELDS: dict[str, list[tuple[tuple[str | int, ...], str]]] = {
    "instances": [
        (("lastHeartbeat",), "iso"), (("startedAt",), "iso"), (("pid",), "pid"), (("pendingTaskCount",), "count"),
        (("avgLatencyMs",), "duration"), (("processStartedAt",), "epoch"), (("drainingSince",), "epoch"),
        (("activeModels", 0, "since"), "iso"), (("cwd",), "text"), (("instanceId",), "id"),
    ],
    "queue-states": [
        (("timestamp",), "iso"), (("pendingTaskCount",), "count"), (("activeOrchestrations",), "count"),
        (("avgLatencyMs",), "duration"), (("stealableEntries", 0, "enqueuedAt"), "iso"),
        (("stealableEntries", 0, "estimatedDurationMs"), "duration"), (("stealableEntries", 0, "estimatedRounds"), "count"),
        (("stealableEntries", 0, "id"), "text"), (("claimableEntries", 0, "id"), "text"),
        (("claimableEntries", 0, "enqueuedAt"), "iso"), (("instanceId",), "id"),
    ],
    "locks": [(("acquiredAt",), "epoch"), (("expiresAt",), "epoch"), (("lockId",), "id"), (("resource",), "text")],
    "pi-dash/stealing-stats": [
        (("lastSuccessAt",), "epoch"), (("lastAttemptAt",), "epoch"), (("totalAttempts",), "count"),
        (("successfulSteals",), "count"), (("failedAttempts",), "count"), (("avgLatencyMs",), "duration"),
        (("latencySamples", 0), "duration"), (("instanceId",), "text"),
    ],
    "pi-dash/claims": [(("claimedAt",), "epoch"), (("ownerInstanceId",), "text"), (("entryId",), "text")],
    "pi-dash/parallelism": [
        (("updatedAt",), "epoch"), (("models", MODEL, "currentParallelism"), "count"),
        (("models", MODEL, "lastAdjustedAt"), "never"), (("models", MODEL, "recentErrors", 0, "timestamp"), "epoch"),
        (("models", MODEL, "backoffUntil"), "epoch"), (("models", MODEL, "crossInstanceMultiplier"), "factor"),
        (("models", MODEL, "avgResponseMs"), "duration"), (("models", MODEL, "recommendedBackoffMs"), "duration"),
    ],
    "pi-dash/backoff": [(("until",), "never"), (("recent429s", 0, "at"), "epoch"), (("recent429s", 0, "retryAfterMs"), "duration")],
    "pi-dash/rate-limits": [
        (("requestsPerMinute",), "rate"), (("effectiveRequestsPerMinute",), "rate"), (("burst",), "burst"),
        (("totalGrants",), "count"), (("last429At",), "epoch"), (("lastChangeAt",), "epoch"),
        (("buckets", "pool", "tat"), "tat"), (("grantsPerSecond", GRANT), "count"), (("grantsPerSecond",), "grant-key"),
    ],
    "pi-dash/control": [
        (("requestedAt",), "epoch"), (("acknowledgedAt",), "epoch"), (("completedAt",), "epoch"), (("requestedBy",), "text"),
    ],
    "events": [(("at",), "epoch"), (("kind",), "text"), (("message",), "text"), (("instanceId",), "optional-text")],
}

# ------------------------------------------------------------------ values
MAGNITUDES = st.sampled_from(
    [0, -0.0, 1, -1, 0.5, 1e-300, 5e-324, 1e17, 1e21, 1e300, 2**31, 2**53, 2**53 + 1, 2**63, 2**64, -(2**63),
     MIN_EPOCH_MS - 1, MIN_EPOCH_MS, MAX_EPOCH_MS - 1, MAX_EPOCH_MS, MAX_DURATION_MS, MAX_DURATION_MS + 1, 1e9, 1e9 + 1, 1e-3]
)
NUMBERS = st.one_of(
    MAGNITUDES,
    st.integers(-(2**70), 2**70),
    st.integers(MIN_EPOCH_MS - 10**6, MAX_EPOCH_MS + 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=MIN_EPOCH_MS, max_value=MAX_EPOCH_MS, allow_nan=False),
)
HOSTILE_CHARS = st.sampled_from(
    ["\x00", "\x1b[2J", "\x1b]0;owned\x07", "\x07", "\r", "\n", "\u202e", "\u2066", "\u200b", "\ufeff", "[/]", "[bold]",
     "[link=x]", "%", "/", "..", "~", "日本語", "é", "\U0001f600", "\x7f", "\u0085"]
)
TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(HOSTILE_CHARS | st.text(max_size=3), max_size=6).map("".join),
    st.just("x" * 300),
    st.just("日本語" * 7 + "日本"),
)
ISO = st.integers(1, 9999).flatmap(
    lambda year: st.tuples(st.just(year), st.integers(1, 12), st.integers(1, 28), st.integers(0, 86_399_999))
).map(lambda t: (t[0], f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3] // 3_600_000:02d}:{t[3] // 60_000 % 60:02d}:{t[3] // 1000 % 60:02d}.{t[3] % 1000:03d}Z"))
OTHER = st.one_of(st.none(), st.booleans(), st.just([]), st.just({}), st.just([1]), st.just({"[/]": 1}))


@dataclass(frozen=True)
class Value:
    """A hostile value and, where its field's documented range decides it, whether it is acceptable."""

    value: Any
    acceptable: bool | None  # None: the range says nothing (text in a number field, a number as a time...)


def _number_ok(kind: str, v: float) -> bool | None:
    finite = math.isfinite(v)
    integral = isinstance(v, int) or (finite and float(v).is_integer())
    ok = {
        "epoch": integral and MIN_EPOCH_MS <= v < MAX_EPOCH_MS,
        "never": integral and (v == 0 or MIN_EPOCH_MS <= v < MAX_EPOCH_MS),
        "tat": finite and (v == 0 or MIN_EPOCH_MS <= v < MAX_EPOCH_MS),
        "count": integral and 0 <= v <= 2**53,
        "duration": finite and 0 <= v <= MAX_DURATION_MS,
        "factor": finite and 0 <= v <= 2**53,
        "rate": finite and 1e-3 <= v <= 1e9,
        "burst": integral and 1 <= v <= 10**9,
        "pid": integral and 0 <= v <= 2**31 - 1,
    }.get(kind)
    return ok


@st.composite
def values(draw, kind: str) -> Value:
    if kind in ("text", "optional-text", "id"):
        text = draw(TEXT)
        if draw(st.integers(0, 9)) == 0:
            other = draw(NUMBERS | OTHER)
            return Value(other, other is None and kind == "optional-text")  # null: the field left out
        return Value(text, bool(text) or kind != "id")
    if kind == "iso":
        if draw(st.booleans()):
            year, text = draw(ISO)
            return Value(text, 2000 <= year < 2200)
        return Value(draw(NUMBERS | TEXT | OTHER), None)
    if kind == "grant-key":  # a key of grantsPerSecond: an epoch second in the years 2000-2199
        number = draw(st.integers(-(10**15), 10**15) | st.integers(MIN_EPOCH_MS // 1000 - 5, MAX_EPOCH_MS // 1000 + 5))
        if draw(st.booleans()):
            return Value(str(number), 0 <= number and MIN_EPOCH_MS // 1000 <= number < MAX_EPOCH_MS // 1000)
        key = draw(TEXT)
        return Value(key, None if key.isascii() and key.isdigit() else False)
    value = draw(NUMBERS | TEXT | OTHER)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Value(value, None)
    return Value(value, _number_ok(kind, value))


# ------------------------------------------------------------------ fleet
def _set(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _valid(space: str, now: int) -> dict[str, Any]:
    doc = valid_doc(space, now) if space != "events" else {"at": now, "kind": "steal", "message": "ok", "instanceId": NEIGHBOUR}
    if space == "instances":
        doc["drainingSince"] = now
        doc["processStartedAt"] = now - 5_000
        doc["avgLatencyMs"] = 12.5
    if space == "queue-states":
        doc["avgLatencyMs"] = 3
        doc["stealableEntries"][0].update(estimatedDurationMs=1_500, estimatedRounds=2)
        doc["claimableEntries"] = json.loads(json.dumps(doc["stealableEntries"]))
    if space == "pi-dash/parallelism":
        doc["models"][MODEL].update(lastAdjustedAt=now, backoffUntil=now + 1_000, avgResponseMs=800, recommendedBackoffMs=0)
    if space == "pi-dash/backoff":
        doc["until"] = now - 1  # over: the slots here are not held back by the valid record
        doc["recent429s"][0]["retryAfterMs"] = 1_000
    if space == "pi-dash/rate-limits":
        doc.update(last429At=now - 1_000, lastChangeAt=now - 1_000)
    if space == "pi-dash/control":
        doc.update(acknowledgedAt=now, completedAt=now)
    return doc


@dataclass(frozen=True)
class Mutation:
    space: str
    path: tuple[str | int, ...]
    kind: str
    value: Value


@st.composite
def mutations(draw) -> Mutation:
    space = draw(st.sampled_from(sorted(FIELDS)))
    path, kind = draw(st.sampled_from(FIELDS[space]))
    return Mutation(space, path, kind, draw(values(kind)))


def _document(mutation: Mutation, now: int) -> bytes:
    doc = _valid(mutation.space, now)
    if mutation.kind == "grant-key":
        doc["grantsPerSecond"] = {mutation.value.value: 1}
    else:
        path = tuple(str(now // 1000) if part == GRANT else part for part in mutation.path)
        if path[0] == "grantsPerSecond":
            doc["grantsPerSecond"] = {path[1]: 1}
        _set(doc, path, mutation.value.value)
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def _where(space: str) -> str:
    _, _, key = SPACES[space]
    return f"{space}/{key}{SPACES[space][0]}"


def _path(root: Path, space: str) -> Path:
    suffix, verbatim, key = SPACES[space]
    return root / space / ((key if verbatim else encode_key(key)) + suffix)


HOSTILE_IDS = st.one_of(
    st.just("sess-\x00x"), st.just("s" * 300), st.just("日本語" * 7 + "日本"), st.just("sess/../x"), st.just(".hidden"),
    st.just("\u202egnp.exe"), st.just("[/]"), st.just(""), TEXT,
)
NAMES = st.binary(min_size=1, max_size=245).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


@dataclass(frozen=True)
class Fleet:
    root: Path
    now: int
    coordinator: Coordinator
    config: Path


@contextlib.contextmanager
def fleet() -> Iterator[Fleet]:
    """A neighbour (alive, busy, stealable), its expired steal lock, and our registered coordinator."""
    root = Path(tempfile.mkdtemp(prefix="pi-hostile-records-"))
    now = time.time_ns() // 1_000_000
    try:
        for space in ("instances", "queue-states"):
            (root / space).mkdir(parents=True)
        _owner(root, f"{NEIGHBOUR}.lock", NEIGHBOUR, now)
        queue = valid_doc("queue-states", now)
        queue["instanceId"] = NEIGHBOUR
        for entry in queue["stealableEntries"]:
            entry["instanceId"] = NEIGHBOUR
        queue["claimableEntries"] = queue["stealableEntries"]  # a core owner: thieves that claim may take them
        (root / "queue-states" / f"{NEIGHBOUR}.json").write_bytes(pretty(queue))
        (root / "locks").mkdir()
        expired = lock_doc("gone", now - 120_000)
        write_dated(root / "locks" / "steal_gone.lock", pretty(expired), expired["acquiredAt"])
        config = root / "config.json"
        config.write_bytes(pretty(FAST))
        coordinator = Coordinator(DirectoryStore(root), clock=ManualClock(now_ms=now), env={}, settings=parse_settings(FAST, "t"))
        coordinator.register(session_id="ffffffffhostile", cwd="/w", heartbeat=False)
        try:
            yield Fleet(root, now, coordinator, config)
        finally:
            coordinator.unregister()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _owner(root: Path, filename: str, instance_id: str, now: int) -> None:
    """A live ``core`` instance (it honours claims, so core thieves take its entries)."""
    doc = valid_doc("instances", now) | {"instanceId": instance_id, "pid": os.getpid(), "honoursClaims": True}
    (root / "instances" / filename).write_bytes(pretty(doc))


def drive(name: str, call: Callable[[], T]) -> T:
    """Run one entry point; an exception is counted as an escape (and fails the example)."""
    COUNTS["calls"] += 1
    try:
        return call()
    except BaseException:
        COUNTS["escapes"] += 1
        raise


def cli_run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    line = f"hostile records: {COUNTS['inputs']} hostile inputs in {COUNTS['examples']} examples, {COUNTS['calls']} calls, {COUNTS['escapes']} escapes"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    report = os.environ.get("PI_DASH_HOSTILE_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(line + "\n")


PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ------------------------------------------------------------------ tests
@PROPERTY
@given(
    changed=st.lists(mutations(), min_size=1, max_size=4, unique_by=lambda m: m.space if m.space != "events" else id(m)),
    names=st.lists(st.tuples(st.sampled_from(sorted(SPACES)), NAMES), max_size=2),
    owners=st.lists(HOSTILE_IDS, max_size=2),
    entry_id=HOSTILE_IDS.filter(bool),
)
def test_hostile_records_cost_only_themselves(
    changed: list[Mutation], names: list[tuple[str, bytes]], owners: list[str], entry_id: str
) -> None:
    COUNTS["examples"] += 1
    COUNTS["inputs"] += len(changed) + len(names) + len(owners) + 1
    with fleet() as f:
        root, now, me = f.root, f.now, f.coordinator
        bad_events = 0
        good_events = []
        expected: dict[str, bool] = {}  # where -> whether the record there is bad
        for mutation in changed:
            raw = _document(mutation, now)
            if mutation.space == "events":
                events = root / "pi-dash" / "events"
                events.mkdir(parents=True, exist_ok=True)
                with open(events / "000001.jsonl", "ab") as log:
                    log.write(json.dumps(json.loads(raw), ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
                try:
                    good_events.append(FleetEvent.from_json(raw).message)
                    ok = True
                except CorruptRecord:
                    bad_events += 1
                    ok = False
            else:
                path = _path(root, mutation.space)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(raw)
                ok = not _rejects(mutation.space, raw)
                expected[_where(mutation.space)] = not ok
            if mutation.value.acceptable is not None:
                assert ok is mutation.value.acceptable, (mutation, "accepted" if ok else "rejected")
        for space, name in names:
            suffix = SPACES[space][0].encode()
            (root / space).mkdir(parents=True, exist_ok=True)
            with open(os.path.join(os.fsencode(root / space), b"n-" + name + suffix), "wb") as handle:
                handle.write(pretty(_valid(space, now)))
        for n, owner in enumerate(owners):  # busier than the neighbour: tried first
            queue = valid_doc("queue-states", now) | {"instanceId": owner, "pendingTaskCount": 9}
            queue["claimableEntries"] = queue["stealableEntries"]
            (root / "queue-states" / f"hostile-owner-{n}.json").write_bytes(pretty(queue))
            _owner(root, f"hostile-owner-{n}.lock", owner, now)

        snap = drive("snapshot", lambda: SnapshotBuilder(DirectoryStore(root), clock=ManualClock(now_ms=now), env={}).build())
        listed = {p.where for p in snap.problems if p.kind in ("corrupt", "unreadable")}
        for where, bad in expected.items():
            assert (where in listed) is bad, (where, bad, snap.problems)
        if bad_events:
            assert any(p.where == "pi-dash/events" and p.message.startswith(f"{bad_events} unreadable") for p in snap.problems)
        assert [e.message for e in snap.events] == good_events
        assert snap.instance(NEIGHBOUR).status is Status.ALIVE
        assert any(q.instance_id == NEIGHBOUR for q in snap.queues)
        json.dumps(snap.to_dict())

        assert drive("status", lambda: cli_run("status", "--root", str(root)))[0] == 0
        code, out = drive("status --json", lambda: cli_run("status", "--root", str(root), "--json"))
        assert code == 0 and json.loads(out)["figures"]["activeCount"] >= 2
        code, out = drive("limits", lambda: cli_run("limits", "--root", str(root), "--config", str(f.config), "--json"))
        assert code == 0 and any(p["provider"] == "openai" for p in json.loads(out)["providers"])

        def slot() -> str | None:
            with me.llm_slot("openai", "o3", timeout=30) as held:
                return held.outcome
        drive("llm_slot", slot)
        drive("backoff", lambda: BackoffBoard(DirectoryStore(root), "x").current("openai", "gpt-4o"))

        assert drive("claim_own", lambda: me.claim_own(entry_id)) is True
        assert drive("claimed_entries", me.claimed_entries) == {entry_id}
        assert drive("claim_own again", lambda: me.claim_own(entry_id)) is False

        stolen = []
        for _ in range(20):
            work = drive("safe_steal_work", me.safe_steal_work)
            if work is None:
                break
            stolen.append((work.owner_instance_id, work.entry.id))
        assert {(NEIGHBOUR, e) for e in NEIGHBOUR_ENTRIES} <= set(stolen), stolen
        assert {(owner, "entry-1") for owner in owners if owner} <= set(stolen), stolen  # hostile ids are no exception

        failures = drive("enhanced_heartbeat", me.enhanced_heartbeat)
        assert failures == []
        assert not (root / "locks" / "steal_gone.lock").exists()  # the step after any hostile instance still ran


MODELS: dict[str, type[Record]] = {
    "instances": InstanceInfo,
    "queue-states": BroadcastQueueState,
    "locks": DistributedLock,
    "pi-dash/stealing-stats": StealingStats,
    "pi-dash/claims": StealClaim,
    "pi-dash/parallelism": InstanceParallelism,
    "pi-dash/backoff": SharedBackoff,
    "pi-dash/rate-limits": ProviderRateState,
    "pi-dash/control": ControlRequest,
}


def _rejects(space: str, raw: bytes) -> bool:
    """Whether the store boundary refuses this document for ``space``."""
    try:
        MODELS[space].from_json(raw)
    except CorruptRecord:
        return True
    return False


@PROPERTY
@given(
    rpm=NUMBERS | OTHER,
    burst=NUMBERS | OTHER,
    setting=st.sampled_from(["totalMaxLlm", "heartbeatIntervalMs", "heartbeatTimeoutMs"]),
    number=NUMBERS | OTHER | TEXT,
)
def test_hostile_config_numbers_are_problems_and_defaults_stay(rpm: Any, burst: Any, setting: str, number: Any) -> None:
    """``requestsPerMinute: 1e-300`` and the like are config problems; the default stays
    and ``llm_slot`` never raises (no OverflowError); coordinator.json likewise."""
    COUNTS["examples"] += 1
    COUNTS["inputs"] += 3
    root = Path(tempfile.mkdtemp(prefix="pi-hostile-config-"))
    try:
        config = root / "config.json"
        doc = {"crossInstance": {"providers": {"openai": {"requestsPerMinute": rpm, "burst": burst}}}}
        config.write_bytes(json.dumps(doc, allow_nan=True).encode())
        (root / "coordinator.json").write_bytes(json.dumps({setting: number}, allow_nan=True).encode("utf-8", "surrogatepass"))
        loaded = drive("load_settings", lambda: load_settings(config))
        rpm_ok = isinstance(rpm, (int, float)) and not isinstance(rpm, bool) and math.isfinite(rpm) and 1e-3 <= rpm <= 1e9
        burst_ok = isinstance(burst, int) and not isinstance(burst, bool) and 1 <= burst <= 10**9
        limit = loaded.limit("openai")
        if rpm_ok and burst_ok:
            assert (limit.requests_per_minute, limit.burst) == (rpm, burst) and not loaded.problems
        else:
            assert (limit.requests_per_minute, limit.burst) == (500, 100) and loaded.problems
        coordinator = drive("Coordinator", lambda: Coordinator(DirectoryStore(root), env={}, settings=loaded))
        coordinator.register(heartbeat=False)
        try:
            def slot() -> None:
                with coordinator.llm_slot("openai", "gpt-4o", timeout=5):  # the first is always within the burst
                    pass
            drive("llm_slot", slot)
            drive("enhanced_heartbeat", coordinator.enhanced_heartbeat)
        finally:
            coordinator.unregister()
        snap = drive("snapshot", lambda: SnapshotBuilder(DirectoryStore(root), env={}).build())
        value = coordinator.config.model_dump(by_alias=True)[setting]
        if value != number:
            assert any(p.kind == "config" and setting in p.message for p in snap.problems)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ the cases, one by one
def test_config_files_that_are_no_regular_files_never_hang_or_grow(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(64 << 20)
    for path, reason in [(fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"), (tmp_path, "not a regular file"),
                         (big, "larger than")]:
        started = time.monotonic()
        loaded = load_settings(path)
        assert time.monotonic() - started < 2
        assert loaded.limit("openai").requests_per_minute == 500 and reason in loaded.problems[0]


def test_pi_config_naming_a_fifo_does_not_hang_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("PI_CONFIG", str(fifo))
    (tmp_path / "runtime").mkdir()
    code, out = cli_run("limits", "--root", str(tmp_path / "runtime"), "--json")
    assert code == 0 and "not a regular file" in json.loads(out)["problems"][0]


def test_a_name_that_is_not_utf8_never_stops_the_cleanup(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    store = DirectoryStore(tmp_path)
    store.ensure_layout()
    dead = os.path.join(os.fsencode(tmp_path), b"instances", b"sess-\xff\xfe-pid4198546-x.lock")
    doc = valid_doc("instances", now - 600_000) | {"pid": 4_198_546}
    with open(dead, "wb") as handle:
        handle.write(pretty(doc))
    os.utime(dead, ns=((now - 600_000) * 10**6,) * 2)
    write_dated(tmp_path / "locks" / "steal_gone.lock", pretty(lock_doc("gone", now - 120_000)), now - 120_000)
    coordinator = Coordinator(store, clock=ManualClock(now_ms=now), env={})
    coordinator.register(heartbeat=False)
    try:
        assert coordinator.enhanced_heartbeat() == []
    finally:
        coordinator.unregister()
    assert not os.path.exists(dead) and not (tmp_path / "locks" / "steal_gone.lock").exists()


def test_a_failing_step_is_reported_and_the_next_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns() // 1_000_000
    coordinator = Coordinator(DirectoryStore(tmp_path), clock=ManualClock(now_ms=now), env={})
    coordinator.register(heartbeat=False)
    write_dated(tmp_path / "locks" / "steal_gone.lock", pretty(lock_doc("gone", now - 120_000)), now - 120_000)

    def broken() -> list[str]:
        raise RuntimeError("a bug in one step")

    monkeypatch.setattr(coordinator, "cleanup_dead_instances", broken)
    monkeypatch.setattr(coordinator, "cleanup_queue_states", broken)
    try:
        failures = coordinator.enhanced_heartbeat()
    finally:
        coordinator.unregister()
    assert failures == ["dead instances: RuntimeError: a bug in one step", "queue states: RuntimeError: a bug in one step"]
    assert not (tmp_path / "locks" / "steal_gone.lock").exists()
