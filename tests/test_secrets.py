"""Issue 25, item 17: secrets. A password in any DSN form is never stored (lake manifest), never
printed, never on a child process's argv; `.env` is read from the working directory only.
Real PostgreSQL (trust authentication ignores the password, so the export runs and must carry it),
real psql, the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.source import loaders

PROJECT = Path(__file__).resolve().parents[1]
SECRET = "notsecretpw"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _key_value(url: str, **secrets: str) -> str:
    """The libpq key=value form of a postgresql:// URL, plus `secrets` (password, sslpassword)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(url), **secrets})


@pytest.fixture
def psql_log(tmp_path) -> tuple[Path, Path]:
    """A `psql` first on PATH that records each argv and the secrets in its environment, then runs
    the real psql. (bin folder, log)."""
    real = shutil.which("psql")
    if real is None:
        pytest.skip("psql is not installed: the export reads through psycopg and starts no subprocess")
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "argv.log"
    wrapper = folder / "psql"
    wrapper.write_text(f'#!/bin/sh\nprintf "ARGV %s\\n" "$*" >> {log}\n'
                       f'printf "ENV %s\\n" "$PGPASSWORD" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return folder, log


def _url(url: str, **secrets: str) -> str:
    """The postgresql:// URL with the password in its user part and any other secret as a query parameter."""
    if "password" in secrets:
        url = url.replace("postgres@", f"postgres:{secrets.pop('password')}@")
    return url + "".join(f"{'&' if i else '?'}{k}={v}" for i, (k, v) in enumerate(secrets.items()))


@pytest.mark.parametrize("form", [_key_value, _url], ids=["key=value", "url"])
@pytest.mark.parametrize("secrets", [{"password": SECRET}, {"password": SECRET, "sslpassword": SECRET + "2"},
                                     {"sslpassword": SECRET + "2"}],
                         ids=["password", "password+sslpassword", "sslpassword"])
def test_a_dsn_password_is_neither_stored_printed_nor_on_argv(database_url, tmp_path, psql_log, secrets, form):
    """A `psql` first on PATH records the argv and environment of every export subprocess, then runs
    the real psql: a password reaches psql through its environment only; sslpassword, which libpq
    reads from no variable, never reaches a subprocess."""
    loaders.seed_database(database_url, 3, 0.05, 1)
    folder, log = psql_log
    dsn = form(database_url, **secrets)
    assert SECRET in dsn
    lake = tmp_path / "lake"
    env = {**os.environ, "DATABASE_URL": dsn, "CRYPTOBT_LAKE_ROOT": str(lake), "REDIS_URL": "",
           "PYTHONPATH": str(PROJECT), "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    printed = ""
    for args in (["export", "--no-prefect"], ["lake", "snapshots", "--json"], ["db", "init"]):
        done = _cli(args, env, tmp_path)
        printed += done.stdout + done.stderr
        assert done.returncode == 0, done.stderr
    assert SECRET not in printed, printed
    stored = [p for p in lake.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not stored, f"the password is stored in {stored}"
    manifests = [json.loads(p.read_text()) for p in lake.rglob("_manifest.json")]
    assert manifests and all(m["source"].startswith("postgresql://") for m in manifests), manifests
    recorded = log.read_text().splitlines() if log.exists() else []
    argv = [line for line in recorded if line.startswith("ARGV")]
    assert not any(SECRET in line for line in argv), argv[:1]
    if "sslpassword" in secrets:
        # libpq reads sslpassword from no environment variable: no child process may carry it at all.
        assert not argv, "psql was started with an sslpassword to pass"
    else:
        assert argv, "the export ran psql"
        assert all(line == f"ENV {SECRET}" for line in recorded if line.startswith("ENV"))


def test_the_source_of_a_snapshot_is_the_same_for_a_url_and_its_key_value_form(database_url):
    from pipeline.source import postgres as source

    assert source.source_id(_key_value(database_url, password=SECRET)) == source.source_id(database_url)
    assert source.source_id(database_url.replace("postgres@", f"postgres:{SECRET}@")) == source.source_id(
        database_url)


@pytest.mark.parametrize("text", [
    f"postgresql://u:{SECRET}@h/db", f"postgresql://u@h/db?password={SECRET}",
    f"postgresql://u@h/db?sslmode=require&sslpassword={SECRET}", f"host=h password={SECRET} dbname=x",
    f"host=h password='{SECRET} x' dbname=x", f"host=h sslpassword={SECRET} dbname=x",
    f"host=h password = {SECRET} dbname=x", f"cannot connect to host=h PASSWORD={SECRET}",
])
def test_redact_covers_every_dsn_form(text):
    from pipeline.core.config import redact

    assert SECRET not in redact(text) and "***" in redact(text)


def _user_strategy_folder(where: Path) -> Path:
    folder = where / "strategies"
    folder.mkdir(parents=True)
    shutil.copy(PROJECT / "examples" / "strategies" / "donchian.py", folder / "donchian.py")
    return folder


@pytest.mark.slow
def test_a_dotenv_in_a_parent_folder_is_not_read(tmp_path):
    parent = tmp_path / "above"
    work = parent / "project"
    work.mkdir(parents=True)
    (parent / ".env").write_text(f"CRYPTOBT_STRATEGY_PATH={_user_strategy_folder(tmp_path / 'code')}\n")
    env = {k: v for k, v in os.environ.items() if k != "CRYPTOBT_STRATEGY_PATH"}
    env["PYTHONPATH"] = str(PROJECT)
    listed = _cli(["strategies", "--json"], env, work)
    assert listed.returncode == 0, listed.stderr
    assert "donchian" not in [s["name"] for s in json.loads(listed.stdout)], "a parent folder's .env was read"
    # The same .env in the working folder is read (the test sees a .env when there is one to see).
    (work / ".env").write_text((parent / ".env").read_text())
    listed = _cli(["strategies", "--json"], env, work)
    assert "donchian" in [s["name"] for s in json.loads(listed.stdout)]
