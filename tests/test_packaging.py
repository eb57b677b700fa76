"""A regular install has everything: the wheel carries every data file, and ``pi-dash``
installed from it alone (not from this checkout) renders a frame in each theme."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THEMES = ("pi-dark", "pi-light", "pi-high-contrast")
LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", ".hypothesis", "tests", "screenshots")


def _data_files() -> set[str]:
    """Every file of the two packages that is not Python source: themes, CSS, scripts."""
    found = set()
    for package in ("core", "pi_dashboard"):
        for path in (REPO / package).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                found.add(path.relative_to(REPO).as_posix())
    return found


@pytest.mark.slow
def test_the_wheel_installs_and_runs_with_every_theme(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=LEFT_OUT, symlinks=False)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("pi_dash-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    wanted = _data_files()
    assert {"pi_dashboard/pi_dash.tcss", "pi_dashboard/themes/dark.toml", "core/store/lua/reserve_rate.lua"} <= wanted
    assert wanted <= packed, f"missing from the wheel: {sorted(wanted - packed)}"

    # A fresh venv with the wheel installed; its dependencies are borrowed from this one
    # through a .pth, which puts them after the venv's own site-packages: the wheel wins.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "borrowed-deps.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    # core.store.redis_store reads its Lua scripts from the package's data when imported.
    where = subprocess.run([python, "-c", "import pi_dashboard, core.coordinator, core.store.redis_store; print(pi_dashboard.__file__, core.coordinator.__file__)"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert str(REPO) not in where and where.count(str(venv)) == 2, where

    fleet = tmp_path / "runtime"
    shutil.copytree(REPO / "tests" / "fixtures" / "dashboard_fleet", fleet)
    for theme in THEMES:
        output = tmp_path / f"{theme}.svg"
        command = [venv / "bin" / "pi-dash", "snapshot", "--root", str(fleet), "--theme", theme, "-o", str(output)]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "theme" not in result.stderr
        assert "Instances" in output.read_text(encoding="utf-8")
