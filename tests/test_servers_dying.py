"""Servers dying mid-work (issue 18), on instances these tests start, kill and restart themselves.

PostgreSQL: its own cluster (initdb + pg_ctl as the postgres user, another port), SIGKILLed
while an export reads from it. Redis: its own redis-server, killed during a run and restarted
during the next. Skipped with the reason where the binaries or the postgres user are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from pipeline import runs
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders
from pipeline.source import postgres as source
from pipeline.store.cache import ResultCache

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnPostgres:
    """A throwaway PostgreSQL cluster on its own port, owned by the postgres user."""

    def __init__(self, root: Path) -> None:
        if PG_BIN is None or shutil.which("runuser") is None:
            pytest.skip("PostgreSQL server binaries or runuser not found")
        self.data = root / "pgdata"
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777)
        for parent in root.parents:  # the postgres user must reach its data folder
            if str(parent) in ("/", "/tmp"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/cryptobt"

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.data / "log"),
                          "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: a crash, not a shutdown."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        doomed = [pid, *map(int, children)]
        for victim in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{victim}").exists() for victim in doomed):
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60)


@pytest.fixture
def own_postgres(tmp_path):
    server = OwnPostgres(tmp_path / "pg")
    yield server
    server.stop()


@pytest.mark.slow
def test_postgres_killed_during_the_export_read_fails_cleanly_and_the_next_export_commits_once(own_postgres,
                                                                                               tmp_path):
    source.apply_schema(own_postgres.url)
    loaders.seed_database(own_postgres.url, n_symbols=4, years=0.3, seed=12)
    settings = replace(Settings(), database_url=own_postgres.url, lake_root=tmp_path / "lake")
    env = {**os.environ, "DATABASE_URL": own_postgres.url, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root)}
    # Hold the table so the export blocks inside its read, then kill the whole server under it.
    blocker = psycopg.connect(own_postgres.url)
    blocker.execute("LOCK TABLE crypto_prices IN ACCESS EXCLUSIVE MODE")
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "export", "--no-prefect"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    with psycopg.connect(own_postgres.url, autocommit=True) as watcher:
        while time.monotonic() < deadline and not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0]:
            time.sleep(0.05)
    own_postgres.kill()
    out, err = child.communicate(timeout=120)
    blocker.close()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("reading rows")]
    assert child.returncode == 1 and len(lines) == 1 and "PostgreSQL" in lines[0], err  # --no-prefect: one attempt
    assert lake.current_snapshot(settings.lake_root) is None, "nothing is committed"
    assert not any(settings.lake_root.glob(".staging/*")), "no staging left behind"
    own_postgres.start()
    report = run_export(settings)
    assert report.created and len(lake.list_snapshots(settings.lake_root)) == 1
    reference = replace(settings, lake_root=tmp_path / "reference")
    assert run_export(reference).snapshot_id and \
        lake.current_snapshot(settings.lake_root).data_versions() == \
        lake.current_snapshot(reference.lake_root).data_versions()


class OwnRedis:
    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server not found")
        self.root = root
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.root)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def kill(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    yield server
    server.kill()


@pytest.mark.slow
def test_redis_killed_during_a_run_and_restarted_during_the_next_costs_one_warning_each(own_redis, tmp_path):
    from pipeline import demo

    demo.build_sample_lake(tmp_path / "lake", n_symbols=10, years=0.3, sample=None)
    settings = replace(Settings(), lake_root=tmp_path / "lake", results_root=tmp_path / "results",
                       redis_url=own_redis.url, cache_prefix="own")
    config = options.run_config(get_strategy("rsi"), {})
    expected = {r["symbol"]: r["final_value"] for r in runs.backtest(settings, config, write_results=False).results}
    for kill_then in ("restart-during-the-next", None):
        warnings: list[str] = []
        cache = ResultCache.from_settings(settings, on_warning=warnings.append)

        def disrupt(done: int, total: int, kill_then=kill_then) -> None:
            if done == 0 and kill_then:
                own_redis.kill()  # the run has looked up the cache; it dies before the results are stored

        outcome = runs.backtest(settings, config, cache=cache, on_progress=disrupt)
        assert {r["symbol"]: r["final_value"] for r in outcome.results} == expected
        assert len(warnings) <= 1, warnings
        if kill_then:
            assert len(warnings) == 1
            own_redis.start()  # back for the next run, which must use it again
    again = runs.backtest(settings, config, cache=ResultCache.from_settings(settings))
    assert {r["symbol"]: r["final_value"] for r in again.results} == expected
