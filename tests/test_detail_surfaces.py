"""--detail beyond one backtest (issue 29: "works in sweeps, walk-forward, ... the notebook API"): every set of
a sweep equals its own detailed run; a walk-forward over detailed sets runs on the same finer bars; a
perpetual's detail runs from the notebook. The rule itself is checked against independent references in
test_detail_reference.py (spot) and test_futures_detail_reference.py (perpetuals)."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.notebook import run_backtest
from pipeline.source.bar_rules import resample
from tests.test_detail_reference import FILES, PARAMS

FIVES = {path.name.split("-")[0]: pl.read_ipc(path) for path in FILES[:2]}
HOURS = {name: resample(frame.rename({"date": "ts"}).with_columns(pl.col("ts").dt.cast_time_unit("us")), "1h")
         .rename({"ts": "date"}).drop("bars") for name, frame in FIVES.items()}


def test_every_set_of_a_detailed_sweep_is_its_own_detailed_run():
    grid = [{**PARAMS, "sl": sl, "tp": tp} for sl in (0.5, 1.0) for tp in (0.6, 1.5)]
    sweep = run_backtest(HOURS, "rsi", grid, detail="5m", detail_frames=FIVES, pbo_blocks=0)
    assert sweep.height == 2 * len(grid)
    for one in grid:
        single = run_backtest(HOURS, "rsi", PARAMS, sl=one["sl"], tp=one["tp"], detail="5m", detail_frames=FIVES)
        for row in single.to_dicts():
            same = sweep.filter((pl.col("symbol") == row["symbol"]) & (pl.col("sl_pct") == one["sl"])
                                & (pl.col("tp_pct") == one["tp"])).row(0, named=True)
            assert same["final_value"] == pytest.approx(row["final_value"], rel=1e-12)
            assert same["detail"] == "5m" and same["bars_without_detail"] == row["bars_without_detail"]


def test_a_walk_forward_over_detailed_sets_runs_on_the_finer_bars():
    grid = [{**PARAMS, "sl": sl, "tp": 0.6} for sl in (0.5, 1.0)]
    plain = run_backtest(HOURS, "rsi", grid, walk_forward=3, objective="sharpe", pbo_blocks=0)
    detailed = run_backtest(HOURS, "rsi", grid, walk_forward=3, objective="sharpe", pbo_blocks=0, detail="5m",
                            detail_frames=FIVES)
    assert detailed.height == plain.height and set(detailed["detail"].drop_nulls()) == {"5m"}
    # The finer bars decide some stops the hours alone decide otherwise: the folds' numbers move.
    assert (detailed["final_value"] != plain["final_value"]).any()
