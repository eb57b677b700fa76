"""Real faults for ``core``'s directory store: stopped processes, kills between system
calls, full disks, read-only mounts, other users.  Each helper skips, saying why,
only where this machine lacks the means (root, ``strace``, ``mount``)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ACTOR_TIMEOUT_S = 30.0  # python start-up on a loaded 2-core machine, plus the store's 2 s guard wait


@dataclass(frozen=True)
class Outcome:
    """How one actor process ended: ``hung`` (killed after the timeout), ``killed`` by a
    signal, a ``result`` line, or a raw exception (``untyped``, its traceback in ``stderr``)."""

    returncode: int | None
    result: dict[str, Any] | None
    stderr: str
    hung: bool = False

    @property
    def killed(self) -> bool:
        return self.returncode is not None and self.returncode < 0

    @property
    def untyped(self) -> bool:
        return not self.hung and not self.killed and self.result is None

    @property
    def typed_error(self) -> str | None:
        return None if self.result is None else self.result.get("error")


def actor_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.faults.actors", json.dumps(spec)]


def actor_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc writes: every write a test kills is the store's
    return env


def start_actor(spec: dict[str, Any], prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, *actor_command(spec)], cwd=REPO, env=actor_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = ACTOR_TIMEOUT_S) -> Outcome:
    """Wait for an actor; one still running after ``timeout_s`` is killed and counted as hung."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    results = [line for line in lines if "ok" in line or "error" in line]
    return Outcome(None if hung else proc.returncode, results[-1] if results else None, err, hung)


def run_actor(spec: dict[str, Any], prefix: tuple[str, ...] = (), timeout_s: float = ACTOR_TIMEOUT_S) -> Outcome:
    return finish(start_actor(spec, prefix), timeout_s)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mount, or switching to another uid); this run is uid {os.geteuid()}")


def require_strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    probe = subprocess.run([path, "-f", "-o", "/dev/null", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (no ptrace?): {probe.stderr.strip()}")
    return path


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {done.stderr.strip()}")


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True)


@contextmanager
def small_tmpfs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB, gone afterwards."""
    require_root("a small tmpfs")
    where = tempfile.mkdtemp(prefix="pi-dash-tmpfs-")
    _mount("-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", where)
    try:
        yield Path(where)
    finally:
        _umount(where)
        os.rmdir(where)


@contextmanager
def read_only_view(source: Path) -> Iterator[tuple[Path, Any]]:
    """``source`` bind-mounted read-only elsewhere, and a function that makes it writable again."""
    require_root("a read-only bind mount")
    where = tempfile.mkdtemp(prefix="pi-dash-ro-")
    _mount("--bind", str(source), where)
    try:
        _mount("-o", "remount,bind,ro", where)

        def make_writable() -> None:
            _mount("-o", "remount,bind,rw", where)

        yield Path(where), make_writable
    finally:
        _umount(where)
        os.rmdir(where)


def fill_to_last_byte(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 16, 1 << 12, 1 << 8, 1):
            while True:
                try:
                    out.write(b"\0" * chunk)
                except OSError:
                    break
    return filler


def nobody() -> tuple[int, int]:
    require_root("another uid")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user 'nobody' to run as")
    return entry.pw_uid, entry.pw_gid


def as_user(uid: int, gid: int, body: Callable[[], Any]) -> dict[str, Any]:
    """Run ``body`` in a forked child that switched to ``uid``/``gid`` (as ``runuser`` would:
    the interpreter itself may live where that user cannot read it).  Returns
    ``{"ok": value}``, or ``{"raised": type, "message": ..., "typed": bool}``."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 0
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                result: dict[str, Any] = {"ok": body()}
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which judges it
                from core.store import StoreError

                result = {"raised": type(exc).__name__, "message": str(exc), "typed": isinstance(exc, StoreError)}
            os.write(writer, json.dumps(result).encode())
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"the child as uid {uid} failed (status {status})"
    return json.loads(data)


@contextmanager
def shared_tmp() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp_path is root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="pi-dash-faults-", dir="/tmp"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        for path in where.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
        shutil.rmtree(where, ignore_errors=True)
