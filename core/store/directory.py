"""The directory backend: pi's coordination directory (``~/.pi/runtime``) on a local disk.

Guarantees, and the primitive that gives each one (README, "What each write
guarantees"):

* readers never see a partial file: every write goes to a temporary file in the
  same directory, its every byte checked written, and is moved into place with
  ``os.replace``; a writer killed or a disk full at any point leaves the old
  file or the new one, never a mix, and a failure is raised, never ignored;
* ``create`` is atomic create-if-absent: the complete file, written with no
  name (``O_TMPFILE``; a hidden temporary file where the file system has no
  unnamed files), is hard-linked to its final name, which fails if the name
  exists, so two processes can never both create a lock and nobody sees an
  empty lock file;
* ``replace_if`` / ``delete_if`` / ``write`` / ``delete`` / ``update`` hold an
  exclusive ``flock`` of the file they change (checking, once held, that it is
  still the one under the name), and nothing replaces or removes an existing
  file without it, so a compare-and-delete cannot remove a file that changed
  after it was compared.  The lock covers one key only and is held for a few
  system calls; a waiter gives up after ``guard_wait_s`` with
  :class:`StoreBusy` (its holder is stopped or starved), so a stopped process
  never blocks anyone else's keys and never blocks its own for ever.  The
  kernel releases a ``flock`` when its process dies;
* spaces marked ``in_place`` (rate-limiter, backoff and fencing state, updated
  on every request) are never replaced: a rename over an existing file costs
  ~200 us on ext4, so they keep two checksummed slots (:mod:`.twin_slots`)
  and a writer rewrites the older slot with one ``pwrite``; a torn slot fails
  its checksum and the other still holds the previous value;
* the event log is appended without any lock (one ``O_APPEND`` write per
  line); a line cut short by a full disk is raised to the caller, the next
  append starts on a fresh line, and readers report the fragment;
* hostile entries (symlinks, FIFOs, directories, huge or unreadable files) are
  reported as unreadable, never followed, blocked on or crashed over;
* every key has a file name: one that cannot be spelled as one (too long once
  encoded, a NUL or ``/`` in one of pi's own spaces, a lone surrogate) gets a
  bounded name, a readable prefix and a hash (``steal_xxx...~1f2e...``), which
  listings give back as its key; so a hostile id costs nothing but itself;
* file names that are not UTF-8 are keys spelled with ``surrogateescape``, as
  Python spells such names everywhere;
* every ``OSError`` becomes a :class:`StoreError` naming the path and the reason;
* a root owned by another user (or a symbolic link to one, or one owned by
  another user) is refused unless ``allow_foreign_root``;
* directories are created 0700 and files 0600.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import stat
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from . import twin_slots
from .base import (
    ALL_SPACES,
    Blob,
    EntryUnreadable,
    Space,
    Store,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    Updater,
    Version,
)

ENV_ROOT = "PI_RUNTIME_DIR"
EVENTS_DIR = "pi-dash/events"
EVENTS_MAX_BYTES = 2 * 1024 * 1024
EVENTS_SEGMENTS_KEPT = 3
CONFIG_FILE = "coordinator.json"
CLOCK_PROBE = ".pi-dash-clock"  # rewritten to read the file system's clock (DirectoryStore.now_ms)
GUARD_WAIT_S = 2.0  # a guard is held for a few system calls: waiting longer means its holder is stopped
THREAD_STRIPES = 64  # threads of one process share an in-place file's descriptor: a lock per stripe
MAX_BLOB_BYTES = 8 * 1024 * 1024
LISTING_SETTLE_NS = 2_000_000_000  # coarser than any file system's timestamps (FAT: 2 s)
MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS
HASH_MARK = "~"  # never in an encoded key (encode_key spells it %7E), so a hashed name is never an encoded one
HASHED_PREFIX_CHARS = 96
TEMP_PREFIX_BYTES = 200  # a temporary file's name keeps at most this much of its target's, to stay within NAME_MAX
_HASHED_STEM = re.compile(r"[A-Za-z0-9_%%-]{0,%d}~[0-9a-f]{24}" % HASHED_PREFIX_CHARS)
READ_RETRIES = 3  # an in-place record whose both slots were torn by two writes during one read
TEMP_SUFFIX = ".tmp"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SAFE_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def default_root(cli_root: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Path:
    """The coordination directory: ``--root``, else ``$PI_RUNTIME_DIR``, else ``~/.pi/runtime``."""
    env = os.environ if env is None else env
    if cli_root:
        return Path(cli_root).expanduser()
    if env.get(ENV_ROOT):
        return Path(env[ENV_ROOT]).expanduser()
    return Path.home() / ".pi" / "runtime"


@lru_cache(maxsize=4096)
def encode_key(key: str) -> str:
    """A file-name-safe, reversible spelling of any key (``%XX`` for all but ``[A-Za-z0-9_-]``).

    Raises :class:`UnicodeEncodeError` for a lone surrogate that stands for no byte."""
    return "".join(
        ch if ch in _SAFE_KEY_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")) for ch in key
    )


@lru_cache(maxsize=65536)
def _key_of_stem(stem: str) -> str | None:
    """The key a file name stem of pi-dash's folders spells, if any (remembered: every
    rescan meets the same names)."""
    try:
        key = decode_key(stem)
    except (ValueError, UnicodeDecodeError):
        return None
    # Only the one canonical spelling names a key: "%41" is not "A".
    return key if encode_key(key) == stem else None


def decode_key(name: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            raw.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(name[i].encode())
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def hashed_stem(key: str) -> str:
    """The bounded name of a key that has no plain one: its encoded start, ``~``, 96 bits of its hash."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    prefix = []
    length = 0
    for ch in key:
        try:
            part = encode_key(ch)
        except UnicodeEncodeError:
            part = "_"
        if length + len(part) > HASHED_PREFIX_CHARS:
            break
        prefix.append(part)
        length += len(part)
    return f"{''.join(prefix)}{HASH_MARK}{digest}"


