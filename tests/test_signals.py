"""Stop signals in real processes (issue 25 item 12): SIGINT and SIGTERM, once and twice, and SIGKILL.

A run's first SIGINT or SIGTERM stops it after the current chunk, keeps and writes what finished,
marks the run interrupted in the runs table and says what it kept; a second one stops it at once,
and what it says was kept is exactly what the results table holds. A SIGKILLed run's temp files are
swept up (and the run recorded as interrupted) by the next command, which never touches a live
process's files. An API server under SIGTERM ends every open stream with `done` or `error` first.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.api_server import free_port, sse_events
from tests.cli_env import cli_environment

ROOT = Path(__file__).resolve().parents[1]
# 12,000 parameter sets x 40 symbols x 8,760 hourly bars: minutes of work on two idle cores.
GRID = ["rsi_period=2:61:1", "oversold_threshold=10:49:1", "overbought_threshold=60:64:1"]
PLANNED = 60 * 40 * 5 * 40
KEPT = re.compile(r"kept and wrote the ([\d,]+) of ([\d,]+) results")


@pytest.fixture(scope="module")
def busy_lake(build_lake) -> Path:
    return build_lake(n_symbols=40, years=1.0)


@pytest.fixture
def env(busy_lake, tmp_path) -> dict[str, str]:
    return cli_environment(busy_lake, tmp_path / "out" / "results", COLUMNS="200")


def _sweep(env: dict[str, str]) -> subprocess.Popen:
    """A sweep under way: returns once it has printed its plan (the kernels start right after)."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "rsi", *[a for g in GRID for a in ("-g", g)],
                                "--top", "3", "--yes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.read = []  # the stderr lines read so far
    _read_until(process, "sweep:")
    return process


def _read_until(process: subprocess.Popen, start: str) -> None:
    """Read `process`'s stderr up to a line that starts with `start`."""
    for line in process.stderr:
        process.read.append(line)
        if line.startswith(start):
            return
    pytest.fail(f"no line {start!r} came: {''.join(process.read)}")


def _finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the signals did not stop the sweep")
    return stdout, "".join(process.read) + stderr


def _table(env: dict[str, str], name: str, sql: str) -> list[tuple]:
    """Plain DuckDB over one of the three tables (no help from our code: nothing is swept)."""
    root = Path(env["CRYPTOBT_RESULTS_ROOT"]).parent / name
    if not list(root.rglob("*.parquet")):
        return []
    return duckdb.sql(sql.format(t=f"read_parquet('{root}/**/*.parquet', hive_partitioning = true, "
                                   "union_by_name = true)")).fetchall()


def _temps(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["CRYPTOBT_RESULTS_ROOT"]).parent.rglob("*.tmp"))


