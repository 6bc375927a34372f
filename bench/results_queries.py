"""Issue 32, item 9: results queries against a long history, in the same run as their baseline.

A real sweep's results file (1,000 RSI sets x 20 symbols = 20,000 rows) is copied under other run ids and
parameters into a results table of 10 M rows in 500 files; `results top`, `results show RUN` and the run list
are timed on it (medians), beside `top` as it ranked before (the dedup window over every row: the baseline),
then again after `results compact`.

    python -m bench.results_queries [--files 500]   # prints the rows
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.timing import timed


def build_history(folder: Path, files: int) -> tuple[Path, str]:
    """A results table of `files` copies of one 20,000-row sweep file; (its root, one run id in it)."""
    import duckdb

    lake, seed = folder / "lake", folder / "seed-results"
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake), "CRYPTOBT_RESULTS_ROOT": str(seed), "REDIS_URL": ""}
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from pipeline.demo import "
                    "build_sample_lake; build_sample_lake(Path(sys.argv[1]), 20, 1.0, None)", str(lake)],
                   env=env, check=True)
    subprocess.run([sys.executable, "-m", "pipeline", "sweep", "rsi", "-g", "rsi_period=5:23:2", "-g",
                    "oversold_threshold=15:33:2", "-g", "overbought_threshold=60:78:2", "--all", "--yes", "--json"],
                   env=env, check=True, capture_output=True)
    base = next(seed.glob("run_date=*/strategy=rsi/*.parquet"))
    root = folder / "history" / "results"
    con = duckdb.connect()
    con.execute(f"CREATE TABLE base AS SELECT * FROM read_parquet('{base}')")
    for k in range(files):
        run = _run_id(k, files)
        target = root / f"run_date=2026-11-{run[6:8]}" / "strategy=rsi"
        target.mkdir(parents=True, exist_ok=True)
        # Another sweep: other parameters (a key more in params_json), other numbers, its own run id.
        con.execute(f"""COPY (SELECT * REPLACE ('{run}' AS run_id,
                            rtrim(params_json, '}}') || ', "copy": {k}}}' AS params_json,
                            total_return_pct + {k} * 1e-6 AS total_return_pct) FROM base)
                        TO '{target / (run + ".parquet")}' (FORMAT parquet, COMPRESSION zstd)""")
    return root, _run_id(files // 2, files)


def _run_id(k: int, files: int) -> str:
    """The `k`-th run's id: runs spread over 28 days in the order of their ids, as ids that begin with their
    creation time are."""
    return f"202611{1 + k * 28 // files:02d}T000000{k:06d}Z-{k:08x}"


def bench_results_queries(files: int = 500, repeat: int = 3) -> dict[str, Any]:
    """The queries on the history as runs left it (a file a run), then after `results compact` (a file a
    day's folder): the same table, the same answers."""
    from pipeline.store import compact, queries

    def measured(root: Path) -> dict[str, Any]:
        return {
            "top": timed(lambda: queries.top(root), repeat),
            "show": timed(lambda: queries.show(root, run_id), repeat),
            "runs_list": timed(lambda: queries.run_history(root), repeat),
            "count": timed(lambda: queries.query(root, "SELECT count(*) FROM results"), repeat),
        }

    with tempfile.TemporaryDirectory() as folder:
        root, run_id = build_history(Path(folder), files)
        rows = queries.query(root, "SELECT count(*) FROM results")[1][0][0]
        out: dict[str, Any] = {
            "files": files, "rows": rows,
            "top_every_row_baseline": timed(lambda: queries.query(root, queries._TOP_SQL, [None, None, 10, None, None]),
                                            repeat=1, warmup=0),
        }
        answers = (queries.top(root), queries.show(root, run_id), queries.run_history(root))
        out["as_written"] = measured(root)
        merged: list[Any] = []
        out["compaction"] = timed(lambda: merged.extend(compact.compact(root)), repeat=1, warmup=0)
        out["files_compacted"] = len(list(root.rglob("*.parquet")))
        out["compacted"] = measured(root)
        if (queries.top(root), queries.show(root, run_id), queries.run_history(root)) != answers:
            raise AssertionError("the compacted table answered otherwise than the files it replaced")
        return out


def report_lines(r: dict) -> list[str]:
    def ms(cell: dict) -> str:
        return f"{cell['median'] * 1000:,.0f} ms"

    written, compacted = r["as_written"], r["compacted"]
    return [
        "", f"## Results queries over a long history (issue 32, item 9): {r['rows']:,} rows in {r['files']} files", "",
        f"As the runs wrote it (a file a run: {r['files']} files), and after `cryptobt results compact` merged each "
        f"day's folder ({r['files_compacted']} files; the compaction took {r['compaction']['median']:,.1f} s, once): "
        "the same rows, the same answers (checked).", "",
        "| query | a file a run | compacted | goal |", "|---|---:|---:|---|",
        f"| `results top` as it ranked before: the dedup window over every row (baseline, one run) | "
        f"{ms(r['top_every_row_baseline'])} | | |",
        f"| `results top` (only the rows above its cut) | {ms(written['top'])} | {ms(compacted['top'])} | <= 200 ms |",
        f"| `results show RUN` (that run's files alone) | {ms(written['show'])} | {ms(compacted['show'])} | <= 200 ms |",
        f"| the run list (`results runs`, the dashboard's) | {ms(written['runs_list'])} | {ms(compacted['runs_list'])} "
        "| <= 200 ms |",
        f"| `SELECT count(*) FROM results` (opening every file) | {ms(written['count'])} | {ms(compacted['count'])} | |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    args = parser.parse_args()
    print("\n".join(report_lines(bench_results_queries(args.files))))


if __name__ == "__main__":
    main()
