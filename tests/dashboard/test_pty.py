"""The bytes a real terminal receives from ``pi-dash`` over hostile records.

Textual's model of the screen can look clean while the bytes written to the
terminal are not, so this runs the real command on a pseudo-terminal, opens the
details of a hostile instance, quits, and reads everything written.  Every
piece of user text carries a unique marker followed by a payload of escape
sequences (one sets the window title to ``PWNED``), a BEL, a C1 CSI, a bidi
override and markup; Textual itself writes no C1 control, U+202E, NUL or
title sequence, and BEL only to end its own mouse-pointer sequence
(``ESC ] 22 ; shape BEL``), so any of those bytes elsewhere came from a record.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from .conftest import FIXTURE
from .hostile_records import write_hostile_records

COLUMNS, ROWS = 200, 60
# Raw payload bytes that only a record can have put there.
FORBIDDEN = {
    "title sequence": b"\x1b]0;PWNED",
    "BEL": b"\x07",
    "C1 CSI": b"\xc2\x9b",
    "right-to-left override": b"\xe2\x80\xae",
    "NUL": b"\x00",
}
TEXTUAL_POINTER = re.compile(rb"\x1b\]22;[a-z-]*\x07")
ESCAPED_TITLE = rb"\x1b]0;PWNED\x07\x1b[2J\x9b31m\u202e[/]"


def readable(fd: int, timeout: float) -> bool:
    """poll, not select: a test process may hold more than FD_SETSIZE descriptors."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def read_until(fd: int, buffer: bytearray, pattern: bytes, timeout: float) -> bool:
    """Read from ``fd`` into ``buffer`` until ``pattern`` shows up (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while pattern not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if readable(fd, min(left, 0.2)):
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                return pattern in buffer
            if not chunk:
                return pattern in buffer
            buffer += chunk
    return True


def drain(fd: int, buffer: bytearray, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if readable(fd, 0.2):
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
        elif process.poll() is not None:
            return


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["C.UTF-8", "C"])
def test_no_raw_control_byte_from_a_record_reaches_the_terminal(tmp_path: Path, lang: str) -> None:
    root = tmp_path / "runtime"
    shutil.copytree(FIXTURE, root)
    markers = write_hostile_records(root)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "LANG": lang,
        "LC_ALL": lang,
        "TZ": "UTC",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "COLUMNS": str(COLUMNS),
        "LINES": str(ROWS),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pi_dashboard", "--root", str(root)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    output = bytearray()
    try:
        assert read_until(master, output, b"PWNED", 60), bytes(output[-2000:])
        # Open the details of the first row (the instance whose id is a payload sorts first), then quit.
        os.write(master, b"\r")
        assert read_until(master, output, b"heartbeat age", 30), "the details screen did not open"
        time.sleep(0.5)
        os.write(master, b"q")  # closes the details screen
        time.sleep(0.5)
        os.write(master, b"q")  # quits
        drain(master, output, process, 30)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    written = TEXTUAL_POINTER.sub(b"", bytes(output))
    leaks = {name: written.count(raw) for name, raw in FORBIDDEN.items() if raw in written}
    assert not leaks, leaks
    assert b"Traceback" not in written
    # The payloads did reach the screen, escaped: after a marker comes its payload's escaped spelling.
    shown = set(re.findall(rb"(MK\d\dQ)" + re.escape(ESCAPED_TITLE), written))
    assert shown, sorted(markers)  # (core skips the records it refuses: not every marker is on screen)
    assert {m.decode() for m in shown} <= set(markers)
