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

from pipeline.core.errors import PipelineError


@dataclass
class EquityCurve:
    symbol: str
    times: np.ndarray  # epoch seconds
    equity: np.ndarray  # strategy equity at each close (NaN at missing bars)
    buy_hold: np.ndarray  # initial * close / first close
    trades: list[dict[str, Any]] = field(default_factory=list)  # engine.trade_log: time, action, price, ...
    close: np.ndarray | None = None  # the symbol's close at `times` (the dashboard's price chart)
    label: str = ""  # the legend's names of the two lines (default: "<symbol> strategy", "<symbol> buy & hold")
    benchmark_label: str = ""

    def names(self) -> tuple[str, str]:
        return self.label or f"{self.symbol} strategy", self.benchmark_label or f"{self.symbol} buy & hold"


def curves(batch: Any, config: Any, result: dict[str, Any] | None = None) -> list[EquityCurve]:
    """Equity against buy & hold of every symbol of `batch` (a PriceBatch with the open column), for
    `result`'s parameter set and execution (a sweep's best), else the run's first."""
    from pipeline.engine import batch as engine
    from pipeline.engine import options

    params, execution = (result["params"], options.Execution.of(result)) if result else config.sets[0]
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
PORTFOLIO_TITLES = ("Portfolio equity vs equal-weight buy & hold", "Contribution to the account's return, % of initial")


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


def write_portfolio_plot(path: Path, best: dict[str, Any], title: str, top: int = 20) -> Path:
    """The best portfolio account against equal-weight buy & hold, and its largest contributions
    either way (losers matter as much as winners), best first: the CLI's and the notebook's picture."""
    curve = best["equity_curve"]
    keep = ~np.isnan(curve["equity"])
    curves = [EquityCurve("portfolio", curve["times"][keep], curve["equity"][keep], curve["buy_hold"][keep],
                          label="account", benchmark_label="equal-weight buy & hold")]
    initial = best["initial_investment"]
    largest = sorted((c for c in best["contributions"] if c["round_trips"] or c["pnl"]),
                     key=lambda c: -abs(c["pnl"]))[:max(top, 20)]
    board = sorted(({"symbol": c["symbol"], "total_return_pct": c["pnl"] / initial * 100.0} for c in largest),
                   key=lambda r: -r["total_return_pct"])
    return write_plot(path, title, board, curves, top_n=len(board), titles=PORTFOLIO_TITLES)


def _label(value: Any) -> str:
    from pipeline.core.tables import param

    return param(value)


