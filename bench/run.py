"""The benchmark: our pipeline next to the seeds' approaches and vectorbt, in one run.

    python -m bench.run            # seed scale: 211 cryptos x 5 years hourly + daily
    python -m bench.run --quick    # 20 x 1 year, for CI-friendly smoke runs
    python -m bench.run --smoke    # 6 x 0.25 year, each row timed once: the test suite's proof that every row runs
    python -m bench.run --scaling  # and the scaling table at the end (bench/scaling.py)

Needs PostgreSQL (DATABASE_URL's server; the benchmark uses its own database) and
Redis. Writes bench/RESULTS.md and bench/results.json. Timings are medians of
repeated runs; ratios are taken within this run. Goals are printed next to the
measured values; a miss is reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numba
import numpy as np
import psycopg

from bench import scaling, timing
from pipeline import runs
from pipeline.core.config import Settings
from pipeline.engine import batch as engine
from pipeline.engine import options, overfit, strategies
from pipeline.engine.kernels import enums
from pipeline.engine.strategies import get_strategy
from pipeline.lake import grids, reader
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders
from pipeline.source import postgres as source
from pipeline.store.cache import ResultCache

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
REPEATS_CAP: int | None = None  # --smoke: 1, every row runs once after its warm-up; its times mean nothing


def timed(fn, repeat: int = 5, warmup: int = 1) -> dict:
    """bench.timing.timed, with --smoke's cap on the repeats."""
    return timing.timed(fn, _cap(repeat), warmup)


def _cap(repeat: int) -> int:
    """--smoke's cap on the repeats."""
    return min(repeat, REPEATS_CAP or repeat)


