"""Every command, given bad values, says one line on stderr and exits non-zero: no traceback, no panel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import cli_environment

# Every test here runs the CLI in a subprocess: left out of make test-fast.
pytestmark = pytest.mark.slow

BAD = [
    ([], None),  # no command: the help, exit 0 (checked apart below)
    (["nope"], "No such command 'nope'"),
    (["backtest"], "Missing argument 'strategy'"),
    (["backtest", "rsi", "--fee", "abc"], "Invalid value for '--fee'"),
    (["backtest", "rsi", "--bogus"], "No such option: --bogus"),
    (["backtest", "nope"], "unknown strategy 'nope'"),
    (["backtest", "rsi", "--timerange", "20300101-"], "--timerange has no bars"),
    (["backtest", "rsi", "--plot", "out.svg"], ".html or .png"),
    (["backtest", "rsi", "--top", "-3"], "--top -3 is out of range"),
    (["sweep", "rsi"], "Missing option '--grid'"),
    (["sweep", "rsi", "-g", "rsi_period=a:b"], "rsi_period"),
    (["portfolio", "rsi", "--stake", "0"], "--stake '0' is out of range"),
    (["results", "top", "--n", "0"], "--n 0"),
    (["results", "sql", "SELEC nonsense"], "error"),
    (["cache", "invalidate"], "Missing option '--symbol'"),
    (["lake", "vacuum", "--keep", "0"], "--keep 0"),
    (["serve", "--export-cron", "not a cron"], "--export-cron 'not a cron' is not a cron expression"),
    (["demo", "--symbols", "0"], "--symbols 0 is out of range"),
    (["demo", "--sample", "/no/such/folder"], "--sample /no/such/folder: no such folder"),
    (["db", "seed", "--cryptos", "0"], "--cryptos 0"),
    (["db", "import", "/no/such/file.csv"], "/no/such/file.csv"),
    (["backtest", "rsi", "--top", "0"], "--top 0 is out of range"),
    (["backtest", "rsi", "--top", "abc"], "Invalid value for '--top'"),
    (["backtest", "rsi", "--timerange", "2024"], "--timerange '2024'"),
    (["backtest", "rsi", "--fee", "nan"], "--fee"),
    (["backtest", "rsi", "--initial", "0"], "--initial"),
    (["backtest", "rsi", "--interval", "7m"], "--interval '7m'"),
    (["backtest", "rsi", "--fill", "open"], "--fill 'open'"),
    (["backtest", "rsi", "-s", "SYN001", "--all"], "--symbol or --all"),
    (["backtest", "rsi", "-s", "NOPE"], "unknown symbol"),
    (["backtest", "rsi", "-p", "rsi_period=1"], "rsi_period=1"),
    (["sweep", "rsi", "-g", "rsi_period=5:10:1", "--top", "0"], "--top 0"),
    (["sweep", "rsi", "-g", "rsi_period=5:10:1", "--plot", "x.svg"], ".html or .png"),
    (["portfolio", "rsi", "--max-open", "0"], "--max-open"),
    (["portfolio", "rsi", "--top", "0"], "--top 0"),
    (["results", "top", "--strategy", "nope"], "unknown strategy 'nope'"),
    (["stats", "--hours", "nan"], "--hours nan is not a finite number"),
    (["stats", "--hours", "-1"], "--hours -1.0 is out of range"),
    (["api", "--port", "0"], "--port 0 is out of range: an integer from 1 to 65535"),
    (["lake", "vacuum", "--keep-hours", "inf"], "--keep-hours inf is not a finite number"),
    (["export", "--wait", "nan"], "--wait nan is not a finite number"),
    (["serve", "--backtest-cron", "61 * * * *"], "--backtest-cron"),
    (["demo", "--years", "nan"], "--years"),
    (["db", "seed", "--years", "nan"], "--years"),
    (["db", "seed", "--seed", "-1"], "--seed -1"),
    (["strategies", "--bogus"], "No such option: --bogus"),
]


@pytest.fixture(scope="module")
def env(build_lake) -> dict[str, str]:
    lake = build_lake(n_symbols=3, years=0.1)
    return cli_environment(lake, lake.parent / "results", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "message"), [case for case in BAD if case[1]], ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_values_give_one_line_on_stderr_and_a_nonzero_exit(env, tmp_path, args, message):
    done = _run(args, env, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout[-500:]
    assert len(lines) == 1, done.stderr
    assert message in lines[0] and "Traceback" not in done.stderr
    assert not (Path(env["CRYPTOBT_RESULTS_ROOT"])).exists(), "nothing is written on bad input"


def test_no_command_prints_help_and_version_prints_the_version(env, tmp_path):
    done = _run([], env, tmp_path)
    assert done.returncode == 0 and "Usage" in done.stdout and "backtest" in done.stdout
    version = _run(["--version"], env, tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("cryptobt ")