def _write_html(path, title, top, curves, sweep, axes, titles) -> None:
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = 3 if axes else 2
    titles = list(titles)
    if axes:
        titles.append(f"Sweep: mean total return % by {axes[0]} x {axes[1]} (over symbols and the other parameters)")
    fig = make_subplots(rows=rows, cols=1, subplot_titles=titles, vertical_spacing=0.1)
    palette = plotly.colors.qualitative.Plotly
    for i, curve in enumerate(curves):
        dates = _dates(curve.times)
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=dates, y=curve.equity, name=curve.names()[0], mode="lines",
                                 line={"color": color}, connectgaps=False, legendgroup=curve.symbol), row=1, col=1)
        fig.add_trace(go.Scatter(x=dates, y=curve.buy_hold, name=curve.names()[1], mode="lines",
                                 line={"dash": "dot", "color": color}, connectgaps=False, legendgroup=curve.symbol),
                      row=1, col=1)
    # Returns compound: on a log axis equal slopes mean equal growth rates. Money as the tables print it.
    fig.update_yaxes(type="log", title_text="equity", tickformat=",.2f", row=1, col=1)
    colors = ["#2ca02c" if r["total_return_pct"] >= 0 else "#d62728" for r in top]
    fig.add_trace(go.Bar(x=[r["symbol"] for r in top], y=[r["total_return_pct"] for r in top], marker_color=colors,
                         name="total return %", showlegend=False, texttemplate="%{y:,.2f}",
                         hovertemplate="%{x}: %{y:,.2f} %<extra></extra>"), row=2, col=1)
    fig.update_yaxes(title_text="%", tickformat=",.2f", row=2, col=1)
    if axes:
        xs, ys, z = _heatmap_grid(sweep, *axes)
        # Parameter values as categories: a grid of 7, 14, 21 is three cells, not a continuous axis.
        fig.add_trace(go.Heatmap(x=[_label(v) for v in xs], y=[_label(v) for v in ys], z=z, colorscale="RdYlGn",
                                 zmid=0, name="mean return %", texttemplate="%{z:,.2f}", showscale=True,
                                 colorbar={"title": "%", "y": 0.15, "len": 0.3}), row=3, col=1)
        fig.update_xaxes(title_text=axes[0], type="category", row=3, col=1)
        fig.update_yaxes(title_text=axes[1], type="category", row=3, col=1)
    # The legend beside the curves, never over them.
    fig.update_layout(title=title, height=450 * rows, template="plotly_white",
                      legend={"x": 1.02, "y": 1, "xanchor": "left", "yanchor": "top"})
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _write_png(path, title, top, curves, sweep, axes, titles) -> None:
    import matplotlib.pyplot as plt

    fig = png_figure(title, top, curves, sweep, axes, titles)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def png_figure(title: str, top: list[dict[str, Any]], curves: list[EquityCurve], sweep: list[dict[str, Any]] | None,
               axes: tuple[str, str] | None, titles: tuple[str, str] = DEFAULT_TITLES) -> Any:
    """The PNG's matplotlib figure: equity curves, leaderboard bars, a sweep's heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
    )

    from pipeline.core.tables import formatted

    rows = 3 if axes else 2
    fig, grid = plt.subplots(rows, 1, figsize=(13, 4.8 * rows), layout="constrained")
    money = FuncFormatter(lambda v, _: formatted(v, "money").removesuffix(".00"))
    for curve in curves:
        dates = _dates(curve.times)
        line = grid[0].plot(dates, curve.equity, linewidth=1.2, label=curve.names()[0])[0]
        grid[0].plot(dates, curve.buy_hold, linestyle=":", linewidth=1, color=line.get_color(), label=curve.names()[1])
    # Returns compound: on a log axis equal slopes mean equal growth rates. Ticks are labelled as money
    # (1,000, 2,000, 5,000), not as powers of ten: at 1, 2 and 5 of each decade when the curves span
    # several, else at round values within the one they span (a month's 850 .. 1,400).
    grid[0].set_yscale("log")
    drawn = np.concatenate([np.r_[c.equity, c.buy_hold] for c in curves]) if curves else np.array([])
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    if drawn.size and drawn.max() / drawn.min() < 10:
        grid[0].yaxis.set_major_locator(FixedLocator(MaxNLocator(nbins=6).tick_values(drawn.min(), drawn.max())))
    else:
        grid[0].yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    grid[0].yaxis.set_major_formatter(money)
    grid[0].yaxis.set_minor_formatter(NullFormatter())
    grid[0].set_ylabel("equity")
    grid[0].grid(True, which="major", alpha=0.3)
    # Dates readable at any span: a month of hourly bars shows days, years show months and years.
    locator = mdates.AutoDateLocator()
    grid[0].xaxis.set_major_locator(locator)
    grid[0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    grid[0].set_title(titles[0])
    if curves:
        grid[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    values = [r["total_return_pct"] for r in top]
    bars = grid[1].bar([r["symbol"] for r in top], values, color=["#2ca02c" if v >= 0 else "#d62728" for v in values])
    grid[1].bar_label(bars, labels=[formatted(v, "pct") for v in values], fontsize=7, padding=2)
    grid[1].axhline(0, color="black", linewidth=0.8)
    grid[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: formatted(v, "pct")))
    grid[1].set_ylabel("%")
    grid[1].set_title(titles[1])
    grid[1].tick_params(axis="x", rotation=60, labelsize=8)
    if axes:
        xs, ys, z = _heatmap_grid(sweep, *axes)
        finite = z[np.isfinite(z)]
        # Red is a loss and green a gain whatever the range: the colour scale is symmetric about 0.
        reach = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-9)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-reach, vmax=reach)
        image = grid[2].imshow(z, aspect="auto", origin="lower", cmap="RdYlGn", norm=norm)
        grid[2].set_xticks(range(len(xs)), [_label(v) for v in xs], fontsize=9)
        grid[2].set_yticks(range(len(ys)), [_label(v) for v in ys], fontsize=9)
        if len(xs) * len(ys) <= 400:  # a value per cell while it still fits
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(z[i, j]):
                        grid[2].text(j, i, formatted(float(z[i, j]), "pct"), ha="center", va="center", fontsize=8)
        grid[2].set_xlabel(axes[0])
        grid[2].set_ylabel(axes[1])
        grid[2].set_title(f"Sweep: mean total return % by {axes[0]} x {axes[1]} (over symbols and the other "
                          "parameters)")
        fig.colorbar(image, ax=grid[2], label="%", format=FuncFormatter(lambda v, _: formatted(v, "pct")))
    fig.suptitle(title, fontsize=14)
    return fig


def stats_path(plot: Path) -> Path:
    """Where a sweep's statistics picture goes beside its --plot: `<name>-stats<suffix>`."""
    plot = Path(plot)
    return plot.with_name(f"{plot.stem}-stats{plot.suffix}")


