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
unless the token is still there.  A server that lost its data lost the token,
so the first create on it, on whatever connection, after whatever error, makes
the store look again before anything is granted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

# Shared by every mutation: record when it changed, and announce it on the
# prefix's channel (derived from KEYS[2], "{prefix}:v:{space}", to keep calls short).
_COMMON = """
local function touch(field)
  redis.call('HINCRBY', KEYS[2], field, 1)
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[3], field, t[1] * 1000 + math.floor(t[2] / 1000))
end
local function announce(field)
  local prefix, space = string.match(KEYS[2], '^(.*):v:(.*)$')
  redis.call('PUBLISH', prefix .. ':changes', space .. string.char(10) .. field)
end
local function forget(field)
  redis.call('HDEL', KEYS[2], field)
  redis.call('HDEL', KEYS[3], field)
end
"""
# ARGV: data, field[, expected[, "1" if expected absent]]
_WRITE = _COMMON + """
redis.call('SET', KEYS[1], ARGV[1])
touch(ARGV[2])
announce(ARGV[2])
return 1
"""
# KEYS[4]: the server token; ARGV[3]: the token this store adopted.  {-1}: the
# token is not there (a restarted or flushed server): look at the server first.
_CREATE = _COMMON + """
if redis.call('GET', KEYS[4]) ~= ARGV[3] then return {-1} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return {0, redis.call('GET', KEYS[1]) or '', redis.call('HGET', KEYS[2], ARGV[2]) or '', redis.call('HGET', KEYS[3], ARGV[2]) or ''}
end
touch(ARGV[2])
announce(ARGV[2])
return {1}
"""
_REPLACE_IF = _COMMON + """
if redis.call('GET', KEYS[1]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
touch(ARGV[2])
announce(ARGV[2])
return 1
"""
_SWAP = _COMMON + """
local current = redis.call('GET', KEYS[1])
local expected_absent = ARGV[4] == '1'
if (expected_absent and current == false) or (not expected_absent and current == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1])
  touch(ARGV[2])
  announce(ARGV[2])
  return {1}
end
if current == false then return {0, 0, ''} end
return {0, 1, current}
"""
# One GCRA reservation, the same step as core.ratelimit.gcra_step, on the
# provider's JSON state.  ARGV: field, now (ms), ReservePlan.to_json(): an array
# (cheaper to decode than an object) of provider, period_ms, horizon_ms,
# requests_per_minute, burst, fresh_effective, adaptive, high, recovery_factor,
# quiet_ms, grant_slot_s, then buckets as name, share, burst from plan[12]: the
# model's (name "" if none), then each path's.  Answers start (or ''), bucket,
# effective limit and, if it changed, the one before, with 17 digits: exactly as
# Python computes them.  A state ProviderRateState would refuse (a number out of
# range, a grantsPerSecond key that is no epoch second) is started afresh, as
# Python starts afresh from a record that does not validate.
_RESERVE_RATE = _COMMON + """
local function num(v) if type(v) == 'number' then return v end return 0 end
local function exact(x) return string.format('%.17g', x) end
local MIN_MS, MAX_MS = 946684800000, 7258118400000
local function finite(v) return type(v) == 'number' and v == v and v > -math.huge and v < math.huge end
local function absent(v) return v == nil or v == cjson.null end
local function epoch(v) return finite(v) and v >= MIN_MS and v < MAX_MS and math.floor(v) == v end
local function count(v) return finite(v) and v >= 0 and v <= 2^53 and math.floor(v) == v end
local function rate(v) return finite(v) and v >= 0.001 and v <= 1e9 end
local function valid(s)
  if type(s) ~= 'table' or type(s.provider) ~= 'string' then return false end
  if not (rate(s.requestsPerMinute) and rate(s.effectiveRequestsPerMinute)) then return false end
  if not (count(s.burst) and s.burst >= 1 and s.burst <= 1e9) then return false end
  if not ((absent(s.formatVersion) or count(s.formatVersion)) and (absent(s.totalGrants) or count(s.totalGrants))) then return false end
  if not ((absent(s.last429At) or epoch(s.last429At)) and (absent(s.lastChangeAt) or epoch(s.lastChangeAt))) then return false end
  if not absent(s.buckets) then
    if type(s.buckets) ~= 'table' then return false end
    for name, bucket in pairs(s.buckets) do
      if type(name) ~= 'string' or type(bucket) ~= 'table' then return false end
      local tat = bucket.tat
      if not (absent(tat) or (finite(tat) and (tat == 0 or (tat >= MIN_MS and tat < MAX_MS)))) then return false end
    end
  end
  if not absent(s.grantsPerSecond) then
    if type(s.grantsPerSecond) ~= 'table' then return false end
    for second, n in pairs(s.grantsPerSecond) do
      if type(second) ~= 'string' or not string.match(second, '^%d+$') or #second > 13 then return false end
      local at = tonumber(second)
      if at < MIN_MS / 1000 or at >= MAX_MS / 1000 or not count(n) then return false end
    end
  end
  return true
end
local now, plan = tonumber(ARGV[2]), cjson.decode(ARGV[3])
local raw = redis.call('GET', KEYS[1])
local ok, state = false, nil
if raw then ok, state = pcall(cjson.decode, raw) end
if not ok or not valid(state) then
  state = {formatVersion = 1, provider = plan[1], buckets = {}, grantsPerSecond = {}, totalGrants = 0}
end
local buckets, grants = state.buckets, state.grantsPerSecond
if type(buckets) ~= 'table' then buckets = {} state.buckets = buckets end
if type(grants) ~= 'table' then grants = {} state.grantsPerSecond = grants end
if state.requestsPerMinute ~= plan[4] or state.burst ~= plan[5] then
  state.requestsPerMinute = plan[4]
  state.burst = plan[5]
  state.effectiveRequestsPerMinute = plan[6]
end
local old = num(state.effectiveRequestsPerMinute)
local effective = old
if plan[7] and effective < plan[8] and now - math.max(num(state.last429At), num(state.lastChangeAt)) >= plan[10] then
  effective = math.min(plan[8], effective * plan[9])
end
local function tat_of(name)  -- booked more than a week ahead (MAX_BOOKED_AHEAD_MS): ignored
  local bucket = buckets[name]
  if type(bucket) == 'table' and num(bucket.tat) <= now + 604800000 then return num(bucket.tat) end
  return 0
end
local function allowed(i)  -- the bucket at plan[i] (name), plan[i + 1] (share), plan[i + 2] (burst)
  local emission = plan[2] / math.max(effective * plan[i + 1], 1e-9)
  local tolerance = (math.max(1, math.floor(plan[i + 2])) - 1) * emission
  return math.max(now, tat_of(plan[i]) - tolerance), emission
end
local choice, start, emission = 15, allowed(15)
for i = 18, #plan, 3 do
  local at, e = allowed(i)
  if at < start then choice, start, emission = i, at, e end
end
local model_emission = nil
if plan[12] ~= '' then
  local at
  at, model_emission = allowed(12)
  if at > start then start = at end
end
local changed = effective ~= old
if changed then
  state.effectiveRequestsPerMinute = effective
  state.lastChangeAt = now
end
local booked_at = ''
if start - now <= plan[3] then
  local function book(name, e)
    buckets[name] = {tat = math.ceil((math.max(tat_of(name), start) + e) * 10) / 10}
  end
  book(plan[choice], emission)
  if model_emission then book(plan[12], model_emission) end
  local slot = plan[11]
  local oldest = math.floor(now / 1000) - 60 - slot
  for second in pairs(grants) do
    if tonumber(second) <= oldest then grants[second] = nil end
  end
  local second = tostring(math.floor(math.floor(start / 1000) / slot) * slot)
  grants[second] = num(grants[second]) + 1
  state.totalGrants = num(state.totalGrants) + 1
  booked_at = exact(start)
  changed = true
end
if changed then
  redis.call('SET', KEYS[1], cjson.encode(state))
  touch(ARGV[1])
  announce(ARGV[1])
end
local before = effective ~= old and exact(old) or ''
return table.concat({booked_at, plan[choice], exact(effective), before}, string.char(10))
"""
# The server's token: the one already there, else ARGV[1].
_ADOPT_TOKEN = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""
_DELETE_IF = _COMMON + """
if redis.call('GET', KEYS[1]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
forget(ARGV[2])
announce(ARGV[2])
return 1
"""
_DELETE = _COMMON + """
local removed = redis.call('DEL', KEYS[1])
forget(ARGV[2])
if removed > 0 then announce(ARGV[2]) end
return removed
"""

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
        self._scripts = {
            name: _Script(body)
            for name, body in (
                ("write", _WRITE),
                ("create", _CREATE),
                ("replace_if", _REPLACE_IF),
                ("swap", _SWAP),
                ("reserve_rate", _RESERVE_RATE),
                ("delete_if", _DELETE_IF),
                ("delete", _DELETE),
                ("adopt_token", _ADOPT_TOKEN),
            )
        }
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
            if self._server_token is None:
                self._observe_server()
            if time.monotonic() < self._grants_frozen_until:
                # A restarted, non-persistent server: old holders may still be running.
                return Blob(key, b"", REFUSED, 0)
            token = self._server_token
            assert token is not None
            keys = [*self._keys(space, key), self._token_key]
            reply = self._eval("create", keys, [data, key.encode(), token])
            if int(reply[0]) == -1:  # the server lost our token: it restarted or was flushed
                with self._server_lock:
                    if self._server_token == token:
                        self._server_token = None
                continue
            if int(reply[0]) == 1:
                return None
            return self._blob(key, reply[1], reply[2] or None, reply[3] or None)
        raise StoreUnavailable(f"redis at {self._where} keeps losing its state (restarting or being flushed)")

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
        while True:
            after = updater(before)
            if after is None or after == before:
                self._remember(entry, before)
                return before
            result = self._eval("swap", keys, [after, key.encode(), before or b"", b"1" if before is None else b"0"])
            if int(result[0]) == 1:
                self._remember(entry, after)
                return after
            before = result[2] if int(result[1]) else None

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