def ensure_database(admin_url: str, name: str, cryptos: int, years: float) -> tuple[str, dict]:
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    source.ensure_database(url)
    source.apply_schema(url)
    with psycopg.connect(url) as conn:
        n = conn.execute("SELECT count(DISTINCT crypto_id) FROM crypto_prices").fetchone()[0]
    seed = {}
    if n != cryptos:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE crypto_prices")
            conn.execute("DELETE FROM cryptocurrencies")
        report = loaders.seed_database(url, cryptos, years, seed=42)
        seed = {"rows": report.total_rows, "seconds": report.seconds, "rows_per_second": report.rows_per_second}
    return url, seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="--quick at 6 cryptos x 0.25 year, each timing once: proves every row runs "
                             "(tests/test_bench_smoke.py), its times mean nothing.")
    parser.add_argument("--out", type=Path, default=HERE, help="Where RESULTS.md and results.json go.")
    parser.add_argument("--database", help="Database to seed and use (default cryptobt_bench[_quick]).")
    parser.add_argument("--workdir", type=Path, default=WORK, help="Where the bench's lakes and results go.")
    parser.add_argument("--scaling", action="store_true",
                        help="Run the scaling table at the end (python -m bench.scaling; --quick: its reduced "
                             "scale). Without it, the last scaling table in --out's results.json is kept.")
    args = parser.parse_args()
    if args.smoke:
        global REPEATS_CAP
        REPEATS_CAP, args.quick = 1, True
    cryptos, years = (6, 0.25) if args.smoke else (20, 1.0) if args.quick else (211, 5.0)
    out: dict = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                             "cpus": numba.config.NUMBA_NUM_THREADS},
                 "date": datetime.now(UTC).isoformat(timespec="seconds"), "scale": {"cryptos": cryptos, "years": years, "smoke": args.smoke},
                 "versions": {}}
    for module in ("duckdb", "numba", "numpy", "polars", "pyarrow", "psycopg", "redis", "prefect"):
        out["versions"][module] = __import__(module).__version__
    base = Settings.from_env()
    admin = base.database_url.rsplit("/", 1)[0] + "/postgres"
    name = args.database or ("cryptobt_bench_quick" if args.quick else "cryptobt_bench")
    url, out["seed"] = ensure_database(admin, name, cryptos, years)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    settings = replace(base, database_url=url, lake_root=work / f"lake-{name}", results_root=work / f"results-{name}",
                       cache_prefix=f"cryptobt-bench-{name}")
    shutil.rmtree(settings.lake_root, ignore_errors=True)

    print("export (full, 3 runs, each after a raw binary COPY of the table)...", flush=True)
    fulls, raw = [], []
    for _ in range(3):
        raw.append(raw_binary_copy_seconds(url))
        shutil.rmtree(settings.lake_root, ignore_errors=True)
        fulls.append(run_export(settings, full=True))
    seconds = statistics.median(f.seconds for f in fulls)
    out["export_full"] = {"rows": fulls[0].rows_read, "seconds": seconds, "rows_per_second": fulls[0].rows_read / seconds,
                          "runs_seconds": [f.seconds for f in fulls], "raw_copy_seconds": raw,
                          "raw_copy_rows_per_second": fulls[0].rows_read / statistics.median(raw)}
    print("export (incremental, 3 runs)...", flush=True)
    incrementals = []
    for _ in range(3):
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price,"
                " close_price, volume) SELECT crypto_id, '1h', datetime + interval '1 hour', close_price,"
                " close_price, close_price, close_price, 1 FROM (SELECT DISTINCT ON (crypto_id) * FROM"
                " crypto_prices WHERE interval_type = '1h' ORDER BY crypto_id, datetime DESC) last")
        incrementals.append(run_export(settings))
    out["export_incremental"] = {"rows": incrementals[0].rows_read,
                                 "seconds": statistics.median(i.seconds for i in incrementals),
                                 "runs_seconds": [i.seconds for i in incrementals],
                                 "changed_symbols": len(incrementals[0].changed_symbols),
                                 # What it wrote (the newest year's tail files): the cost follows the change.
                                 "files_written": [i.files_written for i in incrementals],
                                 "rows_written": [i.rows_written for i in incrementals],
                                 "bytes_written": [i.bytes_written for i in incrementals]}
    out["export_seeds_way"] = export_seeds_way(url, min(10 if args.quick else 20, cryptos), cryptos, work)
    sizes = source.table_sizes(url)
    lake_bytes = sum(p.stat().st_size for p in lake.current_snapshot(settings.lake_root).path.rglob("*.parquet"))
    out["size"] = {"lake_bytes": lake_bytes, "postgres_bytes": sizes["crypto_prices"],
                   "ratio_pct": 100 * lake_bytes / sizes["crypto_prices"]}

    print("reads...", flush=True)
    snapshot = lake.current_snapshot(settings.lake_root)
    one = sorted(snapshot.symbols)[len(snapshot.symbols) // 2]
    last_year = int(snapshot.symbols[one]["1h"]["last"][:4])
    y0, y1 = datetime(last_year, 1, 1, tzinfo=UTC), datetime(last_year + 1, 1, 1, tzinfo=UTC)
    out["read_one_symbol_year"] = timed(lambda: reader.read_prices(
        settings.lake_root, [one], "1h", y0, y1, ("open", "high", "low", "close", "volume"), snapshot=snapshot), 10)
    out["read_all_daily"] = timed(lambda: reader.read_prices(
        settings.lake_root, None, "1d", columns=("open", "high", "low", "close", "volume"), snapshot=snapshot), 10)
    with grid_cache_off():  # the scan itself: DuckDB over the snapshot's files onto the grid
        out["read_all_hourly_close"] = timed(lambda: reader.read_prices(
            settings.lake_root, None, "1h", columns=("close",), snapshot=snapshot), 10)
    # The same grid mapped from the snapshot's grid cache (pipeline.lake.grids), as every later read gets it.
    reader.read_prices(settings.lake_root, None, "1h", columns=("close",), snapshot=snapshot)
    out["read_all_hourly_close_mapped"] = timed(lambda: reader.read_prices(
        settings.lake_root, None, "1h", columns=("close",), snapshot=snapshot), 10)

    print("kernels...", flush=True)
    batch = reader.read_prices(settings.lake_root, None, "1h", columns=("open", "close"), snapshot=snapshot)
    config = options.run_config(get_strategy("rsi"), {})
    bar_steps = int(batch.bars.sum())
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        stats = timed(lambda: engine.run_metrics(batch, config), 10)
        stats["bar_steps_per_second"] = bar_steps / stats["median"]
        out[f"rsi_kernel_threads_{threads}"] = stats
    engine.set_threads(0)
    out["single_backtest"] = timed(lambda: runs.backtest(settings, config, [one], write_results=False), 10)
    # Issue 17's row: the read, the kernel and the results as a run leaves them (written to the results table).
    out["rsi_end_to_end_warm"] = timed(lambda: runs.backtest(settings, config, write_results=True), 5)
    out["rsi_end_to_end_warm"]["kernel_share_pct"] = (
        100 * out["rsi_kernel_threads_2"]["median"] / out["rsi_end_to_end_warm"]["median"])
    with grid_cache_off():
        out["rsi_end_to_end_warm_scanned"] = timed(lambda: runs.backtest(settings, config, write_results=True), 5)

    print("cache...", flush=True)
    cache = ResultCache.from_settings(settings)
    cache.clear()
    out["cache_miss_batch"] = {"seconds": runs.backtest(settings, config, cache=cache, write_results=False).seconds}
    out["cache_hit_batch"] = timed(lambda: runs.backtest(settings, config, cache=cache, write_results=False), 10)
    out["cache_hit_single"] = timed(lambda: runs.backtest(settings, config, [one], cache=cache,
                                                          write_results=False), 20)
    cache.clear()

    print("cold CLI...", flush=True)
    env = {"CRYPTOBT_LAKE_ROOT": str(settings.lake_root), "CRYPTOBT_RESULTS_ROOT": str(settings.results_root),
           "REDIS_URL": "", "PATH": "/usr/bin:/bin", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    out["cold_cli"] = bench_cold_cli(settings, env, 1 if args.smoke else 3 if args.quick else 7)
    out["cold_cli_demo"] = bench_cold_cli_demo(args.workdir, env, 1 if args.smoke else 5)

    print("sweep 1,000 combinations...", flush=True)
    grid = strategies.parse_grid(get_strategy("rsi"), ["rsi_period=5:50:5", "oversold_threshold=15:42:3",
                                         "overbought_threshold=60:87:3"])
    sweep_config = options.run_config(get_strategy("rsi"), grid)
    # The plain kernel and the same with the PBO's block sums (S=16) and the deflated Sharpe ratio's moments,
    # alternating (medians): what the overfitting report adds to a sweep is their difference plus the
    # statistics themselves, a few percent that one pair of runs on a noisy host would not resolve.
    plain_runs, blocks_runs = [], []
    for _ in range(1 if args.quick else 3):
        t = time.perf_counter()
        cube = engine.run_metrics(batch, sweep_config)
        plain_runs.append(time.perf_counter() - t)
        blocks = overfit.new_blocks(len(batch.symbols), sweep_config)
        t = time.perf_counter()
        engine.run_metrics(batch, sweep_config, overfit.block_fractions(sweep_config), blocks)
        blocks_runs.append(time.perf_counter() - t)
    sweep_kernel, blocks_kernel = statistics.median(plain_runs), statistics.median(blocks_runs)
    t = time.perf_counter()
    overfit.sweep_statistics(blocks, sweep_config)
    statistics_seconds = time.perf_counter() - t
    # What fewer PBO blocks would cost (--pbo-blocks 8): the 16 blocks' sums added in pairs are the 8
    # blocks' (their edges are every other one), so the same kernel run serves.
    coarse = np.add.reduceat(blocks, np.arange(0, blocks.shape[1], 2), axis=1)
    t = time.perf_counter()
    overfit.sweep_statistics(coarse, replace(sweep_config, pbo_blocks=coarse.shape[1]))
    statistics_8_seconds = time.perf_counter() - t
    del coarse
    blocks_mb = blocks.nbytes / 2**20
    del blocks
    t = time.perf_counter()
    # As `cryptobt sweep` runs it: every result written (as columns), each symbol's --top 20 kept.
    sweep = runs.backtest(settings, sweep_config, write_results=True, keep=20)
    out["sweep_1000"] = {"combos": len(grid), "kernel_seconds": sweep_kernel, "end_to_end_seconds":
                         time.perf_counter() - t, "bar_steps_per_second": bar_steps * len(grid) / sweep_kernel,
                         "results": sweep.n_results, "run_kernel_seconds": sweep.kernel_seconds,
                         "cube_shape": list(cube.shape)}
    del cube
    print("walk-forward K=5 over the same sweep...", flush=True)
    t = time.perf_counter()
    folds = runs.backtest(settings, options.run_config(get_strategy("rsi"), grid, walk_forward=5), write_results=True, keep=20)
    out["sweep_1000"].update(walk_forward_seconds=time.perf_counter() - t, walk_forward_symbols=len(folds.walk_forward))
    out["sweep_1000"].update(blocks_kernel_seconds=blocks_kernel, overfit_statistics_seconds=statistics_seconds,
                             overfit_statistics_8_blocks_seconds=statistics_8_seconds,
                             blocks_mb=blocks_mb, kernel_runs_seconds=plain_runs, blocks_kernel_runs_seconds=blocks_runs)

    print("sweep statistics (one symbol against arch, then every symbol)...", flush=True)
    from bench import sweep_stats as stats_bench

    out["sweep_stats"] = stats_bench.bench_sweep_stats(settings, grid, one)

    print("the lake on object storage (moto S3) against the local disk, sweeps on 1, 2, 4 workers...", flush=True)
    from bench import object_store

    out["object_store"] = object_store.bench_object_store(
        6 if args.smoke else 20 if args.quick else 211, 0.25 if args.smoke else 1.0,
        64 if args.smoke else 1000, repeat=1 if args.quick else 3, workers=(2,) if args.smoke else (1, 2, 4),
        big_sets=64 if args.smoke else 1000 if args.quick else 100_000)

    print("results queries over a long history...", flush=True)
    from bench import results_queries

    out["results_queries"] = results_queries.bench_results_queries(20 if args.smoke else 100 if args.quick else 500,
                                                                   repeat=1 if args.quick else 3)

    print("sweep 100,000 combinations (CLI, its own process)...", flush=True)
    out["sweep_100k"] = bench_sweep_100k(settings, snapshot, env, 1 if args.quick else 10, args.quick)

    print("portfolio...", flush=True)
    out["portfolio"] = bench_portfolio(settings, snapshot)

    print("futures against spot...", flush=True)
    out["futures"] = bench_futures(settings, snapshot)

    print("user strategy, stops, Donchian sweep...", flush=True)
    out["issue13"] = bench_user_strategy_and_stops(settings, snapshot, env, args.quick or args.smoke)

    print("intrabar detail: 1h with 5m detail against plain 1h...", flush=True)
    out["detail"] = bench_detail(20 if args.quick else 100)

    print("baselines...", flush=True)
    engine.set_threads(0)
    out["baselines"] = run_baselines(url, batch, config, args.quick, out["rsi_end_to_end_warm"]["median"],
                                     out["rsi_kernel_threads_2"]["median"])
    out["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.scaling:
        print("scaling (each cell in a process of its own)...", flush=True)
        out["scaling"] = scaling.run_scaling(scaling.QUICK if args.quick else scaling.FULL, work / "scaling")
    elif (args.out / "results.json").exists():
        # The last scaling table stays (its section says when it was measured).
        kept = json.loads((args.out / "results.json").read_text()).get("scaling")
        if kept:
            out["scaling"] = kept
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=1, default=str))
    write_report(out, args.out / "RESULTS.md")
    print((args.out / "RESULTS.md").read_text())


def _ratio(sweep: dict, key: str) -> float:
    """A sweep timing over its plain kernel's."""
    return sweep[key] / sweep["kernel_seconds"]


def _overhead(sweep: dict) -> float:
    """What the block sums and the statistics add to the plain sweep kernel, in percent."""
    added = sweep["blocks_kernel_seconds"] + sweep["overfit_statistics_seconds"] - sweep["kernel_seconds"]
    return added / sweep["kernel_seconds"] * 100


def _blocks_share(sweep: dict) -> float:
    """What the block sums add to the plain sweep kernel, in percent."""
    return (sweep["blocks_kernel_seconds"] / sweep["kernel_seconds"] - 1) * 100


def _runs_note(sweep: dict) -> str:
    """How the two kernels were timed."""
    runs = sweep.get("kernel_runs_seconds") or []
    if len(runs) < 2:
        return "one run each"
    return (f"median of {len(runs)}, alternating with the plain kernel: "
            + ", ".join(f"{b:.2f}/{p:.2f}" for b, p in zip(sweep["blocks_kernel_runs_seconds"], runs, strict=True))
            + " s")


EXAMPLE_STRATEGIES = HERE.parent / "examples" / "strategies"


@contextlib.contextmanager
def grid_cache_off() -> Iterator[None]:
    """Reads in the block scan the lake's files (pipeline.lake.grids off), as a first read does."""
    os.environ["CRYPTOBT_GRID_CACHE"] = "0"
    try:
        yield
    finally:
        del os.environ["CRYPTOBT_GRID_CACHE"]


def bench_cold_cli(settings: Settings, env: dict[str, str], runs_: int) -> dict:
    """Issue 17's rows: `cryptobt backtest rsi --all` in a fresh process (as the console script runs it),
    lake -> leaderboard, with numba's machine code cached by an earlier process (median of `runs_`), and
    once with every cache empty (numba compiles each kernel first).

    Each child reports its own peak RSS (VmHWM) as it returns: ru_maxrss survives exec, so a child
    forked from this (large) process would report the parent's size."""
    def run(extra: dict[str, str] | None = None) -> tuple[float, float]:
        return _cold_backtest({**env, **(extra or {})}, settings.results_root.parent)

    empty = settings.lake_root.parent / "empty-caches"
    shutil.rmtree(empty, ignore_errors=True)
    shutil.rmtree(settings.lake_root / grids.FOLDER, ignore_errors=True)  # the first run scans and keeps the grid
    first, first_rss = run({"NUMBA_CACHE_DIR": str(empty / "numba"), "CRYPTOBT_KERNEL_CACHE": str(empty / "kernels")})
    shutil.rmtree(empty, ignore_errors=True)
    run()  # fills the usual caches if anything is missing
    cold = [run() for _ in range(runs_)]
    seconds, rss = [c for c, _ in cold], [m for _, m in cold]
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "n": runs_,
            "peak_rss_mb": max(rss), "peak_rss_mb_median": statistics.median(rss),
            "first_run_seconds": first, "first_run_peak_rss_mb": first_rss}


