"""bench/scaling.py: its prices are pipeline.source.synthetic's market, its cells count bar-steps as the
kernel runs them, and its section replaces itself in RESULTS.md without touching the rest (times are
reported, never asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import scaling
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.engine.strategies import get_strategy
from pipeline.source.synthetic import generate_market


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """3 symbols x 0.1 years on the hourly grid, as the scaling cells load them."""
    path = tmp_path_factory.mktemp("scaling") / "market"
    scaling.generate(3, 0.1, path)
    return path


def test_the_grid_holds_generate_markets_bars(market):
    names, frame = generate_market(3, 0.1, seed=scaling.SEED)
    batch = scaling._load_batch(market)
    assert batch.symbols == names
    for i in range(len(names)):
        bars = frame.filter(frame["symbol_index"] == i)
        at = np.flatnonzero(~np.isnan(batch.columns["close"][i]))
        np.testing.assert_array_equal(batch.times[at], bars["ts"].dt.epoch("s").to_numpy())
        np.testing.assert_array_equal(batch.columns["close"][i, at], bars["close"].to_numpy())
        np.testing.assert_array_equal(batch.columns["open"][i, at], bars["open"].to_numpy())
    assert int(batch.bars.sum()) == frame.height


@pytest.mark.slow
def test_a_cell_counts_the_kernels_bar_steps_and_the_section_replaces_itself(market, tmp_path):
    run = scaling.measure_cell("run", market, 8, 2)
    sweep = json.loads(scaling._child(["--cell", "sweep", str(market), "--combos", "8", "--repeat", "1"])
                       .strip().splitlines()[-1])
    batch = scaling._load_batch(market)
    bars = int(batch.bars.sum())
    assert run["bars"] == sweep["bars"] == bars and run["combos"] == 1
    assert sweep["combos"] == 8 and sweep["bar_steps"] == 8 * bars  # grid_specs(8): 2 values of each parameter
    # What the cell timed is the engine's own result for that sweep.
    config = options.run_config(get_strategy("rsi"), strategies.parse_grid(get_strategy("rsi"), scaling.grid_specs(8)))
    assert engine.run_metrics(batch, config).shape[:2] == (3, 8)
    for cell in (run, sweep):
        # VmHWM is updated lazily (per-thread RSS counters): it may trail VmRSS by a few pages.
        assert cell["peak_rss_mb"] >= 0.98 * cell["rss_before_kernel_mb"] > 0 and cell["seconds"] > 0
        cell["years"] = 0.1
    found = {"date": "2026-12-02T00:00:00+00:00", "combos": 8, "cells": [run, sweep], "wall_seconds": 1.0,
             "load_average": (0.5, 0.5, 0.5),
             "preset": {"symbols": (3,), "years": (0.1,), "base_symbols": 3, "base_years": 0.1, "combos": 8}}
    report = tmp_path / "RESULTS.md"
    report.write_text("# Benchmark results\n\n| a | b |\n\n## Baselines\n\nrows\n\n![ratios](ratios.png)\n")
    scaling.merge_into_report(found, report)
    first = report.read_text()
    scaling.merge_into_report(found, report)
    text = report.read_text()
    assert text == first and text.count(scaling.SECTION) == 1
    assert text.startswith("# Benchmark results\n\n| a | b |\n\n## Baselines\n\nrows\n\n![ratios](ratios.png)\n")
    assert "sweep cells with 8 combinations, not 1,000" in text and "| 3 x 0.1 (base) |" in text
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"export_full": {"rows": 1}}))
    scaling.merge_into_json(found, results)
    assert json.loads(results.read_text())["export_full"] == {"rows": 1}