@lru_cache(maxsize=8192)
def file_stem(key: str, verbatim: bool, suffix: str) -> str:
    """The file name (less ``suffix``) of ``key``: its plain spelling when it has one
    (the key itself in pi's spaces, :func:`encode_key` in pi-dash's), else
    :func:`hashed_stem`.  A hashed stem, as a listing gives it back, names itself."""
    if _HASHED_STEM.fullmatch(key):
        return key
    try:
        if verbatim:
            plain = key
            usable = bool(key) and "/" not in key and "\0" not in key and not key.startswith(".")
        else:
            plain = encode_key(key)
            usable = bool(key)
        if usable and len(os.fsencode(plain + suffix)) <= MAX_NAME_BYTES:
            return plain
    except UnicodeEncodeError:
        pass
    return hashed_stem(key)


class DirectoryStore(Store):
    """A :class:`Store` on a local directory laid out as pi lays it out."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        guard_wait_s: float = GUARD_WAIT_S,
        allow_foreign_root: bool = False,
        read_only: bool = False,
    ) -> None:
        self.read_only = read_only  # then nothing is opened for writing, created or removed
        self.root = Path(root)
        self._root = str(self.root)
        self.guard_wait_s = guard_wait_s
        self.allow_foreign_root = allow_foreign_root
        self._owner_checked = False
        self._dirs: dict[Space, str] = {}
        self._fd_pid = os.getpid()
        self._thread_locks = [threading.Lock() for _ in range(THREAD_STRIPES)]
        self._made_dirs: set[str] = set()
        self._unnamed_files = hasattr(os, "O_TMPFILE")  # until the file system says it has none
        self._strays: dict[Space, tuple[Version | None, list[str]]] = {}  # per space, with its listing token
        self._in_place_fds: dict[str, int] = {}
        self._slots_written: dict[str, tuple[int, bytes]] = {}  # path -> our last (sequence, payload)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r}{', read_only=True' if self.read_only else ''})"

    def describe(self) -> str:
        return f"directory {self.root}" + (" (read-only)" if self.read_only else "")

    # ----------------------------------------------------------------- paths
    def _dir(self, space: Space) -> str:
        # Plain strings, not Paths: path objects cost more than the syscalls here.
        path = self._dirs.get(space)
        if path is None:
            path = self._dirs[space] = os.path.join(self._root, space.name)
        return path

    def _filename(self, space: Space, key: str) -> str:
        """The file name of ``key`` (any key has one); any name a listing produced is accepted back."""
        return file_stem(key, space.verbatim, space.suffix) + space.suffix

    def listed_key(self, space: Space, key: str) -> str:
        return self._key_of(space, self._filename(space, key)) or key

    def _key_of(self, space: Space, filename: str) -> str | None:
        if filename.startswith(".") or not filename.endswith(space.suffix):
            return None
        stem = filename[: -len(space.suffix)]
        if not stem:
            return None
        if space.verbatim or _HASHED_STEM.fullmatch(stem):
            return stem
        return _key_of_stem(stem)

    def layout_notice(self) -> str | None:
        """A directory with things in it but none that pi or pi-dash writes is not a
        coordination directory (an empty one is simply one nobody has used yet)."""
        try:
            names = set(os.listdir(self._root)) - {CLOCK_PROBE}
        except OSError:
            return None  # check() says why
        ours = {space.name.partition("/")[0] for space in ALL_SPACES} | {CONFIG_FILE}
        if not names or names & ours:
            return None
        return "not a coordination directory: no instances/, queue-states/ or locks/ here"

    def strays(self, space: Space) -> list[str]:
        """Names in one of pi-dash's folders that look like entries but name no key
        (``%41.json`` is not ``A``'s file).  Other names (READMEs, backups, temporary
        files) are ignored, and pi's own folders are not judged at all."""
        if space.verbatim:
            return []
        token = self.listing_token(space)
        known = self._strays.get(space)
        if token is not None and known is not None and known[0] == token:
            return list(known[1])  # no name added or removed since they were judged
        try:
            names = os.listdir(self._dir(space))
        except OSError:
            return []
        nested = {s.name.rpartition("/")[2] for s in ALL_SPACES if s.name.startswith(space.name + "/")}
        found = sorted(
            name
            for name in names
            if not name.startswith(".")
            and name.endswith(space.suffix)
            and name not in nested
            and self._key_of(space, name) is None
        )
        self._strays[space] = (token, found)
        return found

    def _ensure_dir(self, path: str) -> None:
        if path in self._made_dirs:
            return
        self._check_owner()
        try:
            _make_private_dirs(path)
        except PermissionError as exc:
            raise StoreError(f"cannot create {path}: permission denied") from exc
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {_describe_open_error(exc)}") from exc
        self._made_dirs.add(path)
        self._check_owner()  # the root may have just been made: by us

    def _check_owner(self) -> None:
        """Refuse a root that another user owns, or that is their symbolic link: whoever
        owns it can read every record and plant files (or point the link elsewhere)."""
        if self._owner_checked or self.allow_foreign_root:
            return
        try:
            link = os.lstat(self._root)
            target = os.stat(self._root) if stat.S_ISLNK(link.st_mode) else link
        except FileNotFoundError:
            return  # not there yet: made by us, and checked once made
        except OSError as exc:
            raise StoreUnavailable(f"{self._root}: {_describe_open_error(exc)}") from None
        me = os.geteuid()
        owners = [("belongs to", target)]
        if stat.S_ISLNK(link.st_mode):
            owners.insert(0, ("is a symbolic link owned by", link))
        for what, st in owners:
            if st.st_uid != me:
                raise StoreUnavailable(
                    f"{self._root} {what} {_user_name(st.st_uid)}, not to {_user_name(me)}; "
                    "refused (--allow-foreign-root, or allow_foreign_root=True, to use it anyway)"
                )
        self._owner_checked = True

    def watched_directory(self) -> Path:
        return self.root

    def locate(self, path: str) -> tuple[Space, str] | None:
        """The space and key a changed file path belongs to (for file watchers), if any."""
        try:
            relative = os.path.relpath(path, self._root)
        except ValueError:
            return None
        folder, _, name = relative.rpartition(os.sep)
        for space in ALL_SPACES:
            if space.name == folder:
                key = self._key_of(space, name)
                return None if key is None else (space, key)
        return None

    def ensure_layout(self) -> None:
        """Create the root and every space (0700), as a registering instance does."""
        self._writable("creating the layout")
        for space in ALL_SPACES:
            self._ensure_dir(self._dir(space))

    def now_ms(self) -> int:
        """Now, on the clock that stamps the files: the time the kernel (or, on NFS, the
        file server) gives a one-byte write to :data:`CLOCK_PROBE` in the root.

        A write, not ``utime``: a process whose clock is shifted (``faketime``, a
        container with its own idea of the time, another host writing over NFS) also
        shifts what ``utime`` sets, but never the stamp the kernel puts on a write.
        Only asked where a record's age decides something (a lock past its
        ``expiresAt``, a 429 deadline still ahead).  A store that may not write (read-only,
        no root yet, a probe that is not a regular file) falls back to this process's clock.
        """
        if self.read_only:
            return super().now_ms()
        try:
            self._check_owner()
        except StoreError:
            return super().now_ms()  # nothing is written into another user's root
        path = os.path.join(self._root, CLOCK_PROBE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError:
            return super().now_ms()
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or os.pwrite(fd, b"\n", 0) != 1:
                return super().now_ms()
            return os.fstat(fd).st_mtime_ns // 1_000_000
        except OSError:
            return super().now_ms()
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- guard
    @contextmanager
    def _holding(self, path: str, key: str) -> Iterator[int | None]:
        """Hold an exclusive ``flock`` of the file now under ``path``, or ``None`` if there is
        none.  Every replacement or removal of an existing file holds it, so what the holder
        reads through the descriptor stays under the name until it lets go."""
        deadline = time.monotonic() + self.guard_wait_s
        while True:
            try:
                fd = os.open(path, _READ_FLAGS)
            except FileNotFoundError:
                yield None
                return
            except OSError as exc:
                raise EntryUnreadable(key, f"cannot lock {path}: {_describe_open_error(exc)}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise EntryUnreadable(key, f"cannot lock {path}: not a regular file")
                _flock_within(fd, fcntl.LOCK_EX, deadline, path, self.guard_wait_s)
                held = _still_named(path, st)
            except BaseException as exc:
                os.close(fd)
                if isinstance(exc, OSError):
                    raise StoreError(f"cannot lock {path}: {_describe_open_error(exc)}") from None
                raise
            if held:
                try:
                    yield fd
                finally:
                    os.close(fd)  # releases the flock
                return
            os.close(fd)  # replaced or removed while we waited: lock its successor

    def _forget_descriptors_after_fork(self) -> None:
        if self._fd_pid != os.getpid():
            # A forked child shares its parent's open file descriptions, and so
            # its flocks: it must open descriptors of its own.
            self._in_place_fds = {}
            self._fd_pid = os.getpid()

    # ------------------------------------------------------------- reading
    def check(self) -> None:
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise StoreUnavailable(f"{root} does not exist (no pi instance has registered here yet)") from None
        except OSError as exc:
            raise StoreUnavailable(f"{root} cannot be reached: {_describe_open_error(exc)}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreUnavailable(f"{root} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise StoreUnavailable(f"{root} is not readable: permission denied")
        self._check_owner()

    def versions(self, space: Space) -> dict[str, Version]:
        found: dict[str, Version] = {}
        try:
            entries = os.scandir(self._dir(space))
        except FileNotFoundError:
            return found
        except NotADirectoryError:
            raise StoreUnavailable(f"{self._dir(space)} is not a directory") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot list {self._dir(space)}: {_describe_open_error(exc)}") from None
        with entries:
            for entry in entries:
                key = self._key_of(space, entry.name)
                if key is None:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished between listing and stat
                found[key] = (st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IFMT(st.st_mode))
        return found

    def listing_token(self, space: Space) -> Version | None:
        """The directory's inode and mtime, which every ``os.replace``, ``link`` and
        ``unlink`` in it changes.  ``None`` for pi's folders and in-place spaces (a
        file rewritten in place leaves its directory's mtime alone, and pi writes
        its files in place), and while the directory changed less than
        ``LISTING_SETTLE_NS`` ago: timestamps are coarse (a clock tick, 1-2 s on
        some file systems), so a change in the same tick as the one before would
        leave the mtime as it was; once the mtime is that old, any later change
        gives a newer one.  The token is taken before the listing it vouches for."""
        if space.verbatim or space.in_place:
            return None
        try:
            st = os.stat(self._dir(space))
        except OSError:
            return None
        if time.time_ns() - st.st_mtime_ns < LISTING_SETTLE_NS:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def keys(self, space: Space) -> list[str]:
        try:
            names = os.listdir(self._dir(space))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreUnavailable(f"cannot list {self._dir(space)}: {exc.strerror}") from None
        return [key for key in map(lambda name: self._key_of(space, name), names) if key is not None]

    def read_all(self, space: Space) -> dict[str, Blob | EntryUnreadable]:
        """Opens each file relative to its directory (``openat``): no path walk per file."""
        found: dict[str, Blob | EntryUnreadable] = {}
        try:
            dir_fd = os.open(self._dir(space), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return found
        except OSError as exc:
            raise StoreUnavailable(f"cannot list {self._dir(space)}: {exc.strerror}") from None
        try:
            for name in os.listdir(dir_fd):
                key = self._key_of(space, name)
                if key is None:
                    continue
                try:
                    blob = self._read_path(name, key, in_place=space.in_place, dir_fd=dir_fd)
                except EntryUnreadable as exc:
                    found[key] = exc
                else:
                    if blob is not None:
                        found[key] = blob
        finally:
            os.close(dir_fd)
        return found

    def read(self, space: Space, key: str) -> Blob | None:
        path = os.path.join(self._dir(space), self._filename(space, key))
        return self._read_path(path, key, in_place=space.in_place)

    def read_config(self) -> bytes | None:
        blob = self._read_path(os.path.join(self._root, CONFIG_FILE), CONFIG_FILE)
        return None if blob is None else blob.data

    def _read_path(self, path: str, key: str, in_place: bool = False, dir_fd: int | None = None) -> Blob | None:
        try:
            fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EntryUnreadable(key, _describe_open_error(exc)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise EntryUnreadable(key, "not a regular file")
            if in_place:
                return self._read_slots(fd, key)
            data = _read_whole(fd, st, key)
        except OSError as exc:
            raise EntryUnreadable(key, exc.strerror or str(exc)) from None
        finally:
            os.close(fd)
        version = (st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IFMT(st.st_mode))
        return Blob(key, data, version, st.st_mtime_ns // 1_000_000)

    def _read_slots(self, fd: int, key: str) -> Blob | None:
        """The newest intact slot of an in-place record; read again if a writer tore both
        while we read, then under a shared lock (waiting at most ``guard_wait_s``)."""
        for attempt in range(READ_RETRIES + 1):
            if attempt == READ_RETRIES:
                _flock_within(fd, fcntl.LOCK_SH, time.monotonic() + self.guard_wait_s, key, self.guard_wait_s)
            st = os.fstat(fd)
            if st.st_size == 0:
                return None  # created, never written (by an older version): as good as absent
            data = _read_whole(fd, st, key)
            if not twin_slots.is_slotted(data):
                break  # written whole by an older version: plain JSON
            found = twin_slots.newest(data)
            if found is not None:
                data = found[0]
                break
        else:
            raise EntryUnreadable(key, "neither slot holds an intact record")
        version = (st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IFMT(st.st_mode))
        return Blob(key, data, version, st.st_mtime_ns // 1_000_000)

    # ------------------------------------------------------------- writing
    def _stage(self, directory: str, filename: str, data: bytes, durable: bool) -> str:
        """Write ``data`` to a fresh hidden temporary file beside its final name."""
        self._ensure_dir(directory)
        start = os.fsencode(filename)[:TEMP_PREFIX_BYTES].decode("utf-8", "ignore")
        temp = os.path.join(directory, f".{start}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot write in {directory}: {_describe_open_error(exc)}") from None
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(temp)
            raise StoreError(f"cannot write {os.path.join(directory, filename)}: {_describe_open_error(exc)}") from None
        os.close(fd)
        return temp

    def _publish(self, temp: str, path: str, fd: int | None) -> bool:
        """Put the staged ``temp`` under ``path`` (and be done with ``temp``): over the file we
        hold locked (``fd``), or, when there was none, only if there still is none
        (``False``: one appeared, retry)."""
        try:
            if fd is not None:
                os.replace(temp, path)
                return True
            try:
                os.link(temp, path)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in _NO_HARD_LINKS:
                    return _create_exclusive(path, _read_staged(temp))
                raise
            finally:
                _unlink_quietly(temp)
        except OSError as exc:
            _unlink_quietly(temp)
            raise StoreError(f"cannot replace {path}: {_describe_open_error(exc)}") from None

    def write(self, space: Space, key: str, data: bytes, *, durable: bool = False) -> None:
        self._writable(f"write of {space.name}/{key}")
        if space.in_place:
            self.update(space, key, lambda _: data)
            return
        directory = self._dir(space)
        filename = self._filename(space, key)
        path = os.path.join(directory, filename)
        while True:
            temp = self._stage(directory, filename, data, durable)
            try:
                with self._holding(path, key) as fd:
                    published = self._publish(temp, path, fd)
            except EntryUnreadable:
                # Something not a file of ours holds the name (a symlink, a FIFO...): replace it.
                published = self._publish(temp, path, -1)
            except BaseException:
                _unlink_quietly(temp)
                raise
            if published:
                return

    def create(self, space: Space, key: str, data: bytes) -> bool:
        self._writable(f"create of {space.name}/{key}")
        directory = self._dir(space)
        filename = self._filename(space, key)
        path = os.path.join(directory, filename)
        if self._unnamed_files:
            created = self._create_unnamed(directory, path, data)
            if created is not None:
                return created
        temp = self._stage(directory, filename, data, durable=False)
        return self._publish(temp, path, None)

    def _create_unnamed(self, directory: str, path: str, data: bytes) -> bool | None:
        """Create-if-absent with one change to the directory: the bytes go to a file that
        has no name yet (``O_TMPFILE``), which is then linked under ``path`` (fails if one
        is there).  A named temporary file costs three changes (its creation, its link,
        its removal), and each waits on the directory's lock and the file system's journal:
        a lock's acquire+release went from four changes to two.  A writer killed before the
        link leaves nothing behind.  ``None`` where the file system or kernel has no
        unnamed files or ``/proc`` is not mounted (then the named temporary file is used)."""
        self._ensure_dir(directory)
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in _NO_UNNAMED_FILES:
                self._unnamed_files = False
                return None
            raise StoreError(f"cannot write in {directory}: {_describe_open_error(exc)}") from None
        try:
            _write_all(fd, data)
            # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the open file; a dir_fd
            # is what makes os.link call linkat with that flag (for an absolute path the
            # kernel ignores which descriptor it is).
            os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS or exc.errno == errno.ENOENT and not os.path.isdir("/proc/self/fd"):
                self._unnamed_files = False
                return None
            raise StoreError(f"cannot create {path}: {_describe_open_error(exc)}") from None
        finally:
            os.close(fd)

    def create_or_read(self, space: Space, key: str, data: bytes) -> Blob | None:
        """Looks first: a held lock is refused with one read and no change to the
        directory.  Creating stages a temporary file and links it (three changes to
        the directory, each waiting on its lock and the file system's journal), so
        processes retrying a held lock slowed its holder's release and one another."""
        self._writable(f"create of {space.name}/{key}")
        held = self.read(space, key)
        if held is not None:
            return held
        return super().create_or_read(space, key, data)

    def replace_if(self, space: Space, key: str, expected: bytes, data: bytes) -> bool:
        self._writable(f"replace of {space.name}/{key}")
        directory = self._dir(space)
        filename = self._filename(space, key)
        path = os.path.join(directory, filename)
        temp = self._stage(directory, filename, data, durable=False)
        try:
            with self._holding(path, key) as fd:
                if fd is None or _read_fd(fd, key) != expected:
                    return False
                return self._publish(temp, path, fd)
        finally:
            _unlink_quietly(temp)

    def delete_if(self, space: Space, key: str, expected: bytes) -> bool:
        self._writable(f"delete of {space.name}/{key}")
        path = os.path.join(self._dir(space), self._filename(space, key))
        try:
            with self._holding(path, key) as fd:
                if fd is None or _read_fd(fd, key) != expected:
                    return False
                return _unlink_quietly(path)
        except EntryUnreadable:
            return False

    def delete(self, space: Space, key: str) -> bool:
        self._writable(f"delete of {space.name}/{key}")
        path = os.path.join(self._dir(space), self._filename(space, key))
        try:
            with self._holding(path, key) as fd:
                return fd is not None and _unlink_quietly(path)
        except EntryUnreadable:
            return _unlink_quietly(path)  # not a file of ours: nobody holds it

    def update(self, space: Space, key: str, updater: Updater) -> bytes | None:
        self._writable(f"update of {space.name}/{key}")
        directory = self._dir(space)
        filename = self._filename(space, key)
        path = os.path.join(directory, filename)
        if space.in_place:
            return self._update_in_place(path, key, updater)
        while True:
            with self._holding(path, key) as fd:
                before = None if fd is None else _read_fd(fd, key)
                after = updater(before)
                if after is None or after == before:
                    return before
                temp = self._stage(directory, filename, after, durable=False)
                if self._publish(temp, path, fd):
                    return after
            # created by someone else meanwhile: update theirs

    def _update_in_place(self, path: str, key: str, updater: Updater) -> bytes | None:
        """Read-modify-write of a two-slot record (:mod:`.twin_slots`) under an exclusive
        ``flock`` of the file, which is replaced only to be created or grown."""
        with self._thread_locks[zlib.crc32(os.fsencode(path)) % THREAD_STRIPES]:
            while True:
                fd = self._in_place_fd(path)
                if fd is None:  # absent: create it whole, or learn that someone else just did
                    after = updater(None)
                    if after is None:
                        return None
                    temp = self._stage(os.path.dirname(path), os.path.basename(path), twin_slots.new_file(after), False)
                    if self._publish(temp, path, None):
                        return after
                    continue
                try:
                    _flock_within(fd, fcntl.LOCK_EX, time.monotonic() + self.guard_wait_s, path, self.guard_wait_s)
                    try:
                        st = os.fstat(fd)
                        if st.st_nlink:
                            return self._rewrite_slot(fd, st, path, updater)
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError as exc:
                    raise StoreError(f"cannot update {path}: {_describe_open_error(exc)}") from None
                # Replaced or removed since we opened it: writes would go nowhere; reopen.
                self._forget_in_place_fd(path)

    def _rewrite_slot(self, fd: int, st: os.stat_result, path: str, updater: Updater) -> bytes | None:
        data = _read_whole(fd, st, path) if st.st_size else b""
        found = twin_slots.newest(data, self._slots_written.get(path)) if twin_slots.is_slotted(data) else None
        before = found[0] if found is not None else (data or None)
        after = updater(before)
        if after is None or after == before:
            return before
        sequence = found[1] + 1 if found is not None else 1
        slot = twin_slots.encode_slot(after, sequence)
        if found is None or len(slot) > st.st_size // 2:
            # Older plain JSON, garbage, or outgrown: a new file, whole, in its place.
            temp = self._stage(os.path.dirname(path), os.path.basename(path), twin_slots.new_file(after, sequence), False)
            self._publish(temp, path, fd)  # our descriptor now names a removed file: reopened next time
            return after
        offset = (1 - found[2]) * (st.st_size // 2)  # the older slot; the newest stays intact
        self._slots_written.pop(path, None)
        written = os.pwrite(fd, slot, offset)
        if written != len(slot):
            raise StoreError(f"cannot update {path}: {written} of {len(slot)} bytes written (disk full?)")
        if len(self._slots_written) >= 256:
            self._slots_written.pop(next(iter(self._slots_written)))
        self._slots_written[path] = (sequence, after)
        return after

    def _in_place_fd(self, path: str) -> int | None:
        self._forget_descriptors_after_fork()
        fd = self._in_place_fds.get(path)
        if fd is None:
            self._ensure_dir(os.path.dirname(path))
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StoreError(f"cannot open {path}: {_describe_open_error(exc)}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise StoreError(f"cannot open {path}: not a regular file")
            if len(self._in_place_fds) >= 256:
                self._forget_in_place_fd(next(iter(self._in_place_fds)))
            self._in_place_fds[path] = fd
        return fd

    def _forget_in_place_fd(self, path: str) -> None:
        fd = self._in_place_fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    # --------------------------------------------------------------- events
    # The log is a series of numbered segments (pi-dash/events/000001.jsonl, ...).
    # A segment number is never reused, so a cursor (segment << 40 | offset)
    # names one file forever: a reader can never mistake a newer file for the
    # one it was reading, whatever the inode numbers do.
    def _segments(self) -> list[int]:
        try:
            names = os.listdir(os.path.join(self._root, EVENTS_DIR))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {os.path.join(self._root, EVENTS_DIR)}: {_describe_open_error(exc)}") from None
        return sorted(int(n[:-6]) for n in names if n.endswith(".jsonl") and n[:-6].isdigit())

    def event_log_problems(self) -> list[tuple[str, str]]:
        problems = []
        for number in self._segments():
            path = self._segment_path(number)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                reason = "is a symbolic link; not followed" if stat.S_ISLNK(mode) else "not a regular file"
                problems.append((os.path.relpath(path, self._root), reason))
        return problems

    def _segment_path(self, number: int) -> str:
        return os.path.join(self._root, EVENTS_DIR, f"{number:06d}.jsonl")

    def append_event(self, data: bytes) -> None:
        """Append one line, all of it or a raised error, without any lock: one ``O_APPEND``
        write per line.  A line a full disk cut short stays a fragment that the next append
        ends (it starts with a newline when the log does not end with one) and readers
        report; past ``EVENTS_MAX_BYTES`` a new segment starts and the oldest go."""
        self._writable("appending an event")
        if not data.strip() or b"\n" in data:
            raise ValueError("an event must be one non-empty line")
        self._ensure_dir(os.path.join(self._root, EVENTS_DIR))
        segments = self._segments() or [1]
        path = self._segment_path(segments[-1])
        try:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(path, flags, 0o600)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise StoreError(f"{path} is not a regular file; event not written")
                line = data + b"\n"
                if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                    line = b"\n" + line  # after a torn line: start a fresh one
                written = os.write(fd, line)
                if written != len(line):
                    raise StoreError(f"cannot append to {path}: {written} of {len(line)} bytes written (disk full?)")
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > EVENTS_MAX_BYTES:
                _create_empty(self._segment_path(segments[-1] + 1))
                for old in segments[: -(EVENTS_SEGMENTS_KEPT - 1) or None]:
                    _unlink_quietly(self._segment_path(old))
        except OSError as exc:
            raise StoreError(f"cannot append to {path}: {_describe_open_error(exc)}") from None

    def read_events(self, cursor: int = 0, limit: int = 1000) -> tuple[list[bytes], int]:
        segment, offset = cursor >> 40, cursor & ((1 << 40) - 1)
        events: list[bytes] = []
        for number in self._segments():
            if number < segment:
                continue
            if number > segment:
                segment, offset = number, 0  # the next segment, or the oldest kept after falling behind
            lines, offset = _read_lines(self._segment_path(number), offset, limit - len(events))
            events.extend(lines)
            if len(events) >= limit:
                break
        return events, (segment << 40) | offset

    def sweep(self, older_than_ms: int) -> int:
        """Remove temporary files that crashed writers left behind."""
        self._writable("sweeping temporary files")
        cutoff_ns = time.time_ns() - older_than_ms * 1_000_000
        removed = 0
        for space in ALL_SPACES:
            try:
                entries = list(os.scandir(self._dir(space)))
            except OSError:
                continue
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime_ns < cutoff_ns:
                        removed += _unlink_quietly(entry.path)
                except OSError:
                    continue
        return removed


def _make_private_dirs(path: str) -> None:
    """Like ``os.makedirs(path, 0o700)``, but every directory it creates is 0700, not only the last."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


def _flock_within(fd: int, operation: int, deadline: float, what: str, wait_s: float) -> None:
    """``flock``, waiting at most until ``deadline``: a holder stopped inside its guard
    (Ctrl-Z, a debugger, a paused VM) must not stop everyone else with it.  Linux has no
    timed ``flock``, so it polls: briefly at first (a guard is held for microseconds), at
    most a millisecond apart."""
    pause = 0.00005
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"{what}: locked by another process for more than {wait_s:g} s (stopped or starved?); "
                    "nothing was changed, try again"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


def _still_named(path: str, st: os.stat_result) -> bool:
    """Whether the file ``st`` describes is still the one under ``path``."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def _read_whole(fd: int, st: os.stat_result, key: str) -> bytes:
    """All of a file, by offset (the descriptor may be shared), capped at ``MAX_BLOB_BYTES``."""
    if st.st_size > MAX_BLOB_BYTES:
        raise EntryUnreadable(key, f"{st.st_size} bytes is larger than the {MAX_BLOB_BYTES} allowed")
    # One read of size+1 normally returns the whole file and proves the end; a
    # file that grew meanwhile is read on to the cap.
    chunks = [os.pread(fd, st.st_size + 1, 0)]
    total = len(chunks[0])
    while total > st.st_size and total <= MAX_BLOB_BYTES:
        chunk = os.pread(fd, 1 << 20, total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > MAX_BLOB_BYTES:
        raise EntryUnreadable(key, f"larger than the {MAX_BLOB_BYTES} bytes allowed")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_fd(fd: int, key: str) -> bytes:
    try:
        return _read_whole(fd, os.fstat(fd), key)
    except OSError as exc:
        raise EntryUnreadable(key, exc.strerror or str(exc)) from None


def _write_all(fd: int, data: bytes) -> None:
    """Every byte, or an ``OSError``: a write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
# What open(O_TMPFILE) answers where unnamed files are not supported: the file
# system (EOPNOTSUPP), or a kernel older than 3.11 that takes it for O_DIRECTORY (EISDIR).
_NO_UNNAMED_FILES = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL)


def _read_staged(temp: str) -> bytes:
    with open(temp, "rb") as staged:
        return staged.read()


def _create_exclusive(path: str, data: bytes) -> bool:
    """Create-if-absent for file systems without hard links: ``O_EXCL`` still decides
    who creates, and a failed write removes the partial file before raising."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(path)
        raise StoreError(f"cannot create {path}: {_describe_open_error(exc)}") from None
    os.close(fd)
    return True


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _create_empty(path: str) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


def _read_lines(path: str, offset: int, limit: int) -> tuple[list[bytes], int]:
    """Whole lines from ``offset`` (a line still being appended is left for next time).

    Blank lines are skipped: an appender that saw the log end mid-line (a torn
    line, or another append still being copied) starts its own with a newline."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return [], offset  # gone, a symlink, unreadable: nothing to follow
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [], offset
        data = os.pread(fd, EVENTS_MAX_BYTES * 2, offset)
    except OSError:
        return [], offset
    finally:
        os.close(fd)
    end = data.rfind(b"\n")
    if end < 0 or limit <= 0:
        return [], offset
    lines: list[bytes] = []
    for line in data[:end].split(b"\n"):
        offset += len(line) + 1
        if line:
            lines.append(line)
            if len(lines) == limit:
                break
    return lines, offset


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a file given by the user (``--config``, ``$PI_CONFIG``): symbolic links
    are followed, as for any file a user names, but only a regular file is read, and at
    most ``max_bytes`` of it.  The open never blocks (a FIFO), the read never runs away
    (``/dev/zero``).  Raises :class:`FileNotFoundError`, or :class:`EntryUnreadable`
    with a reason for the user."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise EntryUnreadable(os.fsdecode(name), _describe_open_error(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EntryUnreadable(os.fsdecode(name), "not a regular file")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise EntryUnreadable(os.fsdecode(name), f"larger than the {max_bytes} bytes allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise EntryUnreadable(os.fsdecode(name), exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot remove {path}: {_describe_open_error(exc)}") from None


def _describe_open_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link; not followed"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.ENXIO:
        return "not a regular file"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or str(exc)
