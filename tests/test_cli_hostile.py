"""The command line over hostile fleets: exit status, one-line failures, valid output, closed pipes.

Every command exits 0 only when it did its job and otherwise says why in one
line (no traceback); JSON is valid UTF-8 whatever the file names and the
locale; text output is valid in the locale's encoding; a reader that goes away
(``| head``) ends the command quietly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_dashboard.cli import EXIT_PIPE_CLOSED, main

from tests.dashboard.conftest import FIXTURE, NOW
from tests.dashboard.hostile_records import DEAD_AGO, instance_record, write_hostile_records

UNSAFE = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xaa-\xae]|\xe2\x81[\xa6-\xa9]")
UNDECODABLE = "sess-\\xff\\xfe-pid7003-h-dead"  # the file name's two bad bytes, as every output spells them
LOCALES = {
    "utf-8": {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
    "C": {"LANG": "C", "LC_ALL": "C"},
    "C, no coercion": {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
}


def pi_dash(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pi_dashboard", *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )


def one_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8")
    assert "Traceback" not in text and text.count("\n") == 1 and text.startswith("pi-dash: "), text
    return text


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "runtime"
    shutil.copytree(FIXTURE, root)
    write_hostile_records(root)
    return root


@pytest.mark.parametrize("locale", LOCALES.values(), ids=LOCALES.keys())
def test_json_is_valid_utf8_whatever_the_names_and_locale(hostile_root: Path, locale: dict[str, str]) -> None:
    for command in (["status", "--json"], ["limits", "--json"]):
        result = pi_dash(*command, "--root", str(hostile_root), env=locale)
        assert result.returncode == 0 and result.stderr == b"", result.stderr
        document = json.loads(result.stdout.decode("utf-8"))  # strict: any invalid byte raises
        if command[0] == "status":
            keys = {instance["key"] for instance in document["instances"]}
            assert UNDECODABLE in keys or "sess-\udcff\udcfe-pid7003-h-dead" in keys  # escaped, never raw bytes
            cwds = {instance["info"]["cwd"] for instance in document["instances"] if instance["info"]}
            assert any(re.fullmatch("MK\\d\\dQ\x1b]0;PWNED\x07.*", cwd, re.S) for cwd in cwds)  # data stays data in JSON


@pytest.mark.parametrize("locale", LOCALES.values(), ids=LOCALES.keys())
def test_text_is_valid_in_the_locale_and_escapes_user_text(hostile_root: Path, locale: dict[str, str]) -> None:
    result = pi_dash("status", "--root", str(hostile_root), env=locale)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    encoding = "ascii" if locale.get("PYTHONCOERCECLOCALE") == "0" else "utf-8"
    text = result.stdout.decode(encoding)
    assert not UNSAFE.search(result.stdout.replace(b"\n", b"")), UNSAFE.findall(result.stdout)
    assert UNDECODABLE in text and re.search(r"MK\d\dQ\\x1b\]0;PWNED\\x07\\x1b\[2J\\x9b31m\\u202e\[/\]", text)


def test_snapshot_of_hostile_records_writes_a_clean_frame_and_exits_0(hostile_root: Path, tmp_path: Path) -> None:
    """Before: an event at 1e17 crashed the app; the traceback was printed, the file written, the status 0."""
    output = tmp_path / "frame.svg"
    result = pi_dash("snapshot", "--root", str(hostile_root), "-o", str(output), "--width", "200", "--height", "60")
    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stderr and result.stdout.startswith(b"wrote ")
    svg = output.read_bytes()
    assert not UNSAFE.search(svg.replace(b"\n", b"")) and b"MK" in svg


def test_a_snapshot_of_a_failed_app_is_no_snapshot(fleet_copy: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from pi_dashboard.app import PiDashApp

    def broken(self, state):
        raise RuntimeError("a bug")

    monkeypatch.setattr(PiDashApp, "_render_state", broken)
    output = tmp_path / "frame.svg"
    assert main(["snapshot", "--root", str(fleet_copy), "-o", str(output)]) == 1
    assert not output.exists()
    assert capsys.readouterr().err.splitlines()[-1] == "pi-dash: no snapshot written: the dashboard stopped with status 1"


@pytest.fixture
def fleet_copy(tmp_path: Path) -> Path:
    root = tmp_path / "runtime"
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough instances that the output is far more than a pipe holds."""
    root = tmp_path_factory.mktemp("big") / "runtime"
    shutil.copytree(FIXTURE, root)
    for n in range(1_500):
        iid = f"sess-{n:08x}-pid{20_000 + n}-big"
        (root / "instances" / f"{iid}.lock").write_text(json.dumps(instance_record(iid, pid=20_000 + n, beat_ago=DEAD_AGO, text=f"/w/{n}")))
    return root


@pytest.mark.parametrize("command", [["status"], ["status", "--json"]], ids=["text", "json"])
def test_a_closed_pipe_ends_quietly(big_root: Path, command: list[str]) -> None:
    """``pi-dash status | head -1``: before, a BrokenPipeError traceback (text) or silently cut output and 0 (JSON)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pi_dashboard", *command, "--root", str(big_root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == EXIT_PIPE_CLOSED
    assert first and stderr == b"", stderr


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["status", "--root", "/nonexistent/pi-dash"], 2, "does not exist"),
        (["status", "--redis", "redis://127.0.0.1:1/0"], 2, "127.0.0.1:1"),
        (["limits", "--root", str(FIXTURE), "--provider", "nope"], 1, None),
        (["snapshot", "--root", str(FIXTURE), "-o", "/nonexistent/dir/x.svg"], 2, "no directory"),
    ],
    ids=["missing-root", "redis-gone", "no-such-provider", "unwritable-output"],
)
def test_failures_exit_non_zero_in_one_line(args: list[str], status: int, says: str | None) -> None:
    result = pi_dash(*args)
    assert result.returncode == status, result.stderr
    if says is not None:
        assert says in one_line(result.stderr)


# ------------------------------------------------------------ any text at all
NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(lambda t: "/" not in t and "\x00" not in t)
TEXT = st.text(max_size=30)  # every code point, lone surrogates included


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, text=TEXT, raw_name=st.binary(min_size=1, max_size=8))
def test_status_and_json_survive_any_text(tmp_path_factory, capsysbinary, name: str, text: str, raw_name: bytes) -> None:
    root = tmp_path_factory.mktemp("any") / "runtime"
    shutil.copytree(FIXTURE, root)
    folder = os.fsencode(root / "instances")
    for file_name, record in (
        (os.fsencode(name) + b".lock", instance_record(text or "x", pid=4242, beat_ago=1_000, text=text, **{text: text})),
        (raw_name.replace(b"/", b"_").replace(b"\x00", b"_") + b"-raw.lock", instance_record("raw", pid=4243, beat_ago=DEAD_AGO, text=text)),
    ):
        try:
            with open(os.path.join(folder, file_name), "w", encoding="utf-8", errors="surrogatepass") as out:
                json.dump(record, out)
        except OSError:
            continue  # a name the file system refuses (too long)
    with open(root / "pi-dash" / "events" / "000001.jsonl", "a", encoding="utf-8", errors="surrogatepass") as log:
        log.write(json.dumps({"at": NOW, "kind": text, "message": text}) + "\n")
    capsysbinary.readouterr()
    assert main(["status", "--root", str(root), "--json"]) == 0
    json.loads(capsysbinary.readouterr().out.decode("utf-8"))
    assert main(["status", "--root", str(root)]) == 0
    out = capsysbinary.readouterr().out
    out.decode("utf-8")
    assert not UNSAFE.search(out.replace(b"\n", b""))
