"""The pictures a quant looks at (issue 26): money on the log equity axis (not 10^3), dates on any span,
the legend beside the curves (never over them), parameter values as typed (7, not 7.0) with each
heatmap cell's value, colours centred on a zero return, the portfolio's benchmark named."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import polars as pl
import pytest

import pipeline as cryptobt
from pipeline import notebook, plots
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-5m"
GRID = [{"rsi_period": p, "oversold_threshold": float(o)} for p in (7, 14, 21) for o in (20, 25, 30, 35)]


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return {s: pl.read_ipc(SAMPLE / f"{s}-5m.feather") for s in ("ETH_BTC", "LTC_BTC", "XMR_BTC")}


@pytest.fixture(scope="module")
def figure(frames):
    batch = notebook.prices(frames)
    board = notebook.run_backtest(frames, "rsi", GRID).to_dicts()
    drawn = plots.curves(batch, options.run_config(get_strategy("rsi"), board[0]["params"]), board[0])
    fig = plots.png_figure("rsi", board, drawn, board, plots.sweep_axes(board))
    fig.canvas.draw()
    yield fig
    plt.close(fig)


def test_the_equity_axis_reads_as_money_and_dates_show_on_a_month(figure):
    equity = figure.axes[0]
    labels = [t.get_text() for t in equity.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3, labels  # was one label, '10^3', on a month of 850 .. 1,400
    assert all(text.replace(",", "").replace(".", "").isdigit() for text in labels), labels
    dates = [t.get_text() for t in equity.get_xticklabels() if t.get_text()]
    assert len(dates) >= 3 and "2018" in equity.xaxis.get_offset_text().get_text() + " ".join(dates), dates


def test_the_legend_sits_beside_the_curves(figure):
    equity = figure.axes[0]
    legend = equity.get_legend().get_window_extent()
    assert legend.x0 >= equity.get_window_extent().x1, "the legend covers the curves"


def test_the_heatmap_labels_parameters_as_typed_and_prints_each_cell(figure):
    heat = figure.axes[2]
    assert {t.get_text() for t in heat.get_yticklabels() + heat.get_xticklabels()} >= {"7", "14", "21", "20", "35"}
    assert not any(t.get_text().endswith(".0") for t in heat.get_yticklabels() + heat.get_xticklabels())
    cells = [t.get_text() for t in heat.texts]
    assert len(cells) == 12 and all(c.replace("-", "").replace(",", "").replace(".", "").isdigit() for c in cells)
    norm = heat.images[0].norm
    assert norm.vmin == -norm.vmax  # red = loss, green = gain, whatever the range


def test_the_portfolio_picture_names_its_benchmark(frames, tmp_path):
    account = cryptobt.run_portfolio(frames, "rsi", max_open=2, stake="50%")
    account.plot(tmp_path / "p.html")
    html = (tmp_path / "p.html").read_text()
    assert "equal-weight buy &amp; hold" in html or "equal-weight buy & hold" in html
