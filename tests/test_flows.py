"""Prefect flows under a test harness: export flow, and the backtest flow on Dask equals local."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import demo, runs
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.source import loaders


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _key(r):
    return (r["symbol"], r["strategy"], tuple(sorted(r["params"].items())))


@pytest.mark.slow
def test_backtest_flow_on_a_dask_cluster_equals_the_local_run(prefect_harness, tmp_path, monkeypatch):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.backtest import backtest_flow

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=9, years=0.4, sample=None)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("REDIS_URL", "")
    settings = replace(Settings.from_env())
    grid = {"rsi": ["rsi_period=7,14", "oversold_threshold=25,30"]}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        on_dask = backtest_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(
            strategy_names=["rsi", "macd"], grid=grid, shards=3)
    local = {}
    for name, specs in (("rsi", grid["rsi"]), ("macd", None)):
        from pipeline.engine import strategies

        params = list(strategies.parse_grid(get_strategy(name), specs)) if specs else [{}]
        for r in runs.backtest(settings, options.run_config(get_strategy(name), params), write_results=False).results:
            local[_key(r)] = r
    assert len(on_dask) == len(local) == 9 * 4 + 9
    for r in on_dask:
        expected = local[_key(r)]
        assert {k: v for k, v in r.items() if k != "from_cache"} == \
            {k: v for k, v in expected.items() if k != "from_cache"}


@pytest.mark.slow
def test_backtest_flow_portfolio_mode_publishes_accounts_equal_to_the_cli_path(prefect_harness, tmp_path,
                                                                              monkeypatch):
    from flows.backtest import backtest_flow
    from pipeline.engine import portfolio as pf

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=6, years=0.3, sample=None)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("REDIS_URL", "")
    accounts = backtest_flow(strategy_names=["rsi"], mode="portfolio", max_open=[2, 3], stake=["30%"])
    config = options.run_config(get_strategy("rsi"), {})
    local = runs.portfolio(Settings.from_env(), config, pf.make_sets(config, [2, 3], [pf.Stake.parse("30%")]),
                           write_results=False).results
    assert [(a["max_open"], a["final_value"]) for a in accounts] == [(a["max_open"], a["final_value"])
                                                                   for a in local]



@pytest.mark.slow
def test_the_nightly_backtest_flow_compacts_past_days_results_and_leaves_todays(prefect_harness, tmp_path,
                                                                               monkeypatch):
    from datetime import UTC, datetime, timedelta

    from flows.backtest import backtest_flow
    from pipeline.store import queries
    from pipeline.store import results as rt
    from tests.records import make_result

    lake_root, results_root = tmp_path / "lake", tmp_path / "results"
    demo.build_sample_lake(lake_root, n_symbols=3, years=0.2, sample=None)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(results_root))
    monkeypatch.setenv("REDIS_URL", "")
    old = datetime.now(UTC) - timedelta(days=10)
    for k in range(3):
        rt.append_results(results_root, f"run-old-{k}", [make_result("BTC", total_return_pct=float(k))], created_at=old)
    backtest_flow(strategy_names=["rsi"], shards=2)
    backtest_flow(strategy_names=["rsi"], shards=2)
    files = sorted(p.relative_to(results_root) for p in results_root.rglob("*.parquet"))
    old_folder = Path(f"run_date={old.date()}/strategy=rsi")
    assert [f for f in files if f.parent == old_folder] != [] and all(
        f.name.startswith("compacted-run-old-0~run-old-2") for f in files if f.parent == old_folder)
    assert len([f for f in files if f.parent != old_folder]) == 4  # today's: two shards a run, as written
    assert queries.query(results_root, "SELECT count(*) FROM results WHERE run_id LIKE 'run-old-%'")[1] == [(3,)]


@pytest.mark.slow
def test_nightly_backtest_flow_runs_a_daily_only_symbol_at_its_own_interval(prefect_harness, database_url, tmp_path,
                                                                            monkeypatch):
    """Issue 26: a lake holding a daily-only symbol failed the nightly flow (`no 1h bars for GOOG`)."""
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    from flows.backtest import backtest_flow
    from tests.csv_series import daily_csv, hourly_csv

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("REDIS_URL", "")
    daily_csv(tmp_path / "GOOG.csv")
    hourly_csv(tmp_path / "HOURLY.csv")
    for args in (["db", "init"], ["db", "import", str(tmp_path / "GOOG.csv")],
                 ["db", "import", str(tmp_path / "HOURLY.csv")], ["export", "--no-prefect"]):
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    board = backtest_flow(strategy_names=["rsi"], interval="1h")
    assert {(r["symbol"], r["interval"]) for r in board} == {("GOOG", "1d"), ("HOURLY", "1h")}

    async def leaderboard_artifact():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
            from prefect.client.schemas.sorting import ArtifactSort

            # The newest: other tests of this module publish a leaderboard under the same key.
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["backtest-leaderboard"])),
                sort=ArtifactSort.CREATED_DESC, limit=1)
            return found[0]

    import asyncio

    artifact = asyncio.run(leaderboard_artifact())
    assert "1 symbol(s) have no 1h bars, run at their own interval: GOOG (1d)" in artifact.description


@pytest.mark.slow
def test_export_flow_writes_a_snapshot_and_is_idempotent(prefect_harness, database_url, tmp_path, monkeypatch):
    from flows.export import export_flow

    loaders.seed_database(database_url, n_symbols=3, years=0.2, seed=1)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "lake"))
    first = export_flow()
    second = export_flow()
    assert first["created"] and first["rows_read"] > 0
    assert not second["created"] and second["rows_read"] == 0
    assert second["snapshot_id"] == first["snapshot_id"]


def test_export_flow_rebuilds_past_a_rotten_lake_file_and_names_it(prefect_harness, database_url, tmp_path,
                                                                     monkeypatch):
    """The flow plans like `run_export` (issue 25 item 2): a flipped byte that keeps size and mtime is found by
    its sha256, named, and the snapshot rebuilt from PostgreSQL though no row changed there."""
    from flows.export import export_flow
    from pipeline.lake import snapshots as lake
    from pipeline.lake import verify
    from tests.test_corruption import _rot

    loaders.seed_database(database_url, n_symbols=3, years=0.2, seed=1)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "lake"))
    first = export_flow()
    victim = lake.current_snapshot(tmp_path / "lake").files("1h")[0]
    _rot(victim)
    healed = export_flow()
    assert healed["created"] and healed["snapshot_id"] != first["snapshot_id"]
    assert any(str(victim) in line for line in healed["warnings"]), healed["warnings"]
    assert verify.problems(lake.current_snapshot(tmp_path / "lake").path) == []


class FlakyPostgresProxy:
    """A loopback TCP proxy to the real PostgreSQL that drops the first `refuse` connections,
    as a server that is restarting does."""

    def __init__(self, target_port: int, refuse: int) -> None:
        import socket
        import threading

        self.refuse = refuse
        self.refused = 0
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _pipe(self, source, sink) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def _serve(self) -> None:
        import socket
        import threading

        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refused < self.refuse:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


@pytest.mark.slow
def test_export_flow_retries_while_postgres_restarts_and_commits_once(prefect_harness, database_url, tmp_path,
                                                                      monkeypatch):
    from flows.export import export_flow
    from pipeline.lake import snapshots as lake

    loaders.seed_database(database_url, n_symbols=3, years=0.2, seed=4)
    proxy = FlakyPostgresProxy(5432, refuse=2)
    try:
        monkeypatch.setenv("DATABASE_URL", database_url.replace(":5432/", f":{proxy.port}/"))
        monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "lake"))
        summary = export_flow()
    finally:
        proxy.close()
    assert proxy.refused == 2, "the first attempts must have hit the 'restarting' server"
    assert summary["created"] and summary["rows_read"] > 0
    assert len(lake.list_snapshots(tmp_path / "lake")) == 1


@pytest.mark.slow
def test_default_export_without_a_prefect_server_starts_none_and_retries_like_the_flow(database_url, tmp_path):
    """Issue 26: with no Prefect server configured, `cryptobt export` started a temporary one (~11 s of a
    ~1 s export). Now it runs the flow's steps in-process, with the extract task's retries."""
    import os
    import subprocess
    import sys

    from pipeline.lake import snapshots as lake

    loaders.seed_database(database_url, n_symbols=3, years=0.2, seed=5)
    proxy = FlakyPostgresProxy(5432, refuse=2)
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CRYPTOBT_"))}
    env.update(DATABASE_URL=database_url.replace(":5432/", f":{proxy.port}/"), PREFECT_HOME=str(home),
               CRYPTOBT_LAKE_ROOT=str(tmp_path / "lake"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline", "export"], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    finally:
        proxy.close()
    assert done.returncode == 0 and "new snapshot" in done.stdout, done.stdout + done.stderr
    assert proxy.refused == 2 and done.stderr.count("retrying in") == 2, done.stderr
    assert list(home.iterdir()) == [], "no temporary Prefect server (its database lives in PREFECT_HOME)"
    assert len(lake.list_snapshots(tmp_path / "lake")) == 1


@pytest.mark.slow
def test_export_flow_against_unreachable_postgres_fails_naming_the_url_and_commits_nothing(
        prefect_harness, tmp_path, monkeypatch):
    import flows.export
    from flows.export import export_flow
    from pipeline.core.errors import ServiceUnavailable
    from pipeline.lake import snapshots as lake

    monkeypatch.setenv("DATABASE_URL", "postgresql://cryptobt:hunter2@127.0.0.1:1/cryptobt")
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "lake"))
    # The extract task still retries all 4 times before the flow fails, without its 15 s of waits
    # between them: what is checked here is the message and the lake after the last one.
    monkeypatch.setattr(flows.export, "extract_task", flows.export.extract_task.with_options(retry_delay_seconds=0))
    with pytest.raises(ServiceUnavailable) as excinfo:
        export_flow.with_options(retries=0)()
    message = str(excinfo.value)
    assert "postgresql://cryptobt:***@127.0.0.1:1/cryptobt" in message and "hunter2" not in message
    assert "start it" in message
    assert lake.current_snapshot(tmp_path / "lake") is None


@pytest.mark.slow
def test_demo_with_services_runs_postgres_export_flow_engine_redis_and_results(
        prefect_harness, make_database, tmp_path, monkeypatch, redis_url, redis_prefix):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.source import postgres as source

    url = make_database()
    source.apply_schema(url)
    loaders.seed_database(url, n_symbols=4, years=0.2, seed=8)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CRYPTOBT_CACHE_PREFIX", redis_prefix)
    # The demo points the flow at its work folder through these; monkeypatch restores them.
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(tmp_path / "d" / "lake"))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "d" / "results"))
    first = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "d")])
    assert first.exit_code == 0, first.output
    assert "export: snapshot" in first.output  # no Prefect server configured: in-process, no temporary server
    again = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "d")])
    assert again.exit_code == 0, again.output
    assert "(0 rows read)" in again.output
    from pipeline.core.config import Settings
    from pipeline.store.cache import ResultCache

    stats = ResultCache.from_settings(replace(Settings.from_env(), cache_prefix=redis_prefix)).stats()
    assert stats["hits"] >= 5 * 4, stats  # the second demo run served every strategy from Redis


def test_serve_deployments_carry_their_schedules():
    from flows.backtest import backtest_flow
    from flows.export import export_flow

    export = export_flow.to_deployment(name="export-hourly", cron="0 * * * *")
    nightly = backtest_flow.to_deployment(name="backtest-nightly", cron="30 2 * * *")
    assert export.schedules[0].schedule.cron == "0 * * * *"
    assert nightly.schedules[0].schedule.cron == "30 2 * * *"


@pytest.mark.slow
def test_sweep_flow_on_a_dask_task_runner_equals_the_single_process_sweep(prefect_harness, tmp_path, monkeypatch):
    """A sweep's chunks as Prefect tasks on `DaskTaskRunner` (two workers): the run's rows equal the
    single-process sweep's bit for bit, and the parts' folder is gone once they are published."""
    import math

    import pyarrow.parquet as pq
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.sweep import sweep_flow

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=4, years=0.3, sample=None)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("REDIS_URL", "")
    grid = ["rsi_period=7,14,21", "oversold_threshold=20,25,30"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        answer = sweep_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(
            "rsi", grid, chunk_sets=2)
    settings = Settings.from_env()
    from pipeline.engine import strategies

    params = list(strategies.parse_grid(get_strategy("rsi"), grid))
    single = runs.backtest(settings, options.run_config(get_strategy("rsi"), params))
    tables = [pq.read_table(next((tmp_path / "results").glob(f"run_date=*/strategy=rsi/{run_id}.parquet")))
              for run_id in (answer["run_id"], single.run_id)]
    assert tables[0].num_rows == tables[1].num_rows == 4 * 9
    for name in tables[0].column_names:
        if name in ("run_id", "created_at"):
            continue
        for a, b in zip(tables[0].column(name).to_pylist(), tables[1].column(name).to_pylist(), strict=True):
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), name
    assert not (tmp_path / "sweeps" / answer["run_id"]).exists()
