"""``pi-dash status``: the table, the JSON, and clear failures."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from core.coordinator import Coordinator
from pi_dashboard.cli import main
from pi_dashboard.text import UserText, clip_middle, duration


def _fleet(root) -> Coordinator:
    coordinator = Coordinator(root=root)
    coordinator.register("sessionAAAA", "/home/u/\x1b[2Jproject", heartbeat=False)
    coordinator.set_active_model("openai", "gpt-4o")
    coordinator.update_workload(4)
    (root / "instances" / "torn.lock").write_text('{"instanceId": ')
    return coordinator


def test_status_prints_a_table_with_escaped_user_text(root, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    coordinator = _fleet(root)
    assert main(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert coordinator.instance_id in out
    assert "openai/gpt-4o" in out and "alive" in out and "corrupt" in out
    assert "\x1b" not in out and "\\x1b[2Jproject" in out
    assert "instances/torn.lock: corrupt" in out


def test_status_json_is_machine_readable(root, capsys):
    coordinator = _fleet(root)
    assert main(["--root", str(root), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["figures"]["activeCount"] == 1
    (alive,) = [i for i in data["instances"] if i["status"] == "alive"]
    assert alive["info"]["instanceId"] == coordinator.instance_id
    assert alive["info"]["cwd"] == "/home/u/\x1b[2Jproject"  # data stays data in JSON


def test_missing_root_exits_non_zero_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pi_dashboard", "status", "--root", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_root_from_environment(root, capsys, monkeypatch):
    _fleet(root)
    monkeypatch.setenv("PI_RUNTIME_DIR", str(root))
    assert main(["status"]) == 0
    assert str(root) in capsys.readouterr().out


def test_text_helpers():
    assert UserText("a\x1b[31mb\x07").shown == "a\\x1b[31mb\\x07"
    assert UserText("ü ok").shown == "ü ok"
    assert clip_middle("/very/long/path/project", 10) == "/ver…oject"
    assert clip_middle("日本語のパス/長い", 9) == "日本…長い"  # cells, not characters: wide ones count twice
    assert [duration(ms) for ms in (None, 850, 12_000, 245_000, 3 * 3_600_000 + 720_000)] == [
        "-", "850ms", "12s", "4m05s", "3h12m"
    ]


def test_limits_shows_each_provider_usage_and_backoff(root, capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        '{"crossInstance": {"providers": {"openai": {"requestsPerMinute": 1000, "burst": 200,'
        ' "models": {"gpt-4o": {"requestsPerMinute": 300}}}, "anthropic": {"burst": -1}}}}'
    )
    coordinator = Coordinator(root=root, env={"PI_CONFIG": str(config)})
    coordinator.register(heartbeat=False)
    for _ in range(3):
        with coordinator.llm_slot("openai", "gpt-4o"):
            pass
    with coordinator.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=30)
    assert main(["limits", "--root", str(root), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Provider: openai\n  Requests/minute: 1000 (effective 900 after 429s)\n  Burst: 200\n  Current usage: 4/900" in out
    assert "Model gpt-4o: 300/minute" in out and "Backoff: gpt-4o for" in out
    assert "Provider: anthropic\n  Requests/minute: 50\n  Burst: 25" in out  # bad entry: default kept
    assert "crossInstance.providers.anthropic.burst: Input should be greater than 0" in out
    assert main(["limits", "--root", str(root), "--config", str(config), "--provider", "openai", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["providers"]
    assert (row["requestsPerMinute"], row["effectiveRequestsPerMinute"], row["usedLastMinute"]) == (1000, 900, 4)
    assert row["backoffs"][0]["model"] == "gpt-4o" and row["backoffs"][0]["remainingMs"] > 0
    assert main(["limits", "--root", str(root), "--provider", "nope"]) == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--workers", "0"], "--workers: must be at least 1"),
        (["demo", "--workers", "many"], "'many' is not a whole number"),
        (["--redis", "notaurl", "status"], "'notaurl' is not a Redis URL"),
        (["--redis", "notaurl"], "'notaurl' is not a Redis URL"),
        (["snapshot", "-o", "/no/such/dir/x.svg", "--root", "."], "there is no directory /no/such/dir"),
        (["--theme", "nope", "--root", "."], "no theme named 'nope'; there are: pi-dark, pi-high-contrast, pi-light"),
        (["statsu"], "invalid choice: 'statsu'"),
    ],
)
def test_ordinary_mistakes_are_one_line_and_a_non_zero_exit(tmp_path, argv, says):
    result = subprocess.run(
        [sys.executable, "-m", "pi_dashboard", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert result.stderr.startswith("pi-dash")


def test_a_directory_that_is_no_fleet_says_so(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not pi's")
    assert main(["status", "--root", str(tmp_path)]) == 0
    assert "not a coordination directory" in capsys.readouterr().out.splitlines()[0]
    empty = tmp_path / "fresh"
    empty.mkdir()
    assert main(["status", "--root", str(empty)]) == 0
    assert "not a coordination directory" not in capsys.readouterr().out  # unused yet, not wrong


def test_status_names_the_zone_of_its_local_time(root, capsys, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        _fleet(root)
        assert main(["status", "--root", str(root)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert first.endswith(("IST", "+0530")), first


def test_status_json_to_a_text_stream(root):
    """stdout redirected to a text stream inside a program (no binary buffer) still gets the JSON."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--root", str(root), "status", "--json"]) == 0
    assert "figures" in json.loads(out.getvalue())
