"""The benchmark runs end to end and writes its report (times are reported, never asserted).

At --smoke scale (bench/run.py): --quick's rows, code paths and cold-cache runs on 6 cryptos x 0.25 year,
each timing once; the scale and the repeats are what the times need, not what this test proves."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_smoke_benchmark_writes_a_report_with_every_scenario(tmp_path, pg_admin_url, redis_url):
    import uuid

    import psycopg

    database = f"cryptobt_test_bench_{uuid.uuid4().hex[:8]}"
    try:
        done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path),
                               "--database", database, "--workdir", str(tmp_path / "work")],
                              capture_output=True, text=True, timeout=600)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "RESULTS.md").read_text()
    raw = json.loads((tmp_path / "results.json").read_text())
    for scenario in ("rsi_kernel_threads_1", "rsi_kernel_threads_2", "cold_cli", "sweep_1000", "export_full",
                     "export_incremental", "cache_hit_batch", "cache_miss_batch", "read_all_hourly_close"):
        assert scenario in raw
    assert raw["sweep_1000"]["combos"] == 1000
    # Issue 14's rows: the CLI-shaped sweep wrote every result; walk-forward and the big sweep's memory ran.
    assert raw["sweep_1000"]["results"] == 1000 * raw["scale"]["cryptos"]
    assert raw["sweep_1000"]["walk_forward_symbols"] > 0
    assert raw["sweep_100k"]["results"] == raw["sweep_100k"]["combos"] and raw["sweep_100k"]["peak_rss_mb"] > 0
    assert "| walk-forward K=5" in report and "peak RSS |" in report
    assert "| RSI(14, 30/70) all symbols" in report and "## Baselines" in report
    # Issue 31's rows: S3 against the local disk, a sweep on workers, a worker's peak memory.
    assert "## The lake on object storage" in report and raw["object_store"]["workers"]["2"]["median"] > 0
    assert len(raw["object_store"]["worker_peak"]["workers_mb"]) == 2
    assert raw["results_queries"]["rows"] == 20 * 20_000 and "## Results queries over a long history" in report
    assert raw["futures"]["run_ratio"] > 0 and "as perpetual futures" in report and "futures sweep" in report
    if "seeds_original" in raw["baselines"]:  # the baselines ran (pandas is there): each peer has its row
        for peer in ("vectorbt", "vectorbt_rust", "fast_trade"):
            assert peer in raw["baselines"], peer