_COLD_CHILD = ("import sys\nfrom pipeline.cli import main\nsys.argv = ['cryptobt', 'backtest', 'rsi', '--all']\n"
               "code = main()\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
               "print('RSS', hwm, file=sys.stderr)\nsys.exit(code)")


def _cold_backtest(env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """`cryptobt backtest rsi --all` in a fresh process: (seconds, its own peak RSS in MB)."""
    seconds, stderr = _child(_COLD_CHILD, env, cwd)
    return seconds, int(stderr.rsplit("RSS", 1)[1].split()[0]) / 1024


def _child(code: str, env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """`python -c code` in a fresh process on this checkout: (its seconds, its stderr)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(HERE.parent)}, check=True,
                          capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - t, done.stderr


def bench_cold_cli_demo(workdir: Path, env: dict[str, str], runs_: int) -> dict:
    """Issue 32 item 4's row as the issue states it: the cold `cryptobt backtest rsi --all` on the lake `cryptobt
    demo` builds (60 synthetic pairs, the 4 real ones, the real perpetual), after a first run kept its grid."""
    from pipeline import demo

    root = workdir / "demo" / "lake"
    shutil.rmtree(root.parent, ignore_errors=True)
    demo.build_sample_lake(root, 60, 2.0, demo.DEFAULT_SAMPLE, demo.DEFAULT_FUTURES)
    env = {**env, "CRYPTOBT_LAKE_ROOT": str(root), "CRYPTOBT_RESULTS_ROOT": str(root.parent / "results")}
    _cold_backtest(env, root.parent)  # keeps the grid
    cold, bare, floor = [], [], []
    for _ in range(runs_):  # interleaved: the host's load moves all three alike
        bare.append(_child(_BARE_IMPORT, env, root.parent)[0])
        floor.append(_child(_NUMBA_FLOOR, env, root.parent)[0])
        cold.append(_cold_backtest(env, root.parent))
    seconds, rss = [c for c, _ in cold], [m for _, m in cold]
    return {"median": statistics.median(seconds), "n": runs_, "peak_rss_mb": max(rss),
            "peak_rss_mb_median": statistics.median(rss), "bare_import_seconds": statistics.median(bare),
            "numba_floor_seconds": statistics.median(floor)}


# Item 4's baseline: the bare import of the libraries the command runs on, in a fresh process, after our
# import guard (`import pipeline`: without it numba imports SciPy too, which the command never does).
_BARE_IMPORT = "import pipeline\nimport numba, numpy, pyarrow, pyarrow.parquet, typer, rich"
# What any process that runs one of our cached kernels pays at least: that import, then the first call of
# a cached kernel (numba builds its compiler context and loads the machine code).
_NUMBA_FLOOR = (_BARE_IMPORT + "\nimport numpy as np\nfrom pipeline.lake.checksum import checksum_words\n"
                "checksum_words(np.zeros(4, np.uint64), 0)")



SWEEP_100K_GRID = ("rsi_period=2:101:1", "oversold_threshold=10:49:1", "overbought_threshold=60:84:1")  # 100,000
SWEEP_QUICK_GRID = ("rsi_period=2:21:1", "oversold_threshold=10:19:1", "overbought_threshold=60:69:1")  # 2,000


def bench_sweep_100k(settings: Settings, snapshot: lake.Snapshot, env: dict[str, str], n_symbols: int,
                     quick: bool = False) -> dict:
    """Issue 14's memory row: `cryptobt sweep` of 100,000 RSI sets over `n_symbols` symbols (5 years
    hourly) in a process of its own, every result written to the results table; its peak RSS
    (VmHWM) and time. Memory is bounded by a chunk of symbols (two at a time here), so more symbols
    take longer, not more memory."""
    names = sorted(snapshot.symbols)[:n_symbols]
    grid = SWEEP_QUICK_GRID if quick else SWEEP_100K_GRID
    combos = len(options.parse_grid(get_strategy("rsi"), grid))
    argv = ["cryptobt", "sweep", "rsi", *(a for g in grid for a in ("-g", g)), "--yes", "--top", "3",
            "--no-cache", *(a for n in names for a in ("-s", n))]
    child = (f"import sys\nfrom pipeline.cli import main\nsys.argv = {argv!r}\ncode = main()\n"
             "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
             "print('RSS', hwm, file=sys.stderr)\nsys.exit(code)")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", child], env={**env, "PYTHONPATH": str(HERE.parent)}, check=True,
                          capture_output=True, text=True, cwd=settings.results_root.parent)
    seconds = time.perf_counter() - t
    bars = sum(snapshot.symbols[n]["1h"]["bars"] for n in names)
    return {"combos": combos, "symbols": n_symbols, "seconds": seconds, "results": combos * n_symbols,
            "bar_steps_per_second": bars * combos / seconds,
            "peak_rss_mb": int(done.stderr.rsplit("RSS", 1)[1].split()[0]) / 1024}


def bench_user_strategy_and_stops(settings: Settings, snapshot: lake.Snapshot, env: dict[str, str],
                                  quick: bool) -> dict:
    """Issue 13's rows: Donchian from --strategy-path over all symbols (kernel, warm end to end, and two
    cold CLI processes on a fresh kernel cache: the first compiles, the second loads the machine code),
    RSI with --sl 5 --tp 10 --trail, and a 1,000-combination Donchian sweep; each with bar-steps/s."""
    strategies.add_strategy_paths([EXAMPLE_STRATEGIES])
    batch = reader.read_prices(settings.lake_root, None, "1h", columns=("open", "high", "low", "close"),
                               snapshot=snapshot)
    bar_steps = int(batch.bars.sum())

    def rate(stats: dict, steps: int = bar_steps) -> dict:
        return {**stats, "bar_steps": steps, "bar_steps_per_second": steps / stats["median"]}

    found: dict = {}
    donchian = options.run_config(get_strategy("donchian"), {})
    found["donchian_kernel"] = rate(timed(lambda: engine.run_metrics(batch, donchian), 10))
    found["donchian_end_to_end_warm"] = rate(timed(lambda: runs.backtest(settings, donchian, write_results=False), 5))
    kernels = settings.lake_root.parent / "kernel-cache-cold"
    shutil.rmtree(kernels, ignore_errors=True)
    child_env = {**env, "CRYPTOBT_KERNEL_CACHE": str(kernels), "PYTHONPATH": str(HERE.parent)}
    command = [sys.executable, "-m", "pipeline", "backtest", "donchian", "--strategy-path", str(EXAMPLE_STRATEGIES),
               "--all", "--json", "--no-cache"]
    cold = []
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run(command, env=child_env, check=True, capture_output=True, text=True)
        cold.append(time.perf_counter() - t)
    found["donchian_cold_cli"] = {"first_seconds": cold[0], "second_seconds": cold[1],
                                  "bar_steps_per_second": bar_steps / cold[1]}
    stops = options.run_config(get_strategy("rsi"), {}, sl=5, tp=10, trail=True)
    found["rsi_stops_kernel"] = rate(timed(lambda: engine.run_metrics(batch, stops), 10))
    found["rsi_stops_end_to_end_warm"] = rate(timed(lambda: runs.backtest(settings, stops, write_results=False), 5))
    grid = strategies.parse_grid(get_strategy("donchian"), ["entry_period=5:200:5", "exit_period=5:125:5"])
    sweep = options.run_config(get_strategy("donchian"), grid)
    # Issue 32: per bar-step within 1.5x of a built-in's sweep of as many sets, the two alternating on the
    # same bars (medians of 3), so the machine's noise falls on both.
    rsi_grid = strategies.parse_grid(get_strategy("rsi"), ["rsi_period=5:50:5", "oversold_threshold=15:42:3",
                                                           "overbought_threshold=60:87:3"])
    rsi_sweep = options.run_config(get_strategy("rsi"), rsi_grid)
    times: dict[str, list[float]] = {"donchian": [], "rsi": []}
    for _ in range(1 if quick else 3):
        for name, config in (("donchian", sweep), ("rsi", rsi_sweep)):
            t = time.perf_counter()
            engine.run_metrics(batch, config)
            times[name].append(time.perf_counter() - t)
    seconds, rsi_seconds = (float(np.median(times[name])) for name in ("donchian", "rsi"))
    found["donchian_sweep_1000"] = {
        "combos": len(grid), "kernel_seconds": seconds, "runs": times,
        "bar_steps_per_second": bar_steps * len(grid) / seconds,
        "rsi_combos": len(rsi_grid), "rsi_kernel_seconds": rsi_seconds,
        "per_bar_step_vs_rsi": (seconds / len(grid)) / (rsi_seconds / len(rsi_grid))}
    return found


def bench_futures(settings: Settings, snapshot: lake.Snapshot) -> dict:
    """Issue 28's rows: RSI on every symbol as perpetuals (leverage 3, both directions, funding every 8
    hours, a mark series on every bar, flat mmr) against the same spot run, and a leverage x direction
    sweep (6 leverages x 3 directions, one grid) against a spot sweep of as many sets sharing the signals
    (6 sizes x 3 slippages); each as ns per bar-step, in this run."""
    import dataclasses

    batch = reader.read_prices(settings.lake_root, None, "1h", columns=("open", "high", "low", "close"),
                               snapshot=snapshot)
    close = batch.columns["close"]
    funding = np.where(np.isnan(close), np.nan, 0.0)
    funding[:, 1::8] = np.where(np.isnan(close[:, 1::8]), np.nan, 1e-4)
    futures_batch = dataclasses.replace(batch, columns={
        **batch.columns, "funding": funding, "mark_open": batch.columns["open"], "mark_high": batch.columns["high"],
        "mark_low": batch.columns["low"]})
    bar_steps = int(batch.bars.sum())
    rsi = get_strategy("rsi")
    spot = options.run_config(rsi, {})
    futures = options.run_config(rsi, {}, market="futures", leverage=3, direction="both", mmr=0.005)
    found: dict = {"bar_steps": bar_steps}
    # Alternating (timing.alternating): the ratio under one load, however the shared host's drifts.
    found["spot_run"], found["futures_run"] = timing.alternating(
        lambda: engine.run_metrics(batch, spot), lambda: engine.run_metrics(futures_batch, futures), _cap(10))
    # One sweep each, 18 sets: leverage x direction (a grid axis like any parameter) against spot's
    # size x slippage, every set sharing the one RSI signal set.
    futures_sets = options.run_config(rsi, options.parse_grid(
        rsi, ["leverage=1,2,3,5,10,20", "direction=long,short,both"]), market="futures", mmr=0.005)
    spot_sets = options.run_config(rsi, options.parse_grid(
        rsi, ["size=0.5,0.6,0.7,0.8,0.9,1", "slippage=0,0.01,0.02"]))
    found["spot_sweep"], found["futures_sweep"] = timing.alternating(
        lambda: engine.run_metrics(batch, spot_sets), lambda: engine.run_metrics(futures_batch, futures_sets), _cap(5))
    cube = engine.run_metrics(futures_batch, futures)
    found["liquidations"] = int(np.nansum(cube[:, :, enums.M_LIQUIDATIONS]))
    for name, steps in (("spot_run", bar_steps), ("futures_run", bar_steps), ("spot_sweep", bar_steps * 18),
                        ("futures_sweep", bar_steps * 18)):
        found[name]["ns_per_bar_step"] = found[name]["median"] / steps * 1e9
    found["run_ratio"] = found["futures_run"]["median"] / found["spot_run"]["median"]
    found["sweep_ratio"] = found["futures_sweep"]["median"] / found["spot_sweep"]["median"]
    return found


def bench_detail(n_symbols: int, years: float = 1.0) -> dict:
    """Issue 29's row: RSI with --sl 1 --tp 2 --trail on hourly bars, plain and with 5-minute detail, on the same
    synthetic random walk (5-minute bars drawn here, the hours aggregated from them), kernel time per hourly
    bar-step of each, in this run."""
    import dataclasses

    from pipeline.lake.reader import PriceBatch

    rng = np.random.default_rng(29)
    per_hour = 12
    hours = int(years * 8760)
    steps = rng.normal(0.0, 0.0015, (n_symbols, hours * per_hour))
    close5 = 100.0 * np.exp(np.cumsum(steps, axis=1))
    open5 = np.concatenate([close5[:, :1], close5[:, :-1]], axis=1)
    wiggle = np.abs(rng.normal(0.0, 0.0007, close5.shape))
    high5, low5 = np.maximum(open5, close5) * (1 + wiggle), np.minimum(open5, close5) * (1 - wiggle)
    shaped = (n_symbols, hours, per_hour)
    hourly = {"open": open5.reshape(shaped)[:, :, 0], "high": high5.reshape(shaped).max(axis=2),
              "low": low5.reshape(shaped).min(axis=2), "close": close5.reshape(shaped)[:, :, -1]}
    t0 = 1_600_000_000 // 3600 * 3600
    symbols = [f"D{i:03d}" for i in range(n_symbols)]
    plain = PriceBatch("bench", "1h", symbols, t0 + 3600 * np.arange(hours, dtype=np.int64),
                       {k: np.ascontiguousarray(v) for k, v in hourly.items()}, ["bench"] * n_symbols,
                       bars=np.full(n_symbols, hours, dtype=np.int64))
    fine = PriceBatch("bench", "5m", symbols, t0 + 300 * np.arange(hours * per_hour, dtype=np.int64),
                      {"open": open5, "high": high5, "low": low5, "close": close5}, ["bench"] * n_symbols)
    detailed = dataclasses.replace(plain, detail=fine)
    rsi = get_strategy("rsi")
    without = options.run_config(rsi, {}, sl=1, tp=2, trail=True)
    with_detail = options.run_config(rsi, {}, sl=1, tp=2, trail=True, detail="5m")
    found: dict = {"symbols": n_symbols, "hours": hours, "bar_steps": n_symbols * hours}
    found["plain"] = timed(lambda: engine.run_metrics(plain, without), 10)
    found["detail"] = timed(lambda: engine.run_metrics(detailed, with_detail), 10)
    cube = engine.run_metrics(detailed, with_detail)
    reference = engine.run_metrics(plain, without)
    found["results_changed"] = int((cube[:, 0, enums.M_FINAL_VALUE] != reference[:, 0, enums.M_FINAL_VALUE]).sum())
    found["exits"] = int(np.nansum(cube[:, 0, enums.M_CLOSED_TRADES]))
    for name in ("plain", "detail"):
        found[name]["ns_per_bar_step"] = found[name]["median"] / found["bar_steps"] * 1e9
    found["ratio"] = found["detail"]["median"] / found["plain"]["median"]
    return found


def bench_portfolio(settings: Settings, snapshot: lake.Snapshot) -> dict:
    """One shared account over every symbol (RSI, 10 slots, 10 % stakes), and vectorbt's shared cash."""
    from pipeline.engine import portfolio as pf

    batch = reader.read_prices(settings.lake_root, None, "1h", columns=("close", "volume"), snapshot=snapshot)
    config = options.run_config(get_strategy("rsi"), {})
    sets = pf.make_sets(config, [10], [pf.Stake.parse("10%")])
    found = {"end_to_end": timed(lambda: runs.portfolio(settings, config, sets, write_results=False), 5),
             "no_read": timed(lambda: pf.run(batch, config, sets), 5)}
    found["accounts_100"] = timed(lambda: pf.run(batch, config, pf.make_sets(
        config, list(range(1, 11)), [pf.Stake.parse(f"{k}%") for k in range(1, 11)])), 3)
    # Where the semantics match vectorbt's (fees 0, fixed stake, unlimited slots, cash never short).
    same = options.run_config(get_strategy("rsi"), {}, fee=0.0, initial=1e9)
    wide = pf.make_sets(same, [len(batch.symbols)], [pf.Stake.parse("100")])
    ours = pf.run(batch, same, wide)[0]
    found["ours_agreement_case"] = timed(lambda: pf.run(batch, same, wide), 5)
    try:
        from bench.baselines import vectorbt_portfolio
    except ImportError as exc:
        found["vectorbt"] = {"skipped": f"vectorbt not installed ({exc}); run `make bench`"}
        return found
    entries, exits = pf._signals(batch, same.strategy, same.params_list[0])
    close = batch.columns["close"]
    stats = timed(lambda: vectorbt_portfolio.run_shared(close, entries, exits, 100.0, 1e9), 3)
    theirs = vectorbt_portfolio.run_shared(close, entries, exits, 100.0, 1e9)
    found["vectorbt"] = {**stats, "rel_diff_final_value": abs(ours["final_value"] / theirs - 1),
                         "skipped": None, "ours_skipped": ours["skipped_no_cash"] + ours["skipped_no_slot"]}
    return found


def export_seeds_way(url: str, n: int, total: int, work: Path) -> dict:
    """The seeds' way to a Parquet copy: pandas.read_sql + to_parquet, one crypto at a time."""
    try:
        import pandas as pd
        import sqlalchemy
    except ImportError as exc:
        return {"skipped": f"pandas/sqlalchemy not installed ({exc}); run `make bench`"}
    engine_ = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    target = work / "seeds-export"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rows = 0
    t = time.perf_counter()
    with engine_.connect() as conn:
        ids = [r[0] for r in conn.execute(sqlalchemy.text("SELECT id FROM cryptocurrencies ORDER BY id LIMIT :n"),
                                          {"n": n})]
        for crypto_id in ids:
            frame = pd.read_sql(sqlalchemy.text(
                "SELECT datetime, open_price, high_price, low_price, close_price, volume FROM crypto_prices"
                " WHERE crypto_id = :id AND interval_type = '1h' ORDER BY datetime"), conn, params={"id": crypto_id})
            frame.to_parquet(target / f"{crypto_id}.parquet")
            rows += len(frame)
    seconds = time.perf_counter() - t
    return {"symbols": n, "rows": rows, "seconds": seconds, "rows_per_second": rows / seconds,
            "estimated_all_symbols_seconds": seconds / n * total}


def run_baselines(url: str, batch, config, quick: bool, ours_end_to_end: float, ours_kernel: float) -> dict:
    """The seeds' approaches and vectorbt (bench/baselines; `pip install -e .[bench]`)."""
    found: dict = {}
    cube = engine.run_metrics(batch, config)
    ours, our_trades = cube[:, 0, engine.enums.M_FINAL_VALUE], cube[:, 0, engine.enums.M_NUM_TRADES]
    try:
        from bench.baselines import seeds_original, seeds_phase12
    except ImportError as exc:
        return {"baselines": {"skipped": f"not installed ({exc}); run `make bench`"}}
    n = 5 if quick else 10
    t = time.perf_counter()
    got = seeds_original.run_rsi_all(url, limit_symbols=n)
    seconds = (time.perf_counter() - t) / n * len(batch.symbols)
    found["seeds_original"] = {
        "label": f"seeds original: per-crypto SQL + pandas iterrows, sequential (measured on {n} symbols, "
                 f"scaled to {len(batch.symbols)})",
        "seconds": seconds, "ratio": seconds / ours_end_to_end, "goal": ">= 1000x",
        "max_rel_diff_final_value": _max_diff(got, batch, ours),
        "trade_count_mismatches": _trade_mismatches(got, batch, our_trades)}
    t = time.perf_counter()
    got = seeds_phase12.run_rsi_all(url, interval="1h")
    seconds = time.perf_counter() - t
    found["seeds_phase12_hourly"] = {
        "label": "seeds phase 1+2 on the same hourly data: pandas signals + multiprocessing.Pool",
        "seconds": seconds, "ratio": seconds / ours_end_to_end, "goal": ">= 50x",
        "max_rel_diff_final_value": _max_diff(got, batch, ours),
        "trade_count_mismatches": _trade_mismatches(got, batch, our_trades)}
    t = time.perf_counter()
    seeds_phase12.run_rsi_all(url, interval="1d")
    seconds = time.perf_counter() - t
    found["seeds_phase12_daily"] = {
        "label": "seeds phase 1+2 as they run it: daily data (24x fewer bars)",
        "seconds": seconds, "ratio": seconds / ours_end_to_end}
    try:
        from bench.baselines import vectorbt_rsi
    except ImportError as exc:
        found["vectorbt"] = {"skipped": f"vectorbt not installed ({exc}); run `make bench`"}
        found.update(run_peers(batch.columns["close"], ours, our_trades, ours_kernel))
        return found
    close = batch.columns["close"]
    stats = timed(lambda: vectorbt_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0), 3)
    got = vectorbt_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0)
    found["vectorbt"] = {
        "label": "vectorbt 1.2 (TA-Lib RSI + Portfolio.from_signals) on the same arrays, warm",
        "seconds": stats["median"], "ratio": stats["median"] / ours_kernel, "goal": ">= 10x",
        **_agreement(got, ours, our_trades)}
    found.update(run_peers(close, ours, our_trades, ours_kernel))
    return found


def _agreement(got: dict[str, np.ndarray], ours: np.ndarray, our_trades: np.ndarray) -> dict:
    """A peer's per-symbol final values and entries next to our kernel's (same symbol order)."""
    return {"max_rel_diff_final_value": float(np.nanmax(np.abs(got["final_value"] / ours - 1))),
            "max_abs_diff_final_value": float(np.nanmax(np.abs(got["final_value"] - ours))),
            "trade_count_mismatches": int(np.sum(got["num_trades"] != our_trades))}


PEER_GOAL = 20  # issue 17: our kernel >= 20x the fastest peer on the RSI all-crypto run
PEERS = {"vectorbt": "vectorbt Numba", "vectorbt_rust": "vectorbt Rust", "fast_trade": "fast-trade"}
POLARS_BACKTEST_WHY = (
    "polars-backtest 0.1.7 (the other Polars-native engine) is not matched, so not run: its simulation is compiled "
    "Rust, and its Python layer runs one account over all symbols with weights normalised across them, rebalanced "
    "daily by default, where ours (and every row here) is an all-in account per symbol")
PEERS_NOTE = (
    "Peers (issue 17): vectorbt 1.2 runs each engine named (`engine=\"numba\"` / `\"rust\"`: its default "
    "\"auto\" takes Rust whenever vectorbt-rust is installed). fast-trade 3.0 is the Polars-native peer whose "
    "semantics match ours (read from its source: fill at the signal bar's close, all-in/all-out, the fee "
    "taken as SPEC takes it, an open position marked at the last close); it gets each symbol's own bars "
    "(it would turn a missing hour into a null bar), TA-Lib's RSI and the previous bar's RSI (its finta RSI is "
    "seeded otherwise and its rules have no crossing), and rounds its account to 8 decimals.")


def run_peers(close: np.ndarray, ours: np.ndarray, our_trades: np.ndarray, ours_kernel: float) -> dict:
    """Issue 17's peers on the arrays the vectorbt row uses, each timed warm (median of 3) and checked
    per symbol like it: vectorbt 1.2 on its Rust engine, fast-trade 3.0 (Polars-native), and the
    fastest of them and vectorbt's Numba engine against the goal. A peer that is not installed gets a
    row saying so (`pip install -e .[bench]`)."""
    found: dict = {}
    goal = f">= {PEER_GOAL}x"
    try:
        from vectorbt._engine import is_rust_available

        from bench.baselines import vectorbt_rsi
        if not is_rust_available():
            raise ImportError("vectorbt-rust is missing or not vectorbt's version")
    except ImportError as exc:
        found["vectorbt_rust"] = {"skipped": f"vectorbt Rust engine: {exc}; run `make bench`"}
    else:
        stats = timed(lambda: vectorbt_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0, engine="rust"), 3)
        got = vectorbt_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0, engine="rust")
        found["vectorbt_rust"] = {
            "label": "vectorbt 1.2 on its Rust engine (vectorbt-rust; TA-Lib RSI + Portfolio.from_signals) "
                     "on the same arrays, warm",
            "seconds": stats["median"], "ratio": stats["median"] / ours_kernel, "goal": goal,
            **_agreement(got, ours, our_trades)}
    try:
        from bench.baselines import fast_trade_rsi
    except ImportError as exc:
        found["fast_trade"] = {"skipped": f"fast-trade: {exc}; run `make bench`"}
    else:
        stats = timed(lambda: fast_trade_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0), 3)
        got = fast_trade_rsi.run_rsi(close, 14, 30, 70, 0.1, 1000.0)
        found["fast_trade"] = {
            "label": "fast-trade 3.0 (Polars-native: its vectorised rules + Numba account) per symbol, "
                     "TA-Lib RSI handed in, same arrays, warm",
            "seconds": stats["median"], "ratio": stats["median"] / ours_kernel, "goal": goal,
            "note": "matched: fill at the signal bar's close, all-in/all-out, fee formulas, last-close mark; "
                    "handed in: TA-Lib's RSI and the previous bar's RSI",
            # fast-trade rounds its account columns to 8 decimals: a final value of 3.3 is 1.5e-9 off relatively.
            "abs_tolerance": 5e-9,
            **_agreement(got, ours, our_trades)}
    found["polars_backtest"] = {"skipped": POLARS_BACKTEST_WHY}
    return found


