"""The soak: an hour of bounded, mixed load on the demo scale, then a proof that nothing drifted.

    python -m bench.soak                    # 60 minutes, 20 symbols x 1 year, one cycle a minute
    python -m bench.soak --minutes 2 --cycle-seconds 10 --report /tmp/soak.md

Every cycle, as a user's machine would see it: a new hourly bar for every
symbol is imported through the CLI (`cryptobt db import`), exported incrementally,
backtested (two strategies) and swept (a small grid), one symbol's cache entries are
invalidated, and every few cycles old snapshots are vacuumed. Each run's rows are
checked against a cache-free recomputation on the same snapshot right after it ran
(the snapshot may be vacuumed later). At the end: the results table holds exactly the
runs' rows, the current snapshot reads completely, every kept snapshot passes `lake verify`, and the
process's resident memory
(sampled every cycle) is compared between the first and the last quarter of the soak.

Needs PostgreSQL (its own database, dropped at the end) and Redis (its own key prefix,
deleted at the end). Bounded in time and count; Ctrl-C stops it and still writes the
report. Writes bench/SOAK.md by default.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from pipeline import runs
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import retention, verify
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders
from pipeline.source import postgres as source
from pipeline.store.cache import ResultCache

HERE = Path(__file__).resolve().parent
STRATEGIES = ("rsi", "macd", "ma_crossover", "bollinger", "buy_and_hold")
SWEEP_GRID = [{"rsi_period": p, "oversold_threshold": o} for p in (7, 14, 21) for o in (25, 30)]
# Fields that describe how a row was obtained, not the number: left out of the comparison.
PROVENANCE = {"from_cache", "computed_snapshot_id", "trades", "round_trips"}


@dataclass
class Tally:
    cycles: int = 0
    imports: int = 0
    exports: int = 0
    backtests: int = 0
    sweeps: int = 0
    vacuums: int = 0
    snapshots_removed: int = 0
    invalidations: int = 0
    rows_written: int = 0
    rows_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (minutes since start, MB)
    errors: list[str] = field(default_factory=list)


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def last_closes(url: str) -> dict[str, tuple[datetime, float]]:
    """Each symbol's newest hourly bar (open time, close)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(source.load_sql("latest_hourly_closes.sql")).fetchall()
    return {symbol: (ts, float(close)) for symbol, ts, close in rows}


def write_next_hour(url: str, folder: Path, rng: np.random.Generator) -> list[Path]:
    """One CSV of one hourly bar per symbol: the hour after its newest bar (the seeded symbols are
    hourly; a load in another interval is refused, issue 11). Imported with `--interval 1h`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for symbol, (ts, close) in last_closes(url).items():
        closes = close * np.exp(np.cumsum(rng.normal(0.0, 0.002, 12)))
        frame = pl.DataFrame({
            "date": [ts + timedelta(hours=1)],
            "open": [close],
            "high": [max(close, closes.max()) * 1.001],
            "low": [min(close, closes.min()) * 0.999],
            "close": [closes[-1]],
            "volume": [rng.uniform(120.0, 1200.0)],
        })
        path = folder / f"{symbol}-1h.csv"
        frame.write_csv(path)
        paths.append(path)
    return paths


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in PROVENANCE}


def check_against_recomputation(settings: Settings, config: options.RunConfig, outcome: runs.RunOutcome,
                                tally: Tally) -> None:
    """The run's rows equal a cache-free run on the same (still current) snapshot."""
    fresh = runs.backtest(settings, config, cache=None, write_results=False)
    if fresh.snapshot_id != outcome.snapshot_id:
        tally.errors.append(f"snapshot moved between run {outcome.run_id} and its check")
        return
    expected = {(r["symbol"], str(sorted(r["params"].items()))): comparable(r) for r in fresh.results}
    for row in outcome.results:
        key = (row["symbol"], str(sorted(row["params"].items())))
        tally.rows_checked += 1
        if expected.get(key) != comparable(row):
            tally.mismatches.append(f"run {outcome.run_id} {key}")


def run_one(settings: Settings, cache: ResultCache, config: options.RunConfig, tally: Tally, command: str) -> None:
    outcome = runs.backtest(settings, config, cache=cache, command=command)
    tally.run_ids.add(outcome.run_id)
    tally.rows_written += len(outcome.results)
    check_against_recomputation(settings, config, outcome, tally)


