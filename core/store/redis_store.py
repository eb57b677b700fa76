"""The Redis backend: the same Store, for fleets that span machines.

Layout under a configurable prefix ``P`` (default ``pi-dash``):

* ``P:e:{space}:{key}``: an entry's bytes (the same JSON as on disk);
* ``P:v:{space}``: a hash of key -> version, bumped by every change; it is
  also the space's index, so listing a space never scans the keyspace;
* ``P:m:{space}``: a hash of key -> when it last changed (the server's clock,
  epoch ms), which cleanup uses as a file's modification time;
* ``P:config``: the fleet's ``coordinator.json``;
* ``P:events``: the event log, a stream capped near ``EVENTS_KEPT`` entries;
* ``P:changes``: a channel announcing every change as ``{space}\\n{key}``, so
  watchers (the dashboard) need no polling.

Every mutation is one Lua script (set + version + publish atomically);
compare-and-swap and compare-and-delete compare the exact bytes server-side.
``update`` is optimistic: read, compute, then swap only if unchanged.

Restarts: a lock or claim that only lived in a Redis that restarted without
persistence is gone, and granting it again could give it to two holders.  Run
Redis with ``appendonly yes`` (the tests use ``appendfsync always``).  Without
it, the store refuses every create-if-absent (locks, claims) until the server
has been up for ``RESTART_GRACE_MS``, longer than any lock's TTL, so whoever
held a lock before the restart has lost it by then.

A restart is noticed by the create itself, not by a timer: the server holds a
random token (``P:server``) that this store adopted when it last looked at the
server (``INFO``: uptime, persistence), and the create script refuses to run
unless the token is still there; so does the swap script when an ``update``
creates its entry (a fencing counter drawn for the first time, or again after
the server lost it).  A server that lost its data lost the token, so the first
create on it, on whatever connection, after whatever error, makes the store
look again before anything is granted.  A fencing counter (``Space.monotonic``)
is not started afresh during the grace either: tokens drawn before the restart
may lie ahead of the clock the counter restarts from.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from .base import ALL_SPACES, REFUSED, Blob, EntryUnreadable, Space, Store, StoreError, StoreUnavailable, Updater, Version
from .choice import ENV_REDIS, redis_url  # noqa: F401  (re-exported: their old home)

DEFAULT_PREFIX = "pi-dash"
EVENTS_KEPT = 20_000
RESTART_GRACE_MS = 60_000
MAX_BLOB_BYTES = 8 * 1024 * 1024
LAST_SEEN_KEPT = 1024

T = TypeVar("T")

# The scripts live in lua/ beside this module (package data), each starting with its
# KEYS and ARGV unpacked into named locals; every mutation script is preceded by
# lua/common.lua (touch, announce, forget).
_MUTATIONS = ("write", "create", "replace_if", "swap", "reserve_rate", "delete_if", "delete")


def _lua(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _load_scripts() -> dict[str, _Script]:
    common = _lua("common")
    scripts = {name: _Script(common + "\n" + _lua(name)) for name in _MUTATIONS}
    scripts["adopt_token"] = _Script(_lua("adopt_token"))
    return scripts


_SPACES = {space.name: space for space in ALL_SPACES}


URL_SCHEMES = ("redis", "rediss", "unix")


class RedisStore(Store):
    """A :class:`Store` on a Redis server (``redis://host:port/db?prefix=name``)."""

    def __init__(self, url: str, prefix: str | None = None, *, read_only: bool = False) -> None:
        self.read_only = read_only  # then no script runs and nothing is set, added or deleted
        parts = urlsplit(url)
        if parts.scheme not in URL_SCHEMES:
            raise StoreUnavailable(f"{url!r} is not a Redis URL (expected redis://host:port/db, rediss://... or unix://...)")
        query = parse_qs(parts.query)
        self.url = url
        self.prefix = prefix or query.get("prefix", [DEFAULT_PREFIX])[0]
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
        clean_url = url.split("?", 1)[0]
        self._client = redis.Redis.from_url(
            clean_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=10,
        )
        self._channel = f"{self.prefix}:changes"
        self._scripts = _SCRIPTS
        self._server_lock = threading.Lock()
        self._token_key = f"{self.prefix}:server".encode()
        self._server_token: bytes | None = None  # see "Restarts" above
        self._grants_frozen_until = 0.0
        self._last_seen: dict[bytes, bytes | None] = {}  # update()'s guesses of current values
        self._idle: list[AbstractConnection] = []  # the script connections (see _eval)
        self._idle_pid = os.getpid()

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        return f"redis {self._where} prefix {self.prefix}" + (" (read-only)" if self.read_only else "")

    # ------------------------------------------------------------- helpers
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"redis at {self._where} is unreachable: {exc}") from None
        except redis.RedisError as exc:
            raise StoreError(f"redis at {self._where}: {exc}") from None

    def _call(self, action: Callable[[], T]) -> T:
        with self._errors():
            return action()

    def _entry(self, space: Space, key: str) -> str:
        if not key:
            raise StoreError("empty key")
        return f"{self.prefix}:e:{space.name}:{key}"

    def _versions_key(self, space: Space) -> str:
        return f"{self.prefix}:v:{space.name}"

    def _modified_key(self, space: Space) -> str:
        return f"{self.prefix}:m:{space.name}"

    def _keys(self, space: Space, key: str) -> list[bytes]:
        """A script's KEYS, encoded as redis-py would (UTF-8, strict)."""
        return [self._entry(space, key).encode(), self._versions_key(space).encode(), self._modified_key(space).encode()]

    def _mutate(self, script: str, space: Space, key: str, data: bytes = b"", expected: bytes | None = None) -> Any:
        """Run one mutation script: ARGV is data, field[, expected]."""
        field = key.encode()
        return self._eval(script, self._keys(space, key), [data, field] if expected is None else [data, field, expected])

    def _eval(self, name: str, keys: list[bytes], args: list[bytes]) -> Any:
        """EVALSHA (every script mutates) on a connection of this store's own, with redis-py's retries.

        Scripts are the hot path (every lock, claim and rate decision), and on
        a local server redis-py's command path costs more than the round trip
        itself: a pool checkout polls the socket and checks the pid twice,
        then records metrics.  Here a connection is popped from a plain list
        (atomic under the GIL, so threads never share one) and put back only
        after a complete exchange; any failure drops it.
        """
        self._writable(f"script {name}")
        script = self._scripts[name]
        command = _pack(b"EVALSHA", script.sha, b"%d" % len(keys), *keys, *args)
        conn = self._connection()

        def exchange() -> Any:
            conn.send_packed_command([command])
            try:
                return conn.read_response()
            except redis.exceptions.NoScriptError:  # a new or restarted server
                conn.send_packed_command([_pack(b"SCRIPT", b"LOAD", script.body)])
                conn.read_response()
                conn.send_packed_command([command])
                return conn.read_response()

        with self._errors():
            try:
                reply = conn.retry.call_with_retry(exchange, lambda _: conn.disconnect())
            except BaseException:
                conn.disconnect()
                raise
        self._idle.append(conn)
        return reply

    def _connection(self) -> AbstractConnection:
        if self._idle_pid != os.getpid():  # forked: the parent's sockets are not ours
            self._idle, self._idle_pid = [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            pool = self._client.connection_pool
            return pool.connection_class(**pool.connection_kwargs)

    # ------------------------------------------------------------- reading
    def check(self) -> None:
        self._call(lambda: self._client.info("server"))

    def _observe_server(self) -> None:
        """Adopt the server's token, then judge the server (see "Restarts" above).

        In this order: if the server restarts between the two steps, ``INFO``
        already shows the new server's short uptime; if after, the token is gone
        and the next create looks again.
        """
        token = self._eval("adopt_token", [self._token_key], [secrets.token_hex(8).encode()])
        info = self._call(lambda: self._client.info("server", "persistence"))
        uptime_ms = int(info.get("uptime_in_seconds", 0)) * 1000
        persistent = bool(info.get("aof_enabled"))
        with self._server_lock:
            if not persistent and uptime_ms < RESTART_GRACE_MS:
                frozen_until = time.monotonic() + (RESTART_GRACE_MS - uptime_ms) / 1000
                self._grants_frozen_until = max(self._grants_frozen_until, frozen_until)
            self._server_token = token

    def now_ms(self) -> int:
        """The server's clock (``TIME``), which stamps every entry's modification time."""
        seconds, micros = self._call(lambda: self._client.time())
        return int(seconds) * 1000 + int(micros) // 1000

    def versions(self, space: Space) -> dict[str, Version]:
        raw = self._call(lambda: self._client.hgetall(self._versions_key(space)))
        return {k.decode("utf-8", "surrogateescape"): int(v) for k, v in raw.items()}

    def keys(self, space: Space) -> list[str]:
        raw = self._call(lambda: self._client.hkeys(self._versions_key(space)))
        return [k.decode("utf-8", "surrogateescape") for k in raw]

    def read(self, space: Space, key: str) -> Blob | None:
        entry = self._entry(space, key)

        def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(entry)
            pipe.hget(self._versions_key(space), key)
            pipe.hget(self._modified_key(space), key)
            return pipe.execute()

        data, version, modified = self._call(fetch)
        if data is None:
            return None
        return self._blob(key, data, version, modified)

    @staticmethod
    def _blob(key: str, data: bytes, version: bytes | None, modified: bytes | None) -> Blob:
        if len(data) > MAX_BLOB_BYTES:
            raise EntryUnreadable(key, f"{len(data)} bytes is larger than the {MAX_BLOB_BYTES} allowed")
        token = int(version) if version is not None else ("unversioned", len(data), hash(data))
        return Blob(key, data, token, int(modified) if modified is not None else 0)

    def read_all(self, space: Space) -> dict[str, Blob | EntryUnreadable]:
        def fetch() -> tuple[list[bytes], list[Any], list[Any], list[Any]]:
            versions = self._client.hgetall(self._versions_key(space))
            names = list(versions)
            if not names:
                return [], [], [], []
            pipe = self._client.pipeline(transaction=False)
            pipe.mget([self._entry(space, n.decode("utf-8", "surrogateescape")) for n in names])
            pipe.hmget(self._modified_key(space), names)
            values, modified = pipe.execute()
            return names, [versions[n] for n in names], values, modified

        names, versions, values, modified = self._call(fetch)
        found: dict[str, Blob | EntryUnreadable] = {}
        for name, version, data, stamp in zip(names, versions, values, modified):
            key = name.decode("utf-8", "surrogateescape")
            if data is None:
                continue
            try:
                found[key] = self._blob(key, data, version, stamp)
            except EntryUnreadable as exc:
                found[key] = exc
        return found

    def read_config(self) -> bytes | None:
        return self._call(lambda: self._client.get(f"{self.prefix}:config"))

    def write_config(self, data: bytes) -> None:
        """Set the fleet's ``coordinator.json`` (there is no file to edit on Redis)."""
        self._writable("setting the config")
        self._call(lambda: self._client.set(f"{self.prefix}:config", data))

    # ------------------------------------------------------------- writing
    def write(self, space: Space, key: str, data: bytes, *, durable: bool = False) -> None:
        self._mutate("write", space, key, data)

    def create(self, space: Space, key: str, data: bytes) -> bool:
        return self.create_or_read(space, key, data) is None

    def create_or_read(self, space: Space, key: str, data: bytes) -> Blob | None:
        """One round trip: ``None`` if created, else what holds the key."""
        self._writable(f"create of {space.name}/{key}")
        for _ in range(3):
            token = self._adopted_token()
            if time.monotonic() < self._grants_frozen_until:
                # A restarted, non-persistent server: old holders may still be running.
                return Blob(key, b"", REFUSED, 0)
            keys = [*self._keys(space, key), self._token_key]
            reply = self._eval("create", keys, [data, key.encode(), token])
            if int(reply[0]) == -1:  # the server lost our token: it restarted or was flushed
                self._forget_token(token)
                continue
            if int(reply[0]) == 1:
                return None
            return self._blob(key, reply[1], reply[2] or None, reply[3] or None)
        raise self._losing_state()

    def _adopted_token(self) -> bytes:
        """The server token a create-if-absent carries, looking at the server first when
        none is adopted (the first create, or the server lost the one we had)."""
        if self._server_token is None:
            self._observe_server()
        token = self._server_token
        assert token is not None
        return token

    def _forget_token(self, token: bytes) -> None:
        with self._server_lock:
            if self._server_token == token:
                self._server_token = None

    def _losing_state(self) -> StoreUnavailable:
        return StoreUnavailable(f"redis at {self._where} keeps losing its state (restarting or being flushed)")

    def replace_if(self, space: Space, key: str, expected: bytes, data: bytes) -> bool:
        return int(self._mutate("replace_if", space, key, data, expected=expected)) == 1

    def delete_if(self, space: Space, key: str, expected: bytes) -> bool:
        return int(self._mutate("delete_if", space, key, expected=expected)) == 1

    def delete(self, space: Space, key: str) -> bool:
        return int(self._mutate("delete", space, key)) == 1

    def update(self, space: Space, key: str, updater: Updater) -> bytes | None:
        """Optimistic: compute from the value last seen, swap only if it is still current.

        The swap script answers a conflict with the current value, so a hot key
        (a provider's rate limiter) costs one round trip when this process was
        the last to change it, and two when another was.
        """
        self._writable(f"update of {space.name}/{key}")
        keys = self._keys(space, key)
        entry = keys[0]
        if entry in self._last_seen:
            before = self._last_seen[entry]
        else:
            before = self._call(lambda: self._client.get(entry))
        keys.append(self._token_key)
        lost = 0
        while True:
            after = updater(before)
            if after is None or after == before:
                self._remember(entry, before)
                return before
            token = b"" if before is not None else self._token_to_start(space, key)
            result = self._eval("swap", keys, [after, key.encode(), before or b"", b"1" if before is None else b"0", token])
            if int(result[0]) == -1:  # creating, on a server that lost our token: look at it first
                self._forget_token(token)
                lost += 1
                if lost == 3:
                    raise self._losing_state()
                continue
            if int(result[0]) == 1:
                self._remember(entry, after)
                return after
            before = result[2] if int(result[1]) else None

    def _token_to_start(self, space: Space, key: str) -> bytes:
        """The token an update that creates its entry carries (the swap script checks it, as
        the create script does).  A :attr:`Space.monotonic` counter is not started afresh on
        a server that restarted without persistence until its grace is over: tokens drawn
        before the restart may lie ahead of the clock, and every lock that held one has
        expired by then."""
        token = self._adopted_token()
        wait_s = self._grants_frozen_until - time.monotonic()
        if space.monotonic and wait_s > 0:
            raise StoreUnavailable(
                f"redis at {self._where} restarted without persistence and lost {space.name}/{key}: "
                f"it is started afresh in {wait_s:.1f} s, once every lock granted before has expired"
            )
        return token

    def _remember(self, entry: bytes, value: bytes | None) -> None:
        if len(self._last_seen) >= LAST_SEEN_KEPT:
            self._last_seen.pop(next(iter(self._last_seen)))
        self._last_seen[entry] = value

    def reserve_rate(self, space: Space, key: str, plan: bytes, now_ms: float) -> tuple[float, float | None, str, float, float]:
        """One GCRA reservation decided by the server (see core.ratelimit.gcra_step).

        ``plan`` is ``ReservePlan.to_json()``.  Returns ``(now, start or None,
        bucket, old effective limit, new effective limit)``.
        """
        keys = self._keys(space, key)
        now = float(now_ms)
        reply = self._eval("reserve_rate", keys, [key.encode(), repr(now).encode(), plan])
        start, bucket, new, old = reply.decode().split("\n")
        self._last_seen.pop(keys[0], None)
        return now, (float(start) if start else None), bucket, float(old or new), float(new)

    # --------------------------------------------------------------- events
    def append_event(self, data: bytes) -> None:
        if not data.strip() or b"\n" in data:
            raise ValueError("an event must be one non-empty line")
        self._writable("appending an event")
        stream = f"{self.prefix}:events"
        self._call(lambda: self._client.xadd(stream, {"e": data}, maxlen=EVENTS_KEPT, approximate=True))

    def read_events(self, cursor: int = 0, limit: int = 1000) -> tuple[list[bytes], int]:
        """Cursors encode stream ids: ``milliseconds << 20 | sequence``."""
        stream = f"{self.prefix}:events"
        start = "-" if cursor == 0 else f"({cursor >> 20}-{cursor & 0xFFFFF}"
        entries = self._call(lambda: self._client.xrange(stream, min=start, max="+", count=limit))
        events = [fields.get(b"e", b"") for _, fields in entries]
        if entries:
            ms, seq = entries[-1][0].decode().split("-")
            cursor = (int(ms) << 20) | int(seq)
        return [e for e in events if e], cursor

    # -------------------------------------------------------------- changes
    def subscribe(self) -> RedisChangeFeed:
        """A feed of ``(space, key)`` changes, for watchers that want no polling."""
        return RedisChangeFeed(self)

    def flush_prefix(self) -> int:
        """Remove everything under this store's prefix (tests, demos)."""
        self._writable("flushing the prefix")

        def scan_and_delete() -> int:
            removed = 0
            for batch in _chunks(self._client.scan_iter(match=f"{self.prefix}:*", count=500), 500):
                removed += self._client.delete(*batch)
            return removed

        return self._call(scan_and_delete)


class RedisChangeFeed:
    """Changes announced on the store's channel, as ``(Space, key)`` pairs."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._pubsub = store._client.pubsub(ignore_subscribe_messages=True)
        store._call(lambda: self._pubsub.subscribe(store._channel))

    def get(self, timeout: float) -> list[tuple[Space, str]]:
        """Changes announced within ``timeout`` seconds (at least one wait, then what is queued)."""
        changes: list[tuple[Space, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            # Once something came, only what is already queued: waiting on for more would
            # hold a lone change back for the whole timeout.
            remaining = 0.0 if changes else max(0.0, deadline - time.monotonic())
            message = self._store._call(lambda: self._pubsub.get_message(timeout=remaining))
            if message is None:
                if changes or remaining <= 0:
                    return changes
                continue
            name, _, key = message["data"].decode("utf-8", "surrogateescape").partition("\n")
            space = _SPACES.get(name)
            if space is not None:
                changes.append((space, key))
            if time.monotonic() >= deadline:
                return changes  # a flood ends a batch too

    def close(self) -> None:
        try:
            self._pubsub.close()
        except redis.RedisError:
            pass


class _Script:
    """A Lua script as EVALSHA wants it: its body (to load it) and its SHA-1."""

    __slots__ = ("body", "sha")

    def __init__(self, text: str) -> None:
        self.body = text.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()


def _pack(*args: bytes) -> bytes:
    """One command in RESP: what redis-py's packer makes of byte strings, minus its type checks."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_SCRIPTS = _load_scripts()
