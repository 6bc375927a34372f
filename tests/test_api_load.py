"""A small version of bench/api_load.py: concurrent streams and cached single-symbol requests on
loopback lose nothing and answer what the CLI computes without the cache. No time is asserted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bench import api_load
from pipeline import demo
from pipeline.core.config import Settings
from pipeline.lake import snapshots as lake
from tests.api_server import serving


@pytest.mark.slow
def test_concurrent_streams_and_cached_requests_lose_nothing(tmp_path, redis_url, redis_prefix):
    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=6, years=0.3, sample=demo.DEFAULT_SAMPLE)
    symbols = sorted(lake.require_snapshot(lake_root).symbols)
    settings = Settings(lake_root=lake_root, results_root=tmp_path / "results", redis_url=redis_url,
                        cache_prefix=redis_prefix, api_workers=2, api_queue=20)
    with serving(settings) as (base, app):
        report = asyncio.run(api_load.load(base, streams=12, singles=30, symbols=symbols, distinct=3,
                                           concurrency=8))
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "cli"),
           "REDIS_URL": "", "PYTHONPATH": str(Path(__file__).parents[1])}
    summary = api_load.check(report, symbols, env)
    assert summary["streams_rejected_429"] == 0
    assert summary["streams_lost"] == 0 and summary["singles_lost"] == 0
    assert summary["stream_results"] == 12 * len(symbols)
    assert summary["mismatches_vs_cli"] == 0
    # Three distinct requests: the identical ones joined a running run or found the cache.
    runner = app.state.runner
    assert runner.counts["started"] + runner.counts["joined"] == 12 + 30