def _truth(stderr: str, env: dict[str, str]) -> tuple[int, str | None]:
    """What the last line says was kept, checked against the results table; (kept, run id)."""
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert "Traceback" not in stderr
    said = KEPT.search(last)
    assert said or "nothing was kept" in last, last
    kept = int(said.group(1).replace(",", "")) if said else 0
    run = re.search(r"run (\d{8}T\d{12}Z-[0-9a-f]{8})", last)
    rows = _table(env, "results", "SELECT run_id, count(*) FROM {t} GROUP BY run_id")
    assert rows == ([(run.group(1), kept)] if kept else []), f"said {last!r}; the table holds {rows}"
    return kept, run.group(1) if run else None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_first_signal_stops_after_the_chunk_keeps_what_finished_and_marks_the_run(env, sig):
    process = _sweep(env)
    time.sleep(5)
    assert process.poll() is None, "the sweep finished before it could be interrupted: make it bigger"
    process.send_signal(sig)
    stdout, stderr = _finish(process)
    assert process.returncode == 128 + sig, stderr
    kept, run_id = _truth(stderr, env)
    assert 0 < kept < PLANNED and f"of {PLANNED:,} results" in stderr
    assert "best 3 of" in stdout
    assert _table(env, "runs", "SELECT run_id, interrupted, n_results, planned FROM {t}") == \
        [(run_id, True, kept, PLANNED)]
    assert _temps(env) == []
    shown = subprocess.run([sys.executable, "-m", "pipeline", "results", "show", run_id], env=env,
                           capture_output=True, text=True, timeout=120)
    assert f"interrupted: {kept:,} of {PLANNED:,} results kept" in shown.stdout, shown.stdout + shown.stderr
    stats = subprocess.run([sys.executable, "-m", "pipeline", "stats", "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert json.loads(stats.stdout)["interrupted_runs"] == 1, stats.stderr
    history = subprocess.run([sys.executable, "-m", "pipeline", "results", "runs", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert [(r["run_id"], r["interrupted"]) for r in json.loads(history.stdout)] == [(run_id, True)], history.stderr


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)], ids=["INT-INT", "TERM-TERM", "TERM-INT"])
def test_a_second_signal_stops_at_once_and_what_it_says_was_kept_is_in_the_table(env, first, second):
    process = _sweep(env)
    time.sleep(5)
    assert process.poll() is None, "the sweep finished before it could be interrupted: make it bigger"
    process.send_signal(first)
    _read_until(process, f"{first.name}: stopping after the current chunk")  # then Ctrl-C again, say
    process.send_signal(second)
    _, stderr = _finish(process)
    assert process.returncode == 128 + first, stderr
    kept, run_id = _truth(stderr, env)
    assert _temps(env) == []
    assert _table(env, "runs", "SELECT run_id, interrupted, n_results FROM {t}") == [(run_id, True, kept)]


def _wait_for_temp(env: dict[str, str], process: subprocess.Popen, known: tuple[Path, ...] = ()) -> Path:
    """The first temp file of `process`'s results (none of `known`)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        found = [p for p in _temps(env) if "/results/" in str(p) and p not in known]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail("the sweep wrote no temp file of its results")


@pytest.mark.slow
def test_killed_runs_temp_files_are_swept_by_the_next_command_and_the_runs_marked(env):
    killed = []
    for _ in range(2):  # the second sweep is the first one's later command
        process = _sweep(env)
        temp = _wait_for_temp(env, process, tuple(_temps(env)))
        assert _temps(env) == [temp], "the run before was swept up when this one started"
        process.kill()
        process.wait(timeout=60)
        killed.append(temp.name.split(".")[1])
    assert _temps(env) == [temp], "a SIGKILLed run cannot clean up after itself"
    later = subprocess.run([sys.executable, "-m", "pipeline", "results", "sql", "SELECT count(*) AS n FROM results",
                            "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout) == [{"n": 0}]
    assert _temps(env) == []
    assert sorted(_table(env, "runs", "SELECT run_id, interrupted, n_results FROM {t}")) == \
        sorted((run_id, True, 0) for run_id in killed)


@pytest.mark.slow
def test_a_later_command_never_touches_a_live_runs_temp_files(env):
    process = _sweep(env)
    temp = _wait_for_temp(env, process)
    later = subprocess.run([sys.executable, "-m", "pipeline", "results", "sql", "SELECT count(*) FROM runs"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert later.returncode == 0, later.stderr
    assert temp.exists() and process.poll() is None, "the live run's temp file was swept"
    process.send_signal(signal.SIGINT)
    _, stderr = _finish(process)
    assert process.returncode == 130, stderr
    kept, _ = _truth(stderr, env)
    assert kept > 0 and _temps(env) == []


# --- the API server -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM]], ids=["TERM", "TERM-TERM"])
def test_an_api_server_under_sigterm_ends_its_streams_with_done_or_error_first(env, signals):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "api", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the API server did not start"
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code in (200, 503):
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"strategy": "rsi", "grid": GRID, "top": 3}
        # The same sweep asked without streaming joins the stream's run: it gets an answer too.
        answers: list[httpx.Response] = []
        plain = threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/api/sweep", json=body,
                                                                          timeout=120)))
        events, sent = [], False
        with httpx.Client(base_url=base, timeout=120) as client, client.stream(
                "POST", "/api/sweep/stream", json=body) as response:
            assert response.status_code == 200
            plain.start()
            for name, data in sse_events(response.iter_lines()):
                events.append((name, data))
                if name == "progress" and data["completed"] > 0 and not sent:
                    for k, sig in enumerate(signals):
                        time.sleep(0.05 * k)
                        server.send_signal(sig)
                    sent = True
        _, stderr = server.communicate(timeout=120)
        plain.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert events, "no event came"
    name, data = events[-1]
    assert name in ("done", "error"), f"the stream ended with {events[-3:]}"
    # A part of a sweep is no answer: the plain request is told what the stream was told, as an error.
    assert [a.status_code for a in answers] == [503], [a.text for a in answers]
    told = answers[0].json()["error"]
    if name == "done":
        assert f"kept and wrote the {data['results']:,} of {PLANNED:,} results" in told, told
    else:
        assert told == data["error"]
    assert "Traceback" not in stderr
    assert server.returncode == 128 + signal.SIGTERM, stderr
    rows = _table(env, "results", "SELECT run_id, count(*) FROM {t} GROUP BY run_id")
    if name == "done":
        assert data["interrupted"] and 0 < data["results"] < data["planned"] == PLANNED
        assert rows == [(data["run_id"], data["results"])]
        assert _table(env, "runs", "SELECT run_id, interrupted FROM {t}") == [(data["run_id"], True)]
    else:
        assert data["status"] == 503
        said = KEPT.search(data["error"])
        assert said or "nothing was kept" in data["error"], data
        assert rows == ([(re.search(r"run (\S+)", data["error"]).group(1).rstrip(";,"),
                          int(said.group(1).replace(",", "")))] if said else [])
    assert _temps(env) == []
