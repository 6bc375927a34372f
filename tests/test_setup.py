"""The two commands' set-up (Makefile): Python >= 3.11 is required in one line, and a .venv made by an
older (or vanished) Python is rebuilt, saying so, instead of being reused silently (issue 26)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "Makefile", folder)
    shutil.copy(ROOT / "pyproject.toml", folder)  # the venv's stamp is named after its checksum
    return subprocess.run(["make", "--no-print-directory", "venv-check", *args], cwd=folder, capture_output=True,
                          text=True, timeout=60)


def _fake_python(path: Path, version: str) -> Path:
    """A `python` that says it is `version` and fails anything else (an interpreter too old to run our check)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nif [ "$1" = "-V" ]; then echo "Python {version}"; exit 0; fi\nexit 1\n')
    path.chmod(0o755)
    return path


def test_a_venv_made_by_an_older_python_is_rebuilt_saying_so(tmp_path):
    _fake_python(tmp_path / ".venv" / "bin" / "python", "3.9.18")
    done = _make(tmp_path, f"PYTHON={sys.executable}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f".venv was made by Python 3.9.18 (not a working Python >= 3.11): rebuilding it with Python "
        f"{sys.version.split()[0]}"]
    assert not (tmp_path / ".venv").exists()


def test_a_good_venv_is_kept_quietly(tmp_path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    done = _make(tmp_path, f"PYTHON={sys.executable}")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert (tmp_path / ".venv" / "bin" / "python").exists()


def test_an_old_system_python_is_refused_in_one_line(tmp_path):
    old = _fake_python(tmp_path / "bin" / "python3", "3.10.4")
    done = _make(tmp_path, f"PYTHON={old}")
    assert done.returncode != 0
    first = done.stderr.strip().splitlines()[0]
    assert first == (f"error: cryptobt needs Python >= 3.11; {old} is Python 3.10.4: install 3.11 or newer and "
                     "run: make PYTHON=python3.11 ...")
