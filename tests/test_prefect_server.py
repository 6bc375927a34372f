"""A real Prefect server, as a Prefect user runs it: serve the flows, trigger one, read its artifact.

Starts `prefect server start` on its own port with a temporary PREFECT_HOME, runs `cryptobt serve`
against it (PREFECT_API_URL set, so nothing is temporary), triggers the served backtest deployment
by the name Prefect shows, and reads the leaderboard artifact back through the client. The CLI's
list commands (`deployment ls`, `flow-run ls`, `artifact ls`) must answer: with fastapi >= 0.151
the server refused their null filter fields with 422.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import demo, runs
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).parent / "prefect"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the Prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no Prefect server at {url} after {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def prefect_server(prefect_home):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=api, PREFECT_UI_API_URL=api, COLUMNS="200")
    server = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(api, server, 120)
        yield api, env
    finally:
        _stop(server)


@pytest.mark.slow
def test_served_flows_run_on_a_real_server_and_publish_the_leaderboard_artifact(prefect_server, tmp_path,
                                                                                 redis_url, redis_prefix):
    api, env = prefect_server
    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=5, years=0.2, sample=demo.DEFAULT_SAMPLE)
    env = dict(env, CRYPTOBT_LAKE_ROOT=str(lake_root), CRYPTOBT_RESULTS_ROOT=str(tmp_path / "results"),
               REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix, PYTHONPATH=str(ROOT))
    serve = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        listed = ""
        for _ in range(120):
            done = subprocess.run([str(PREFECT), "deployment", "ls"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            listed = done.stdout
            if "backtest-all/backtest-nightly" in listed and "export-prices/export-hourly" in listed:
                break
            assert serve.poll() is None, serve.stdout.read()
            time.sleep(1)
        assert "backtest-all/backtest-nightly" in listed, listed
        run = subprocess.run([str(PREFECT), "deployment", "run", "backtest-all/backtest-nightly",
                              "--param", 'strategy_names=["rsi"]', "--watch", "--watch-timeout", "300"],
                             env=env, capture_output=True, text=True, timeout=360)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        for command in (["flow-run", "ls"], ["artifact", "ls"]):
            listed = subprocess.run([str(PREFECT), *command], env=env, capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "backtest-leaderboard" in listed.stdout

        artifact = asyncio.run(_read_artifact(api, "backtest-leaderboard"))
    finally:
        _stop(serve)
    table = json.loads(artifact)
    # The same run through the engine directly: the artifact's rows are its best results.
    settings = Settings(lake_root=lake_root, results_root=tmp_path / "check", cache_enabled=False)
    expected = runs.backtest(settings, options.run_config(get_strategy("rsi")), write_results=False).results
    assert [r["symbol"] for r in table] == [r["symbol"] for r in expected[:len(table)]]
    assert [r["total_return_pct"] for r in table] == pytest.approx(
        [r["total_return_pct"] for r in expected[:len(table)]], rel=1e-12)


async def _read_artifact(api: str, key: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api) as client:
        artifact = await client.read_latest_artifacts()
        found = [a for a in artifact if a.key == key]
        assert found, [a.key for a in artifact]
        return found[0].data


@pytest.mark.slow
def test_export_with_a_configured_server_runs_as_a_flow_on_it(prefect_server, tmp_path, database_url):
    """Issue 26: where a Prefect server is configured, `cryptobt export` is a tracked flow run on it."""
    from pipeline.source import loaders

    api, env = prefect_server
    loaders.seed_database(database_url, n_symbols=2, years=0.1, seed=3)
    env = dict(env, DATABASE_URL=database_url, CRYPTOBT_LAKE_ROOT=str(tmp_path / "lake"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pipeline", "export"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "new snapshot" in done.stdout, done.stdout + done.stderr
    runs_listed = subprocess.run([str(PREFECT), "flow-run", "ls"], env=env, capture_output=True, text=True,
                                 timeout=60)
    assert "export-prices" in runs_listed.stdout, runs_listed.stdout


@pytest.mark.slow
def test_a_work_pool_worker_runs_the_deployed_flows(prefect_server, tmp_path, redis_url, redis_prefix):
    """docs/operations.md's work-pool path, as printed there: a process pool, `prefect deploy --all` from
    prefect.yaml, a worker, and a run of the backtest deployment that publishes its leaderboard."""
    api, env = prefect_server
    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=4, years=0.2, sample=None)
    env = dict(env, CRYPTOBT_LAKE_ROOT=str(lake_root), CRYPTOBT_RESULTS_ROOT=str(tmp_path / "results"),
               REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix, PYTHONPATH=str(ROOT), CRYPTOBT_HOME=str(ROOT),
               PATH=f"{PREFECT.parent}:{os.environ['PATH']}")

    def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(PREFECT), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done

    prefect("work-pool", "create", "cryptobt-pool", "--type", "process")
    deployed = prefect("--no-prompt", "deploy", "--all", timeout=300)
    assert "backtest-nightly-pool" in deployed.stdout + deployed.stderr
    worker = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", "cryptobt-pool"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = prefect("deployment", "run", "backtest-all/backtest-nightly-pool", "--param",
                      'strategy_names=["rsi"]', "--watch", "--watch-timeout", "400", timeout=460)
        assert "Completed" in run.stdout, run.stdout + run.stderr
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
    artifact = json.loads(asyncio.run(_read_artifact(api, "backtest-leaderboard")))
    assert {r["symbol"] for r in artifact} <= {f"SYN{i:03d}" for i in range(4)} and artifact