def write_stats_plot(path: Path, stats: dict[str, Any], title: str) -> Path:
    """A sweep's --stats as a picture (.png or .html): the pooled run's distribution of the sets' annualised
    daily Sharpe ratios, with the best set, the benchmark, the best set's bootstrap interval and its
    Harvey-Liu haircut marked, the SPA p-value and the MCS size in the title."""
    pooled = stats["pooled"]
    sharpes = np.array([s for s in pooled.get("set_sharpes") or [] if s is not None], dtype=float)
    if sharpes.size == 0:
        raise PipelineError(f"no statistics picture: {pooled.get('reason') or 'no set has a Sharpe ratio'}")
    spa = pooled.get("spa")
    heading = (f"{title}\nSharpe ratios of {sharpes.size:,} sets (pooled over {len(stats['symbols'])} symbols, "
               f"{pooled['days']} days)" + (f"; SPA p = {spa['consistent']:.3f} vs {stats['benchmark']}" if spa else "")
               + (f"; MCS {len(pooled['mcs'])} set(s)" if pooled.get("mcs") is not None else ""))
    marks = [(f"best set {pooled['best_set']}", pooled.get("sharpe"), "#d62728", "-"),
             (f"benchmark ({stats['benchmark']})", pooled.get("benchmark_sharpe") or 0.0, "#7f7f7f", "--"),
             ("haircut (Harvey-Liu BHY)", pooled.get("haircut_sharpe"), "#2ca02c", "-.")]
    interval = pooled.get("sharpe_ci")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".html":
        import plotly.graph_objects as go

        fig = go.Figure(go.Histogram(x=sharpes, nbinsx=min(60, max(10, sharpes.size // 5)), name="sets",
                                     marker_color="#1f77b4", opacity=0.75))
        if interval:
            fig.add_vrect(x0=interval[0], x1=interval[1], fillcolor="#d62728", opacity=0.12, line_width=0,
                          annotation_text=f"{1 - stats['alpha']:.0%} bootstrap interval of the best")
        for label, value, colour, dash in marks:
            if value is not None:
                fig.add_vline(x=value, line_color=colour, line_dash={"-": "solid", "--": "dash", "-.": "dashdot"}[dash],
                              annotation_text=f"{label}: {value:.2f}")
        fig.update_layout(title=heading.replace("\n", "<br>"), xaxis_title="annualised Sharpe ratio of daily returns", yaxis_title="sets",
                          template="plotly_white", bargap=0.05)
        fig.write_html(path, include_plotlyjs=True)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.2), layout="constrained")
    ax.hist(sharpes, bins=min(60, max(10, sharpes.size // 5)), color="#1f77b4", alpha=0.75, label="sets")
    if interval:
        ax.axvspan(interval[0], interval[1], color="#d62728", alpha=0.12,
                   label=f"best set's {1 - stats['alpha']:.0%} bootstrap interval ({interval[0]:.2f} .. {interval[1]:.2f})")
    for label, value, colour, style in marks:
        if value is not None:
            ax.axvline(value, color=colour, linestyle=style, linewidth=2, label=f"{label}: {value:.2f}")
    ax.set_xlabel("annualised Sharpe ratio of daily returns")
    ax.set_ylabel("parameter sets")
    ax.set_title(heading, fontsize=10)
    ax.legend(loc="upper left", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
