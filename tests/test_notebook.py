"""The notebook API takes what a notebook user has at hand: one symbol's DataFrame with no symbol
column, one long DataFrame with a `symbol` column, or a dict of frames, pandas or polars (issue 26)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pipeline as cryptobt
from pipeline.core.errors import PipelineError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-5m"


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return {s: pl.read_ipc(SAMPLE / f"{s}-5m.feather") for s in ("ETH_BTC", "LTC_BTC")}


def test_one_frame_without_a_symbol_column_is_one_symbol(frames):
    """Before: TypeError 'the truth value of a DataFrame is ambiguous'."""
    one = cryptobt.run_backtest(frames["ETH_BTC"], "rsi")
    named = cryptobt.run_backtest({"ETH_BTC": frames["ETH_BTC"]}, "rsi")
    assert one["symbol"].to_list() == ["frame"]
    assert one.drop("symbol").to_dicts() == named.drop("symbol").to_dicts()
    pandas = cryptobt.run_backtest(frames["ETH_BTC"].to_pandas(), "rsi")
    assert pandas["total_return_pct"].to_list() == named["total_return_pct"].to_list()


def test_a_long_frame_is_split_by_its_symbol_column(frames):
    long = pl.concat([f.with_columns(pl.lit(s).alias("symbol")) for s, f in frames.items()])
    assert cryptobt.run_backtest(long, "rsi").sort("symbol").to_dicts() == \
        cryptobt.run_backtest(frames, "rsi").sort("symbol").to_dicts()
    trips = cryptobt.round_trips(long, "rsi", sl=2)
    assert set(trips["symbol"]) <= set(frames) and trips.height > 0


@pytest.mark.slow
def test_one_frame_takes_bare_signal_arrays(frames):
    close = frames["ETH_BTC"]["close"].to_numpy()
    entries = np.r_[False, close[1:] < close[:-1] * 0.99]
    exits = np.r_[False, close[1:] > close[:-1] * 1.01]
    bare = cryptobt.run_signals(frames["ETH_BTC"], entries, exits)
    named = cryptobt.run_signals({"ETH_BTC": frames["ETH_BTC"]}, {"ETH_BTC": entries}, {"ETH_BTC": exits})
    assert bare["final_value"].to_list() == named["final_value"].to_list()
    assert bare["num_trades"][0] > 0


def test_something_else_than_frames_is_one_line_error():
    with pytest.raises(PipelineError, match="frames is a list: give a DataFrame"):
        cryptobt.run_backtest([1, 2, 3], "rsi")


def test_a_csv_read_as_is_has_its_text_times_read_as_an_import_reads_them():
    """A frame from pl.read_csv has its dates as text (was: InvalidOperationError casting str to i64)."""
    csv = Path(__file__).resolve().parents[1] / "examples" / "data" / "ADABTC-1h.csv"
    frame = pl.read_csv(csv)
    assert frame["Date"].dtype == pl.String
    result = cryptobt.run_backtest(frame, "rsi")
    parsed = frame.with_columns(pl.col("Date").str.to_datetime(time_zone="UTC"))
    assert result.to_dicts() == cryptobt.run_backtest(parsed, "rsi").to_dicts()
    assert result["bars"][0] == frame.height
    with pytest.raises(PipelineError, match="'yesterday' is not a time"):
        cryptobt.run_backtest(frame.with_columns(pl.lit("yesterday").alias("Date")), "rsi")