def write_chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(s["label"].split(":")[0].split(" (")[0], s["ratio"]) for s in r["baselines"].values() if "ratio" in s]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.8))
    ax.barh([name for name, _ in rows], [ratio for _, ratio in rows], color="tab:green")
    ax.set_xscale("log")
    ax.set_xlabel("how many times faster our pipeline is (log scale)")
    for i, (_, ratio) in enumerate(rows):
        ax.text(ratio, i, f" {ratio:,.0f}x", va="center")
    ax.set_xlim(1, max(ratio for _, ratio in rows) * 4)
    ax.set_title(f"RSI over {r['scale']['cryptos']} cryptos x {r['scale']['years']:g} y hourly ({r['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _trade_mismatches(got: dict, batch, our_trades: np.ndarray) -> int:
    """Symbols whose number of entries differs from ours."""
    return sum(1 for s, v in got.items() if s in batch.symbols
               and v["num_trades"] != int(our_trades[batch.symbols.index(s)]))


def _max_diff(got: dict, batch, ours: np.ndarray) -> float:
    diffs = [abs(v["final_value"] / ours[batch.symbols.index(s)] - 1) for s, v in got.items() if s in batch.symbols]
    return float(max(diffs)) if diffs else float("nan")


def _written(incremental: dict) -> str:
    """Files, rows and bytes an incremental export wrote (older results have none of it)."""
    if "rows_written" not in incremental:
        return "not recorded"
    rows, size = incremental["rows_written"], incremental["bytes_written"]
    return (f"{max(incremental['files_written'])} files, {max(rows):,} rows, {max(size) / 1e3:,.0f} kB at most: "
            "the newest year's tail")


def _cold_demo_ratio_row(d: dict) -> str:
    """Item 4's time: the cold command over the bare import of its libraries, beside numba's floor."""
    ratio = d["median"] / d["bare_import_seconds"]
    return (f"| that command's time over the bare import of numba, numpy, pyarrow(.parquet), typer and rich "
            f"({d['bare_import_seconds']:.2f} s; medians of {d['n']}, interleaved) | {ratio:.2f}x; the floor of any "
            f"process running one cached numba kernel (that import, then the kernel's first call) "
            f"{d['numba_floor_seconds']:.2f} s = {d['numba_floor_seconds'] / d['bare_import_seconds']:.2f}x | "
            f"<= 1.3x | {_goal(ratio, 1.3)} |")


def raw_binary_copy_seconds(url: str) -> float:
    """Seconds psql takes to COPY the whole price table out in binary to /dev/null: the floor of any
    export (issue 32 item 5 measures the export against it in the same run)."""
    statement = ("COPY crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, "
                 "close_price, volume) TO STDOUT (FORMAT binary)")
    t = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-o", "/dev/null", "-c", statement],
                   check=True, capture_output=True)
    return time.perf_counter() - t


