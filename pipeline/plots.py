"""Pictures of a run: equity curves against buy & hold, the leaderboard, a sweep heatmap.

HTML via Plotly with the library inlined (opens offline, no CDN); PNG via matplotlib
(Plotly's PNG export needs a browser download, which this network forbids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError


@dataclass
class EquityCurve:
    symbol: str
    times: np.ndarray  # epoch seconds
    equity: np.ndarray  # strategy equity at each close (NaN at missing bars)
    buy_hold: np.ndarray  # initial * close / first close
    trades: list[dict[str, Any]] = field(default_factory=list)  # engine.trade_log: time, action, price, ...
    close: np.ndarray | None = None  # the symbol's close at `times` (the dashboard's price chart)


def curves(batch: Any, config: Any, result: dict[str, Any] | None = None) -> list[EquityCurve]:
    """Equity against buy & hold of every symbol of `batch` (a PriceBatch with the open column), for
    `result`'s parameter set and execution (a sweep's best), else the run's first."""
    from pipeline import engine

    params, execution = (result["params"], engine.Execution.of(result)) if result else config.sets[0]
    drawn = []
    for i, symbol in enumerate(batch.symbols):
        log, _, equity = engine.trade_log(batch, config, i, params, execution)
        close = batch.columns["close"][i]
        valid = ~np.isnan(close)
        if not valid.any():
            continue
        buy_hold = config.initial * close / close[valid][0]
        drawn.append(EquityCurve(symbol, batch.times[valid], equity[valid], buy_hold[valid], log, close[valid]))
    return drawn


def _dates(times: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(int(t), UTC) for t in times]


def _heatmap_grid(results: list[dict[str, Any]], x: str, y: str) -> tuple[list, list, np.ndarray]:
    """Mean total return over symbols for each (x, y) parameter pair; a row with `symbols` is that
    many symbols' mean (a sweep's `set_returns`)."""
    xs = sorted({r["params"][x] for r in results})
    ys = sorted({r["params"][y] for r in results})
    sums = np.zeros((len(ys), len(xs)))
    counts = np.zeros((len(ys), len(xs)))
    for r in results:
        if r["total_return_pct"] is None:
            continue
        i, j = ys.index(r["params"][y]), xs.index(r["params"][x])
        weight = r.get("symbols", 1)
        sums[i, j] += r["total_return_pct"] * weight
        counts[i, j] += weight
    with np.errstate(invalid="ignore"):
        return xs, ys, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def sweep_axes(results: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The two parameters that vary most in a sweep, or None if fewer than two vary."""
    if not results:
        return None
    varying = [(len({r["params"][k] for r in results}), k) for k in results[0]["params"]]
    varying = sorted([v for v in varying if v[0] > 1], reverse=True)
    return (varying[0][1], varying[1][1]) if len(varying) >= 2 else None


DEFAULT_TITLES = ("Equity vs buy & hold (top symbols)", "Leaderboard: total return %")


def write_plot(path: Path, title: str, board: list[dict[str, Any]], curves: list[EquityCurve],
               sweep: list[dict[str, Any]] | None = None, top_n: int = 20,
               titles: tuple[str, str] = DEFAULT_TITLES) -> Path:
    """Write the run's pictures to `path` (.html or .png); `titles` name the curves and the bars."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".png"):
        raise PipelineError(f"--plot {path}: use a .html or .png file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = sweep_axes(sweep) if sweep else None
    top = [r for r in board if r["total_return_pct"] is not None][:top_n]
    if path.suffix.lower() == ".html":
        _write_html(path, title, top, curves, sweep, axes, titles)
    else:
        _write_png(path, title, top, curves, sweep, axes, titles)
    return path


def _write_html(path, title, top, curves, sweep, axes, titles) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = 3 if axes else 2
    titles = list(titles)
    if axes:
        titles.append(f"Sweep: mean total return % by {axes[0]} x {axes[1]}")
    import plotly.colors

    fig = make_subplots(rows=rows, cols=1, subplot_titles=titles, vertical_spacing=0.08)
    palette = plotly.colors.qualitative.Plotly
    for i, curve in enumerate(curves):
        dates = _dates(curve.times)
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=dates, y=curve.equity, name=f"{curve.symbol} strategy", mode="lines",
                                 line={"color": color}, connectgaps=False), row=1, col=1)
        fig.add_trace(go.Scatter(x=dates, y=curve.buy_hold, name=f"{curve.symbol} buy & hold", mode="lines",
                                 line={"dash": "dot", "color": color}, connectgaps=False), row=1, col=1)
    # Returns compound: on a log axis equal slopes mean equal growth rates.
    fig.update_yaxes(type="log", title_text="equity", row=1, col=1)
    fig.add_trace(go.Bar(x=[r["symbol"] for r in top], y=[r["total_return_pct"] for r in top],
                         name="total return %"), row=2, col=1)
    if axes:
        xs, ys, z = _heatmap_grid(sweep, *axes)
        # Parameter values as categories: a grid of 7, 14, 21 is three cells, not a continuous axis.
        fig.add_trace(go.Heatmap(x=[str(v) for v in xs], y=[str(v) for v in ys], z=z, colorscale="RdYlGn",
                                 name="mean return %",
                                 colorbar={"title": "%", "y": 0.15, "len": 0.3}), row=3, col=1)
        fig.update_xaxes(title_text=axes[0], row=3, col=1)
        fig.update_yaxes(title_text=axes[1], row=3, col=1)
    fig.update_layout(title=title, height=450 * rows, template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _write_png(path, title, top, curves, sweep, axes, titles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 3 if axes else 2
    fig, grid = plt.subplots(rows, 1, figsize=(12, 4.5 * rows))
    for curve in curves:
        dates = _dates(curve.times)
        line = grid[0].plot(dates, curve.equity, label=f"{curve.symbol} strategy")[0]
        grid[0].plot(dates, curve.buy_hold, linestyle=":", color=line.get_color(),
                     label=f"{curve.symbol} buy & hold")
    grid[0].set_yscale("log")
    grid[0].set_title(titles[0])
    grid[0].legend(fontsize=7, ncol=2)
    grid[1].bar([r["symbol"] for r in top], [r["total_return_pct"] for r in top])
    grid[1].set_title(titles[1])
    grid[1].tick_params(axis="x", rotation=60, labelsize=7)
    if axes:
        xs, ys, z = _heatmap_grid(sweep, *axes)
        image = grid[2].imshow(z, aspect="auto", origin="lower", cmap="RdYlGn")
        grid[2].set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
        grid[2].set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
        grid[2].set_xlabel(axes[0])
        grid[2].set_ylabel(axes[1])
        grid[2].set_title(f"Sweep: mean total return % by {axes[0]} x {axes[1]}")
        fig.colorbar(image, ax=grid[2], label="%")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