def cycle(settings: Settings, cache: ResultCache, work: Path, tally: Tally, rng: np.random.Generator,
          pick: random.Random, vacuum_every: int) -> None:
    batch = write_next_hour(settings.database_url, work / f"new-{tally.cycles:05d}", rng)
    done = subprocess.run([sys.executable, "-m", "pipeline", "db", "import", "--interval", "1h", *map(str, batch)],
                          capture_output=True, text=True, timeout=300, env=os.environ | cli_env(settings))
    if done.returncode != 0:
        tally.errors.append(f"import failed: {done.stderr.strip()[-300:]}")
    else:
        tally.imports += 1
    shutil.rmtree(batch[0].parent, ignore_errors=True)
    run_export(settings)
    tally.exports += 1
    for strategy in pick.sample(STRATEGIES, 2):
        run_one(settings, cache, options.run_config(get_strategy(strategy), {}), tally, "soak backtest")
        tally.backtests += 1
    run_one(settings, cache, options.run_config(get_strategy("rsi"), SWEEP_GRID), tally, "soak sweep")
    tally.sweeps += 1
    snapshot = lake.require_snapshot(settings.lake_root)
    cache.invalidate_symbol(pick.choice(sorted(snapshot.symbols)))
    tally.invalidations += 1
    if tally.cycles % vacuum_every == vacuum_every - 1:
        tally.snapshots_removed += len(retention.vacuum(settings.lake_root, keep=3, keep_hours=0))
        tally.vacuums += 1


def cli_env(settings: Settings) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root),
            "CRYPTOBT_RESULTS_ROOT": str(settings.results_root), "REDIS_URL": settings.redis_url,
            "CRYPTOBT_CACHE_PREFIX": settings.cache_prefix}