def _goal(measured: float, goal: float, lower_is_better: bool = True) -> str:
    met = measured <= goal if lower_is_better else measured >= goal
    return "met" if met else "**missed**"


def _export_row(e: dict) -> str:
    """The full export's row: its rows/s beside a raw binary COPY of the same table in the same run."""
    raw = e.get("raw_copy_rows_per_second")
    share = e["rows_per_second"] / raw if raw else 0.0
    beside = (f"; {share:.0%} of a raw binary COPY of the table to /dev/null, {raw:,.0f} rows/s (median of 3, "
              f"alternating with the export)") if raw else ""
    return (f"| full export PostgreSQL -> lake (median of 3) | {e['rows_per_second']:,.0f} rows/s ({e['rows']:,} rows, "
            f"{e['seconds']:.2f} s{beside}) | >= 1,800,000 rows/s and >= 90 % of raw COPY | "
            f"{_goal(min(e['rows_per_second'] / 1.8e6, share / 0.9), 1.0, False)} |")


def write_report(r: dict, path: Path) -> None:
    k1, k2 = r["rsi_kernel_threads_1"], r["rsi_kernel_threads_2"]
    e2e = r["rsi_end_to_end_warm"]
    c = r["cold_cli"]
    b = r["baselines"]
    lines = [
        "# Benchmark results", "",
        f"Date: {r['date']} · machine: {r['machine']['platform']}, {r['machine']['cpus']} cores, "
        f"Python {r['machine']['python']} · scale: {r['scale']['cryptos']} cryptos x {r['scale']['years']} years "
        f"hourly + daily.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
        "Timings are medians of repeated runs (min/median/max where shown); ratios are within this run.", "",
        "| scenario | measured | goal | |", "|---|---|---|---|",
        f"| RSI(14, 30/70) all symbols, kernel, 2 threads | {k2['median'] * 1000:.1f} ms "
        f"({k2['min'] * 1000:.1f}/{k2['median'] * 1000:.1f}/{k2['max'] * 1000:.1f}) | <= 200 ms | {_goal(k2['median'], 0.2)} |",
        f"| single backtest: one symbol, 5 years hourly, read + kernel (warm-up + 10 runs) | "
        f"{r['single_backtest']['median'] * 1000:.1f} ms ({r['single_backtest']['min'] * 1000:.1f}/"
        f"{r['single_backtest']['median'] * 1000:.1f}/{r['single_backtest']['max'] * 1000:.1f}) | | |",
        f"| RSI all symbols, lake read + kernel + results written (warm) | {e2e['median'] * 1000:.1f} ms "
        f"({e2e['min'] * 1000:.1f}/{e2e['median'] * 1000:.1f}/{e2e['max'] * 1000:.1f}; kernel share "
        f"{e2e['kernel_share_pct']:.0f} %; the grid mapped from the snapshot's grid cache) | <= 100 ms | "
        f"{_goal(e2e['median'], 0.1)} |",
        f"| the same with the grid cache off (DuckDB scan each run) | "
        f"{r['rsi_end_to_end_warm_scanned']['median'] * 1000:.1f} ms | | |",
        f"| kernel bar-steps/s (1 thread / 2 threads) | {k1['bar_steps_per_second'] / 1e6:,.0f} M / "
        f"{k2['bar_steps_per_second'] / 1e6:,.0f} M | | parallel speed-up {k1['median'] / k2['median']:.2f}x |",
        f"| cold CLI process `cryptobt backtest rsi --all`: lake -> leaderboard, numba's cache filled | "
        f"{c['median']:.2f} s ({c['min']:.2f}/{c['median']:.2f}/{c['max']:.2f}, {c['n']} runs) | <= 1.0 s | "
        f"{_goal(c['median'], 1.0)} |",
        f"| peak RSS of that CLI process | {c['peak_rss_mb']:.0f} MB (median {c['peak_rss_mb_median']:.0f} MB) | "
        f"<= 300 MB | {_goal(c['peak_rss_mb'], 300)} |",
        *([f"| the same on the demo lake (`cryptobt demo`'s: 64 spot pairs, 1 perpetual; issue 32 item 4) | "
           f"{r['cold_cli_demo']['median']:.2f} s, peak RSS {r['cold_cli_demo']['peak_rss_mb']:.0f} MB (median "
           f"{r['cold_cli_demo']['peak_rss_mb_median']:.0f} MB) | <= 250 MB | "
           f"{_goal(r['cold_cli_demo']['peak_rss_mb'], 250)} |"] if r.get("cold_cli_demo") else []),
        *([_cold_demo_ratio_row(r["cold_cli_demo"])] if r.get("cold_cli_demo", {}).get("bare_import_seconds") else []),
        f"| the same process on empty caches (numba compiles every kernel first) | {c['first_run_seconds']:.2f} s, "
        f"{c['first_run_peak_rss_mb']:.0f} MB | | |",
        f"| sweep {r['sweep_1000']['combos']} RSI combinations, kernel | {r['sweep_1000']['kernel_seconds']:.2f} s "
        f"({r['sweep_1000']['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s) | <= 60 s | "
        f"{_goal(r['sweep_1000']['kernel_seconds'], 60)} |",
        f"| sweep kernel, bar-steps/s (issue 32 item 1) | {r['sweep_1000']['bar_steps_per_second'] / 1e6:,.0f} M | "
        f">= 1,000 M | {_goal(r['sweep_1000']['bar_steps_per_second'], 1e9, False)} |",
        f"| sweep end to end as `cryptobt sweep` runs it (read, kernel with the PBO's block sums, "
        f"statistics, {r['sweep_1000']['results']:,} results written as columns) | "
        f"{r['sweep_1000']['end_to_end_seconds']:.2f} s = {_ratio(r['sweep_1000'], 'end_to_end_seconds'):.2f}x the "
        f"kernel | <= 1.2x | {_goal(_ratio(r['sweep_1000'], 'end_to_end_seconds'), 1.2)} |",
        f"| walk-forward K=5 over the same sweep, end to end | {r['sweep_1000']['walk_forward_seconds']:.2f} s = "
        f"{r['sweep_1000']['walk_forward_seconds'] / r['sweep_1000']['end_to_end_seconds']:.2f}x the plain sweep's | "
        f"<= 1.5x | {_goal(r['sweep_1000']['walk_forward_seconds'] / r['sweep_1000']['end_to_end_seconds'], 1.5)} |",
        f"| sweep kernel with the PBO's block sums (S=16, {r['sweep_1000']['blocks_mb']:,.0f} MB; "
        f"{_runs_note(r['sweep_1000'])}) | {r['sweep_1000']['blocks_kernel_seconds']:.2f} s | | |",
        f"| PBO (C(16, 8) splits) and deflated Sharpe of every symbol | "
        f"{r['sweep_1000']['overfit_statistics_seconds']:.2f} s | | |",
        *([f"| the same with `--pbo-blocks 8` (C(8, 4) = 70 splits instead of 12,870; the 16 blocks' sums added "
           f"in pairs) | {r['sweep_1000']['overfit_statistics_8_blocks_seconds']:.2f} s "
           f"({100 * _ratio(r['sweep_1000'], 'overfit_statistics_8_blocks_seconds'):.0f} % of the kernel) | | |"]
          if "overfit_statistics_8_blocks_seconds" in r["sweep_1000"] else []),
        f"| overfitting report's share of the sweep kernel (the block sums' "
        f"{_blocks_share(r['sweep_1000']):+.0f} % and the statistics' "
        f"{100 * _ratio(r['sweep_1000'], 'overfit_statistics_seconds'):.0f} %) | "
        f"{_overhead(r['sweep_1000']):.0f} % | <= 10 % | {_goal(_overhead(r['sweep_1000']), 10)} |",
        f"| sweep {r['sweep_100k']['combos']:,} RSI combinations x {r['sweep_100k']['symbols']} symbols (5 years "
        f"hourly, `cryptobt sweep` in its own process, {r['sweep_100k']['results']:,} results written): peak RSS | "
        f"{r['sweep_100k']['peak_rss_mb']:,.0f} MB ({r['sweep_100k']['seconds']:.1f} s, "
        f"{r['sweep_100k']['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s with the statistics) | <= 2,048 MB | "
        f"{_goal(r['sweep_100k']['peak_rss_mb'], 2048)} |",
        _export_row(r["export_full"]),
        (f"| seeds' export: pandas.read_sql + to_parquet per crypto | "
         f"{r['export_seeds_way']['rows_per_second']:,.0f} rows/s (ours: "
         f"{r['export_full']['rows_per_second'] / r['export_seeds_way']['rows_per_second']:.1f}x) | | |"
         if "rows_per_second" in r["export_seeds_way"] else
         f"| seeds' export | {r['export_seeds_way']['skipped']} | | |"),
        f"| incremental export, one new hour per symbol (median of 3) | {r['export_incremental']['seconds']:.2f} s "
        f"({r['export_incremental']['rows']} rows read; wrote {_written(r['export_incremental'])}) | <= 0.3 s | "
        f"{_goal(r['export_incremental']['seconds'], 0.3)} |",
        f"| read one symbol, one year | {r['read_one_symbol_year']['median'] * 1000:.1f} ms | <= 10 ms | "
        f"{_goal(r['read_one_symbol_year']['median'], 0.01)} |",
        f"| read all symbols daily | {r['read_all_daily']['median'] * 1000:.1f} ms | <= 50 ms | "
        f"{_goal(r['read_all_daily']['median'], 0.05)} |",
        f"| read all symbols hourly close into an array (DuckDB scan of the snapshot) | "
        f"{r['read_all_hourly_close']['median'] * 1000:.1f} ms | "
        f"<= 150 ms | {_goal(r['read_all_hourly_close']['median'], 0.15)} |",
        f"| the same grid mapped from the snapshot's grid cache (every later read of it) | "
        f"{r['read_all_hourly_close_mapped']['median'] * 1000:.1f} ms | | |",
        f"| cache hit, {r['scale']['cryptos']}-symbol batch | {r['cache_hit_batch']['median'] * 1000:.2f} ms "
        f"(miss: {r['cache_miss_batch']['seconds'] * 1000:.0f} ms) | <= 10 ms (issue 32 item 7) | "
        f"{_goal(r['cache_hit_batch']['median'], 0.01)} |",
        f"| cache hit, single result | {r['cache_hit_single']['median'] * 1000:.2f} ms | <= 0.5 ms (issue 32 item 7) | "
        f"{_goal(r['cache_hit_single']['median'], 0.0005)} |",
        f"| lake size vs PostgreSQL table + indexes | {r['size']['ratio_pct']:.1f} % "
        f"({r['size']['lake_bytes'] / 2**20:.0f} MB vs {r['size']['postgres_bytes'] / 2**20:.0f} MB) | <= 15 % | "
        f"{_goal(r['size']['ratio_pct'], 15)} |",
    ]
    u = r.get("issue13")
    if u:
        dk, de, dc = u["donchian_kernel"], u["donchian_end_to_end_warm"], u["donchian_cold_cli"]
        sk, se, ds = u["rsi_stops_kernel"], u["rsi_stops_end_to_end_warm"], u["donchian_sweep_1000"]
        lines += [
            f"| Donchian(20, 10) from `--strategy-path` (a user's file), all symbols, kernel | "
            f"{dk['median'] * 1000:.1f} ms ({dk['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s) | | |",
            f"| the same, lake read + kernel + results (warm) | {de['median'] * 1000:.1f} ms "
            f"({de['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s) | | |",
            f"| the same as a cold CLI process on a fresh kernel cache: first (compiles) / second (loads) | "
            f"{dc['first_seconds']:.2f} s / {dc['second_seconds']:.2f} s ({dc['bar_steps_per_second'] / 1e6:,.1f} M "
            f"bar-steps/s) | second <= 3 s | {_goal(dc['second_seconds'], 3)} |",
            f"| RSI(14, 30/70) with `--sl 5 --tp 10 --trail`, all symbols, kernel (reads high and low) | "
            f"{sk['median'] * 1000:.1f} ms ({sk['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s; without stops "
            f"{k2['median'] * 1000:.1f} ms) | | |",
            f"| the same, lake read + kernel + results (warm) | {se['median'] * 1000:.1f} ms "
            f"({se['bar_steps_per_second'] / 1e6:,.0f} M bar-steps/s) | | |",
            f"| sweep {ds['combos']:,} Donchian combinations (entry 5..200, exit 5..125; each indicator row kept per "
            f"distinct period), kernel | {ds['kernel_seconds']:.2f} s ({ds['bar_steps_per_second'] / 1e6:,.0f} M "
            f"bar-steps/s) | <= 60 s | {_goal(ds['kernel_seconds'], 60)} |",
            *([f"| the same per bar-step vs the {ds['rsi_combos']:,}-set RSI sweep, alternating on the same bars "
               f"(medians of {len(ds['runs']['rsi'])}) | {ds['per_bar_step_vs_rsi']:.2f}x ({ds['kernel_seconds']:.2f} s "
               f"vs {ds['rsi_kernel_seconds']:.2f} s) | <= 1.5x | {_goal(ds['per_bar_step_vs_rsi'], 1.5)} |"]
              if "per_bar_step_vs_rsi" in ds else []),
        ]
    f = r.get("futures")
    if f:
        fr, sr, fs, ss = f["futures_run"], f["spot_run"], f["futures_sweep"], f["spot_sweep"]
        lines += [
            f"| RSI on every symbol as perpetual futures (leverage 3, both directions, funding every 8 h, mark bars, "
            f"{f['liquidations']:,} liquidations), kernel | {fr['median'] * 1000:.1f} ms ({fr['ns_per_bar_step']:.2f} "
            f"ns/bar-step) vs the same spot run {sr['median'] * 1000:.1f} ms ({sr['ns_per_bar_step']:.2f}): "
            f"{f['run_ratio']:.2f}x | <= 1.5x spot | {_goal(f['run_ratio'], 1.5)} |",
            f"| futures sweep: 6 leverages x 3 directions, kernel | {fs['median']:.2f} s ({fs['ns_per_bar_step']:.2f} "
            f"ns/bar-step) vs a spot sweep of 18 sets (6 sizes x 3 slippages) {ss['median']:.2f} s "
            f"({ss['ns_per_bar_step']:.2f}): {f['sweep_ratio']:.2f}x | <= 1.5x spot | {_goal(f['sweep_ratio'], 1.5)} |",
        ]
    d = r.get("detail")
    if d:
        lines += [
            f"| RSI with `--sl 1 --tp 2 --trail` on 1h bars with `--detail 5m` ({d['symbols']} synthetic symbols x "
            f"{d['hours']:,} hours, {d['exits']:,} exits, {d['results_changed']} of {d['symbols']} final values "
            f"changed by the detail), kernel | {d['detail']['median'] * 1000:.1f} ms "
            f"({d['detail']['ns_per_bar_step']:.2f} ns/bar-step) vs plain 1h {d['plain']['median'] * 1000:.1f} ms "
            f"({d['plain']['ns_per_bar_step']:.2f}): {d['ratio']:.2f}x | <= 3x plain | {_goal(d['ratio'], 3)} |",
        ]
    p = r.get("portfolio")
    if p:
        lines += [
            f"| portfolio RSI, one account over all symbols, 10 slots, 10 % stakes: read + signals + account "
            f"(warm) | {p['end_to_end']['median'] * 1000:.1f} ms (independent accounts, same strategy: "
            f"{e2e['median'] * 1000:.1f} ms) | <= 500 ms | {_goal(p['end_to_end']['median'], 0.5)} |",
            f"| the same without the read (signals + account) | {p['no_read']['median'] * 1000:.1f} ms | | |",
            f"| portfolio sweep: 100 accounts (10 slot counts x 10 stakes), one signal set | "
            f"{p['accounts_100']['median']:.2f} s | | |",
        ]
        v = p.get("vectorbt", {})
        if v.get("skipped"):
            lines.append(f"| vectorbt shared cash | skipped: {v['skipped']} | | |")
        elif v:
            lines.append(
                f"| vectorbt 1.2 `from_signals(cash_sharing=True, group_by=True)`, same signals and prices, fees 0, "
                f"fixed stake, unlimited slots | {v['median'] * 1000:.0f} ms vs ours "
                f"{p['ours_agreement_case']['median'] * 1000:.1f} ms "
                f"({v['median'] / p['ours_agreement_case']['median']:,.0f}x) | | final value rel. diff "
                f"{v['rel_diff_final_value']:.1e} ({v['ours_skipped']} entries skipped) |")
    if r.get("sweep_stats"):
        from bench import sweep_stats as stats_bench

        lines += stats_bench.report_lines(r["sweep_stats"])
    if r.get("seed"):  # a row of the table above, before the sections that follow
        lines.append(f"| seed (binary COPY, all indexes) | {r['seed']['rows_per_second']:,.0f} rows/s | "
                     f">= 1,000,000 rows/s | {_goal(r['seed']['rows_per_second'], 1e6, False)} |")
    if r.get("object_store"):
        from bench import object_store

        lines += object_store.report_lines(r["object_store"])
    if r.get("results_queries"):
        from bench import results_queries

        lines += results_queries.report_lines(r["results_queries"])
    lines += ["", "Where a sweep's time goes, end to end under py-spy: [PROFILE.md](PROFILE.md) "
              "(`python -m bench.profile_sweep`, run by `make bench` after this report)."]
    lines += ["", "## Baselines (same data, same run)", "",
              "End-to-end rows compare with our warm end-to-end run (lake read + kernel + results); "
              "the peers (vectorbt on its Numba and its Rust engine, fast-trade) get the same aligned arrays as "
              "our kernel and are compared with the kernel alone. "
              "Agreement is checked per symbol: final value (tolerance 1e-9 relative) and number of trades "
              "(must be equal).", ""]
    if any(name in b for name in PEERS):
        lines += [PEERS_NOTE, ""]
    lines += ["| method | time | ours is | goal | agreement with ours |", "|---|---|---|---|---|"]
    for name, stats in b.items():
        if "skipped" in stats:
            lines.append(f"| {name} | skipped: {stats['skipped']} | | | |" if name != "polars_backtest" else
                         f"| polars-backtest 0.1.7 | not run | | | {stats['skipped']} |")
            continue
        agree = stats.get("max_rel_diff_final_value")
        agreement = (f"final value max rel. diff {agree:.1e}; symbols with another trade count: "
                     f"{stats['trade_count_mismatches']}" if agree is not None else "(different data: daily)")
        if stats.get("abs_tolerance") is not None:
            agreement += (f"; max abs. diff {stats['max_abs_diff_final_value']:.1e} (its rounding to 8 decimals: "
                          f"{'within' if stats['max_abs_diff_final_value'] <= stats['abs_tolerance'] else 'beyond'} "
                          f"{stats['abs_tolerance']:.0e})")
        if stats.get("note"):
            agreement += f" ({stats['note']})"
        lines.append(f"| {stats['label']} | {stats['seconds']:.2f} s | {stats['ratio']:,.0f}x faster | "
                     f"{stats.get('goal', '')} | {agreement} |")
    peers = {name: b[name] for name in PEERS if "ratio" in b.get(name, {})}
    if peers:
        fastest = min(peers, key=lambda name: peers[name]["seconds"])
        ratio = peers[fastest]["ratio"]
        lines.append(f"| fastest peer on the RSI all-crypto run ({', '.join(PEERS[n] for n in peers)}): "
                     f"{PEERS[fastest]} | {peers[fastest]['seconds']:.2f} s | {ratio:,.0f}x faster | "
                     f">= {PEER_GOAL}x | {_goal(ratio, PEER_GOAL, False)} |")
    lines += ["", "![ratios](ratios.png)"]
    if r.get("scaling"):
        lines += ["", *scaling.report_lines(r["scaling"])]
    write_chart(r, path.parent / "ratios.png")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