def final_checks(settings: Settings, tally: Tally) -> dict[str, Any]:
    glob = f"{settings.results_root}/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT run_id, count(*) FROM read_parquet('{glob}', hive_partitioning = true, "  # noqa: S608
        "union_by_name = true) GROUP BY run_id"
    ).fetchall()
    table_rows = sum(n for _, n in rows)
    snapshot = lake.require_snapshot(settings.lake_root)
    lake_rows = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{snapshot.path}/interval=*/*/*.parquet', "  # noqa: S608
        "hive_partitioning = true)"
    ).fetchall()[0][0]
    problems = [p for path in (s.path for s in lake.list_snapshots(settings.lake_root)) for p in verify.problems(path)]
    return {
        "verify_problems": problems,
        "table_rows": table_rows,
        "table_runs": len(rows),
        "runs_match": {r for r, _ in rows} == tally.run_ids,
        "rows_match": table_rows == tally.rows_written,
        "snapshot": snapshot.id,
        "snapshot_rows": lake_rows,
        "snapshots_kept": len(lake.list_snapshots(settings.lake_root)),
    }


def rss_verdict(samples: list[tuple[float, float]]) -> tuple[float, float, str]:
    if len(samples) < 8:
        return float("nan"), float("nan"), "too few samples to judge"
    quarter = len(samples) // 4
    first = statistics.median(mb for _, mb in samples[:quarter])
    last = statistics.median(mb for _, mb in samples[-quarter:])
    growth = (last - first) / first
    verdict = "bounded" if growth < 0.25 else "GREW"
    return first, last, f"{verdict} ({growth * 100:+.1f} % from the first to the last quarter)"


def write_report(path: Path, args: argparse.Namespace, tally: Tally, checks: dict[str, Any],
                 seconds: float, interrupted: bool) -> None:
    first, last, verdict = rss_verdict(tally.rss_mb)
    ok = (not tally.mismatches and not tally.errors and checks.get("runs_match") and checks.get("rows_match")
          and checks.get("verify_problems") == [])
    lines = [
        "# Soak report",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"- asked: {args.minutes} min, one cycle every {args.cycle_seconds} s, {args.symbols} symbols x "
        f"{args.years} years; ran {seconds / 60:.1f} min{' (interrupted)' if interrupted else ''}",
        f"- verdict: **{'PASS' if ok else 'FAIL'}**",
        "",
        "| what | count |",
        "|---|---|",
        f"| cycles | {tally.cycles} |",
        f"| CLI imports of a new hour (one 1h bar, every symbol) | {tally.imports} |",
        f"| incremental exports | {tally.exports} |",
        f"| backtests / sweeps ({len(SWEEP_GRID)} sets) | {tally.backtests} / {tally.sweeps} |",
        f"| cache invalidations | {tally.invalidations} |",
        f"| vacuums (snapshots removed) | {tally.vacuums} ({tally.snapshots_removed}) |",
        f"| result rows written by the runs | {tally.rows_written:,} |",
        f"| result rows in the table (runs) | {checks.get('table_rows', 0):,} ({checks.get('table_runs', 0)}) |",
        f"| rows checked against a cache-free recomputation | {tally.rows_checked:,} |",
        f"| mismatching rows | {len(tally.mismatches)} |",
        f"| errors | {len(tally.errors)} |",
        f"| current snapshot reads completely (rows) | {checks.get('snapshot_rows', 0):,} |",
        f"| `lake verify` of every kept snapshot: problems | {len(checks.get('verify_problems', ['not run']))} |",
        f"| RSS median, first / last quarter | {first:.0f} MB / {last:.0f} MB: {verdict} |",
        "",
    ]
    for title, items in (("Mismatches", tally.mismatches), ("Errors", tally.errors)):
        if items:
            lines += [f"## {title}", "", *[f"- {item}" for item in items[:50]], ""]
    lines += ["## RSS samples (MB)", "", "| minute | RSS |", "|---|---|"]
    step = max(1, len(tally.rss_mb) // 20)
    lines += [f"| {minute:.1f} | {mb:.0f} |" for minute, mb in tally.rss_mb[::step]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--cycle-seconds", type=float, default=60.0)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--years", type=float, default=1.0)
    parser.add_argument("--vacuum-every", type=int, default=5, help="cycles between vacuums")
    parser.add_argument("--report", type=Path, default=HERE / "SOAK.md")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not (0 < args.minutes <= 24 * 60 and 0 < args.cycle_seconds <= 3600 and 1 <= args.symbols <= 500):
        parser.error("--minutes must be in (0, 1440], --cycle-seconds in (0, 3600], --symbols in [1, 500]")

    base = Settings.from_env()
    name = f"cryptobt_soak_{uuid.uuid4().hex[:8]}"
    url = base.database_url.rsplit("/", 1)[0] + "/" + name
    work = Path(tempfile.mkdtemp(prefix="cryptobt-soak-"))
    settings = replace(base, database_url=url, lake_root=work / "lake", results_root=work / "results",
                       cache_prefix=f"{base.cache_prefix}-soak-{uuid.uuid4().hex[:8]}")
    cache = ResultCache.from_settings(settings)
    tally = Tally()
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)
    started = time.monotonic()
    interrupted = False
    checks: dict[str, Any] = {}
    try:
        source.apply_schema(url)
        loaders.seed_database(url, n_symbols=args.symbols, years=args.years, seed=args.seed)
        run_export(settings, full=True)
        deadline = started + args.minutes * 60
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                cycle(settings, cache, work, tally, rng, pick, args.vacuum_every)
            except Exception as exc:  # a soak reports failures, it does not stop at the first one
                tally.errors.append(f"cycle {tally.cycles}: {type(exc).__name__}: {exc}"[:400])
            tally.cycles += 1
            tally.rss_mb.append(((time.monotonic() - started) / 60, rss_mb()))
            print(f"cycle {tally.cycles}: {tally.rows_written:,} rows, {len(tally.mismatches)} mismatches, "
                  f"{len(tally.errors)} errors, RSS {tally.rss_mb[-1][1]:.0f} MB", flush=True)
            time.sleep(max(0.0, min(args.cycle_seconds - (time.monotonic() - began), deadline - time.monotonic())))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            checks = final_checks(settings, tally)
        except Exception as exc:
            tally.errors.append(f"final checks: {type(exc).__name__}: {exc}"[:400])
        write_report(args.report, args, tally, checks, time.monotonic() - started, interrupted)
        cache.clear()
        with psycopg.connect(base.database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        shutil.rmtree(work, ignore_errors=True)
    print(f"report: {args.report}")
    ok = (not tally.mismatches and not tally.errors and checks.get("runs_match") and checks.get("rows_match")
          and checks.get("verify_problems") == [])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
