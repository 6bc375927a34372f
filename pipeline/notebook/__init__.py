"""The notebook API: backtests and portfolios on your own frames, no lake, PostgreSQL or Redis.

    import polars as pl
    import pipeline as cryptobt   # the package top re-exports run_backtest, run_portfolio, prices
    frames = {"ETH_BTC": pl.read_ipc("data/sample/binance-5m/ETH_BTC-5m.feather"), ...}
    results = cryptobt.run_backtest(frames, "rsi", {"rsi_period": 14})          # polars DataFrame
    trips = cryptobt.round_trips(frames, "rsi", sl=2, tp=4)                       # one row per round trip
    account = cryptobt.run_portfolio(frames, "rsi", max_open=3, stake="30%")  # Portfolio: .accounts, .trades, ...
    sets = [{"rsi_period": p} for p in range(6, 30, 2)]
    stats = cryptobt.sweep_statistics(frames, "rsi", sets, reps=1000)        # sweep --stats all --json's stats
    daily = cryptobt.daily_returns(frames, "rsi", sets)                       # sweep --returns-out's long frame

A frame is pandas or polars with a timestamp column (`date`, `ts`, `datetime`, `time`
or `timestamp`; naive times are UTC) and `open, high, low, close, volume`. All frames
share one bar interval, read off their spacing. They go through the same validation,
kernels and result shaping as the CLI: the numbers are the CLI's numbers.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.core import intervals, run_options
from pipeline.core.errors import PipelineError
from pipeline.core.run_options import CONFIG_OPTIONS, RunOption, for_command
from pipeline.engine import batch as engine
from pipeline.engine import options
from pipeline.engine import portfolio as pf
from pipeline.lake.align import scatter_to_grid
from pipeline.lake.reader import PriceBatch
from pipeline.source.ohlcv import parse_dates

TIME_COLUMNS = ("date", "ts", "datetime", "time", "timestamp")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


# The symbol of a single frame given without a name (and without a `symbol` column).
SINGLE_FRAME = "frame"
# Frames: {symbol: frame}, one frame in long format (a `symbol` column), or one symbol's frame.
Frames = Mapping[str, Any] | Any


def by_symbol(frames: Frames) -> dict[str, Any]:
    """`frames` as {symbol: frame}: a dict as given; one DataFrame (pandas or polars) split by its
    `symbol` column when it has one (long format), else one symbol named `frame`."""
    if isinstance(frames, Mapping):
        return {symbol: _polars(frame) for symbol, frame in frames.items()}
    if not hasattr(frames, "columns"):
        raise PipelineError(f"frames is a {type(frames).__name__}: give a DataFrame (one symbol, or many in a "
                            "`symbol` column) or a dict {symbol: DataFrame}")
    frame = _polars(frames)
    if "symbol" not in frame.columns:
        return {SINGLE_FRAME: frame}
    return {str(key[0]): part.drop("symbol") for key, part in frame.partition_by("symbol", as_dict=True).items()}


def _polars(frame: Any) -> pl.DataFrame:
    """A polars frame with lower-case column names (pandas: its index may be the time)."""
    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_pandas(frame.reset_index() if frame.index.name else frame)
    return frame.rename({c: c.lower() for c in frame.columns})


def prices(frames: Frames, interval: str | None = None) -> PriceBatch:
    """Aligned (symbols x time) arrays from OHLCV frames (`by_symbol`), symbols in name order."""
    frames = by_symbol(frames)
    if not frames:
        raise PipelineError("no frames given: pass {symbol: frame} with open, high, low, close, volume")
    tables = {}
    for symbol in sorted(frames):
        frame = frames[symbol]
        time = next((c for c in TIME_COLUMNS if c in frame.columns), None)
        missing = [c for c in PRICE_COLUMNS if c not in frame.columns]
        if time is None or missing:
            raise PipelineError(f"frame {symbol!r} lacks {', '.join(missing) or 'a time column'}; it needs "
                                f"one of {', '.join(TIME_COLUMNS)} and {', '.join(PRICE_COLUMNS)}")
        ts = frame[time]
        if ts.dtype == pl.Datetime and ts.dtype.time_zone is None:
            ts = ts.dt.replace_time_zone("UTC")
        elif ts.dtype != pl.Datetime:  # text (a CSV read as is) or epoch numbers: read as an import reads them
            ts = parse_dates(ts)
            if ts.null_count():
                bad = frame[time].filter(ts.is_null())[0]
                raise PipelineError(f"frame {symbol!r}: {time} {bad!r} is not a time (ISO text, or epoch seconds "
                                    "or milliseconds)")
        seconds = ts.dt.epoch("s").to_numpy()
        tables[symbol] = (seconds, {c: frame[c].cast(pl.Float64).to_numpy() for c in PRICE_COLUMNS})
    spacing = min(int(np.diff(np.sort(s)).min()) for s, _ in tables.values() if len(s) > 1)
    name = interval or intervals.from_spacing(timedelta(seconds=spacing))
    if name is None:
        raise PipelineError(f"the frames' bars are {spacing} s apart: not one of {', '.join(intervals.NAMES)}")
    step = intervals.SECONDS[intervals.check(name)]
    t0 = min(int(s.min()) for s, _ in tables.values())
    width = (max(int(s.max()) for s, _ in tables.values()) - t0) // step + 1
    columns = {c: np.full((len(tables), width), np.nan) for c in PRICE_COLUMNS}
    for row, (seconds, values) in enumerate(tables.values()):
        ids = np.full(len(seconds), row, dtype=np.int64)
        for c in PRICE_COLUMNS:
            scatter_to_grid(ids, seconds * 1_000_000, values[c], np.arange(len(tables), dtype=np.int64),
                            t0 * 1_000_000, step * 1_000_000, columns[c])
    symbols = list(tables)
    bars = (~np.isnan(columns["close"])).sum(axis=1).astype(np.int64)
    return PriceBatch("frames", name, symbols, t0 + np.arange(width, dtype=np.int64) * step, columns,
                      ["frames"] * len(symbols), bars=bars, source="frames")


def _run_options(chosen: tuple[RunOption, ...] = CONFIG_OPTIONS) -> Callable[[Any], Any]:
    """Show a function's `**run` as the run options it takes, by name with their defaults (help(),
    IDEs); `options.run_config` checks them and refuses any other name."""

    def add(func: Any) -> Any:
        own = inspect.signature(func)
        func.__signature__ = own.replace(parameters=[
            *(p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
            *(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                annotation=o.type | None if o.nullable else o.type)
              for o in chosen if o.name not in own.parameters)])
        return func

    return add


def _times(frame: pl.DataFrame, symbol: str, what: str) -> pl.Series:
    """A frame's time column as UTC datetimes (naive = UTC; text and epoch numbers read as an import does)."""
    time = next((c for c in TIME_COLUMNS if c in frame.columns), None)
    if time is None:
        raise PipelineError(f"{what} frame {symbol!r} lacks a time column ({', '.join(TIME_COLUMNS)})")
    ts = frame[time]
    if ts.dtype == pl.Datetime and ts.dtype.time_zone is None:
        return ts.dt.replace_time_zone("UTC")
    if ts.dtype != pl.Datetime:
        ts = parse_dates(ts)
        if ts.null_count():
            bad = frame[time].filter(ts.is_null())[0]
            raise PipelineError(f"{what} frame {symbol!r}: {time} {bad!r} is not a time (ISO text, or epoch "
                                "seconds or milliseconds)")
    return ts


def with_futures(batch: PriceBatch, funding: Frames | None, mark: Frames | None) -> PriceBatch:
    """`batch` with the funding rates and mark bars of its symbols on its grid (SPEC 4.3; batch columns
    `funding`, `mark_open`, `mark_high`, `mark_low`, `mark_close`). A funding frame holds times and a `rate` column
    (freqtrade's *-funding_rate.feather: the rate is `open`); a mark frame is OHLC at the batch's interval."""
    from pipeline.lake.align import funding_to_grid
    from pipeline.source.futures import check_funding

    step_us = intervals.SECONDS[batch.interval] * 1_000_000
    t0_us = int(batch.times[0]) * 1_000_000 if batch.times.size else 0
    shape = batch.columns["close"].shape
    row_of = {s: i for i, s in enumerate(batch.symbols)}
    columns = dict(batch.columns)
    if funding is not None:
        rows, stamps, rates = [], [], []
        for symbol, frame in by_symbol(funding).items():
            if symbol not in row_of:
                raise PipelineError(f"funding for {symbol!r}, which has no price frame; the frames are: "
                                    f"{', '.join(batch.symbols)}")
            ts = _times(frame, symbol, "funding")
            rate = frame["rate" if "rate" in frame.columns else "open"].cast(pl.Float64)
            check_funding(ts, rate, f"funding frame {symbol!r}")
            rows.append(np.full(len(ts), row_of[symbol], dtype=np.int64))
            stamps.append(ts.dt.epoch("us").to_numpy())
            rates.append(rate.to_numpy())
        if rows:
            columns["funding"] = funding_to_grid(np.concatenate(rows), np.concatenate(stamps), np.concatenate(rates),
                                                 t0_us, step_us, shape)
    if mark is not None:
        for name in ("mark_open", "mark_high", "mark_low", "mark_close"):
            columns[name] = np.full(shape, np.nan)
        for symbol, frame in by_symbol(mark).items():
            if symbol not in row_of:
                raise PipelineError(f"mark prices for {symbol!r}, which has no price frame; the frames are: "
                                    f"{', '.join(batch.symbols)}")
            times = _times(frame, symbol, "mark")
            spacing = _spacing(times)
            if spacing is not None and spacing * 1_000_000 > step_us:
                continue  # a coarser mark is not used (its bars count as without a mark), as the lake's
            # A finer mark aggregates onto the grid as the lake's does: first open, highest high, lowest low,
            # last close of the mark bars whose open falls in each grid bar.
            bars = (pl.DataFrame({"us": times.dt.epoch("us"), **{c: frame[c].cast(pl.Float64) for c in
                                                                 ("open", "high", "low", "close")}})
                    .with_columns(((pl.col("us") - t0_us) // step_us).alias("column"))
                    .filter((pl.col("column") >= 0) & (pl.col("column") < shape[1])).sort("us")
                    .group_by("column", maintain_order=True)
                    .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last()))
            for name in ("open", "high", "low", "close"):
                columns[f"mark_{name}"][row_of[symbol], bars["column"].to_numpy()] = bars[name].to_numpy()
    return dataclasses.replace(batch, columns=columns)


@_run_options()
def run_backtest(frames: Frames, strategy: str, params: Mapping[str, Any] | list[dict] | None = None, *,
                 funding: Frames | None = None, mark: Frames | None = None, detail_frames: Frames | None = None,
                 **run: Any) -> pl.DataFrame:
    """Every (symbol, parameter set) result, one row each (the CLI's fields; params as a struct).

    `run` takes the CLI's options by keyword: fee, fill, initial, timerange, annualization, and for
    a list of parameter sets (a sweep) objective, min_trades and pbo_blocks; a sweep's rows carry
    n_trials, pbo and deflated_sharpe. Futures (`market="futures"`, direction, leverage, margin, mmr,
    tiers) take the symbols' `funding` rates and `mark` prices as frames too (see `with_futures`);
    `detail="5m"` decides stops on `detail_frames`, the symbols' finer bars (the contract's "Intrabar detail").
    """
    config = options.run_config(options.resolve_strategy(strategy), params or {}, **run)
    batch = _run_batch(frames, config, funding, mark, detail_frames=detail_frames)
    # A sweep runs as `cryptobt sweep` runs one (its statistics too); one set as a backtest.
    results = _sweep(batch, config).rows if len(config.params_list) > 1 else engine.run(batch, config)
    return pl.DataFrame(engine.leaderboard(results, *engine.ranking(config)))


@dataclass
class _Swept:
    rows: list[dict[str, Any]]
    stats: dict[str, Any]


def _sweep(batch: PriceBatch, config: options.RunConfig, returns_out: Path | None = None) -> _Swept:
    """A sweep over `batch` as `cryptobt sweep` runs one (pipeline.runs.sweep): every result, with its
    statistics when `config.stats` asks for them, and the daily returns into `returns_out`."""
    from pipeline.runs.sweep import Progress, Sweep
    from pipeline.store.returns_file import ReturnsWriter

    if len(config.params_list) < 2:
        raise PipelineError(f"a sweep needs at least two parameter sets; got {len(config.params_list)}")
    writer = ReturnsWriter(returns_out, config.params_list) if returns_out is not None else None
    sweep = Sweep(config, None, None, None, None, Progress(None, len(batch.symbols) * len(config.params_list), 0),
                  writer)
    try:
        rows = sweep.run_part(batch)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
    return _Swept(rows, sweep.daily.outcome() if sweep.daily is not None else {})


@_run_options(for_command("sweep"))
def sweep_statistics(frames: Frames, strategy: str, params: list[dict[str, Any]], *, funding: Frames | None = None,
                     mark: Frames | None = None, **run: Any) -> dict[str, Any]:
    """A sweep's statistics over every parameter set's daily returns (docs/statistics.md): what `sweep --stats
    --json` prints under `stats`, per symbol and pooled. `params` is the list of sets; `stats` (default
    "all"), benchmark, reps, block_size, alpha and seed as the CLI's options, by keyword."""
    run.setdefault("stats", "all")
    config = options.run_config(options.resolve_strategy(strategy), params, **run)
    return _sweep(_run_batch(frames, config, funding, mark), config).stats


@_run_options(for_command("sweep"))
def daily_returns(frames: Frames, strategy: str, params: list[dict[str, Any]], *, funding: Frames | None = None,
                  mark: Frames | None = None, **run: Any) -> pl.DataFrame:
    """A sweep's daily return matrix in long format, as `sweep --returns-out` writes it: symbol, set (the set's
    index in `params`), one column per parameter, day, return."""
    import tempfile

    config = options.run_config(options.resolve_strategy(strategy), params, **run)
    batch = _run_batch(frames, config, funding, mark)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "daily.parquet"
        _sweep(batch, config, path)
        return pl.read_parquet(path)


@_run_options()
def plot(frames: Frames, strategy: str, path: str | Path,
         params: Mapping[str, Any] | list[dict] | None = None, *, top: int = 5, **run: Any) -> Path:
    """The CLI's picture (`backtest --plot`, or `sweep --plot` for a list of parameter sets) of a run on
    your frames: the leaderboard, the `top` symbols' equity against buy & hold, a sweep's heatmap;
    .html (Plotly, offline) or .png. Returns the file written."""
    from pipeline import plots
    options.check_plot(Path(path))
    config = options.run_config(options.resolve_strategy(strategy), params or {}, **run)
    frames = by_symbol(frames)
    batch = _run_batch(frames, config)
    sweep = len(config.params_list) > 1
    board = engine.leaderboard(_sweep(batch, config).rows if sweep else engine.run(batch, config),
                               *engine.ranking(config))
    shown = list(dict.fromkeys(r["symbol"] for r in board))[:top]
    drawn = plots.curves(_run_batch({s: frames[s] for s in shown}, config, informative_frames=frames), config,
                         board[0] if board else None)
    # A sweep's leaderboard bars are each symbol's best set (all sets would draw over each other).
    bars = engine.top_per_symbol(board, 1, *engine.ranking(config)) if sweep else board
    return plots.write_plot(Path(path), f"{strategy} on your frames", bars, drawn, board if sweep else None)


@_run_options()
def run_signals(frames: Frames, entries: Mapping[str, Any] | Any, exits: Mapping[str, Any] | Any,
                **run: Any) -> pl.DataFrame:
    """Your own signals, one boolean array per symbol and per frame row (vectorbt's from_signals):
    entry (flat -> long) and exit (long -> flat), simulated with the CLI's rules and options (fee, fill,
    initial, sl, tp, trail, size, slippage, ...). One row per symbol, the CLI's fields."""
    import importlib

    from pipeline.engine import strategies

    from_signals = strategies.strategy_from_module(importlib.import_module("pipeline.notebook.signals"))
    strategies.register(from_signals)
    frames = by_symbol(frames)
    if len(frames) == 1:  # one symbol's signals may come as bare arrays
        (only,) = frames
        entries = entries if isinstance(entries, Mapping) else {only: entries}
        exits = exits if isinstance(exits, Mapping) else {only: exits}
    coded = {}
    for symbol, frame in frames.items():
        if symbol not in entries or symbol not in exits:
            raise PipelineError(f"no entries or exits for {symbol!r}: give both, one per frame row")
        enter = np.asarray(entries[symbol], dtype=bool)
        leave = np.asarray(exits[symbol], dtype=bool)
        if enter.shape != (frame.height,) or leave.shape != (frame.height,):
            raise PipelineError(f"{symbol}: entries {enter.shape} and exits {leave.shape} must each have one "
                                f"value per frame row ({frame.height})")
        coded[symbol] = frame.with_columns(pl.Series("volume", enter * 1.0 + leave * 2.0))
    config = options.run_config(from_signals, {}, **run)
    return pl.DataFrame(engine.leaderboard(engine.run(prices(coded), config)))


def _spacing(times: pl.Series) -> int | None:
    """The seconds between a frame's bars (the smallest gap), None with fewer than two."""
    seconds = np.sort(times.dt.epoch("s").to_numpy())
    return int(np.diff(seconds).min()) if seconds.size > 1 else None


def _run_batch(frames: Frames, config: options.RunConfig, funding: Frames | None = None,
               mark: Frames | None = None, informative_frames: Frames | None = None,
               detail_frames: Frames | None = None) -> PriceBatch:
    """The run's prices, with funding and mark on a futures run (refused on spot: they would be ignored),
    the strategy's informative series (from `informative_frames`, default the frames themselves) and, with
    `detail`, the finer bars of `detail_frames`."""
    if config.market != "futures" and (funding is not None or mark is not None):
        raise PipelineError("funding and mark prices are futures data: add market=\"futures\"")
    if (config.detail is None) != (detail_frames is None):
        raise PipelineError("detail=INTERVAL decides stops on your finer bars: give both detail and detail_frames"
                            if config.detail is None else
                            f"detail={config.detail!r} needs detail_frames: your symbols' {config.detail} bars")
    batch = prices(frames)
    batch = with_futures(batch, funding, mark) if config.market == "futures" else batch
    batch = with_informative(batch, config.strategy, by_symbol(informative_frames or frames))
    if detail_frames is not None:
        options.check_detail(config.detail, batch.interval)
        fine = prices({s: f for s, f in by_symbol(detail_frames).items() if s in batch.symbols}, config.detail)
        rows = {name: r for r, name in enumerate(fine.symbols)}
        columns = {c: np.full((len(batch.symbols), fine.times.size), np.nan) for c in ("open", "high", "low", "close")}
        for i, name in enumerate(batch.symbols):
            if name in rows:
                for c in columns:
                    columns[c][i] = fine.columns[c][rows[name]]
        fine = dataclasses.replace(fine, symbols=list(batch.symbols), columns=columns)
        if config.market == "futures" and mark is not None:  # the mark bars on the finer grid, as the lake's
            fine = with_futures(fine, None, {s: f for s, f in by_symbol(mark).items() if s in batch.symbols})
        batch = dataclasses.replace(batch, detail=fine)
    return batch


def with_informative(batch: PriceBatch, strategy: Any, frames: dict[str, Any]) -> PriceBatch:
    """`batch` with `strategy`'s INFORMATIVE series aggregated from `frames` by the lake's rules (SPEC
    section 2) and laid on the batch's grid without look-ahead (pipeline.engine.informative)."""
    from pipeline.engine import informative
    from pipeline.source.bar_rules import resample

    if not strategy.informative:
        return batch
    informative.check_interval(strategy, batch.interval)
    series = []
    for symbol, interval in strategy.informative:
        names = batch.symbols if symbol is None else [symbol]
        missing = [name for name in names if name not in frames]
        if missing:
            raise PipelineError(f"strategy {strategy.name!r} reads {informative.label(symbol, interval)} bars "
                                f"(INFORMATIVE) but no frame is named {missing[0]!r}; the frames are: "
                                f"{', '.join(sorted(frames))}")
        one = prices({name: frames[name] for name in names})
        coarse = {}
        for row, name in enumerate(one.symbols):
            has = ~np.isnan(one.columns["close"][row])
            bars = pl.DataFrame({"ts": pl.from_epoch(pl.Series(one.times[has]), "s").dt.replace_time_zone("UTC"),
                                 **{c: one.columns[c][row][has] for c in PRICE_COLUMNS}})
            coarse[name] = resample(bars, interval).rename({"ts": "date"}).drop("bars")
        series.append(prices(coarse, interval))
    return informative.attach(batch, strategy, series)


@_run_options()
def round_trips(frames: Frames, strategy: str, params: Mapping[str, Any] | list[dict] | None = None, *,
                funding: Frames | None = None, mark: Frames | None = None, detail_frames: Frames | None = None,
                **run: Any) -> pl.DataFrame:
    """Every round trip of every (symbol, parameter set), one row each: `symbol`, `params` (a struct),
    the run parameters (`sl_pct` .. `slippage_pct`), then `entry_time, entry_price, exit_time, exit_price,
    units, fees, pnl, return_pct, bars_held, exit_reason` (SPEC 4.1; times as UTC datetimes).

    `run` takes the CLI's options by keyword, as `run_backtest`."""
    config = options.run_config(options.resolve_strategy(strategy), params or {}, **{**run, "trades": True})
    rows = [{"symbol": r["symbol"], "params": r["params"], **options.Execution.of(r).fields(), **trip}
            for r in engine.leaderboard(engine.run(_run_batch(frames, config, funding, mark,
                                                              detail_frames=detail_frames), config))
            for trip in r["round_trips"]]
    if not rows:
        kinds = {bool: pl.Boolean, str: pl.String}
        return pl.DataFrame(schema={"symbol": pl.String,
                                    **{o.record_field: kinds.get(o.type, pl.Float64) for o in run_options.PER_SET},
                                    "entry_time": pl.Datetime("us", "UTC"), "exit_time": pl.Datetime("us", "UTC"),
                                    "exit_reason": pl.String})
    frame = pl.DataFrame(rows)
    return frame.with_columns(pl.col("entry_time", "exit_time").str.to_datetime(time_unit="us", time_zone="UTC"))


@dataclass
class Portfolio:
    accounts: pl.DataFrame  # one row per (parameters, slots, stake), best first
    contributions: pl.DataFrame  # the best account's per-symbol round trips, P&L, skipped entries
    trades: pl.DataFrame  # the best account's round trips
    equity: pl.DataFrame  # the best account's equity and the equal-weight buy & hold, per bar
    best: dict[str, Any]

    def plot(self, path: str | Path) -> Path:
        """The CLI's portfolio picture (.html or .png) of the best account."""
        from pipeline import plots

        return plots.write_portfolio_plot(Path(path), self.best, f"{self.best['strategy']} portfolio")


@_run_options(tuple(o for o in for_command("portfolio") if o.in_config))
def run_portfolio(frames: Frames, strategy: str, params: Mapping[str, Any] | list[dict] | None = None, *,
              max_open: int | list[int] = 10, stake: str | float | list = "10%", rank_by: str = "auto",
              funding: Frames | None = None, mark: Frames | None = None, **run: Any) -> Portfolio:
    """One shared account over the frames' symbols, as `cryptobt portfolio` runs it (lists sweep).

    `run` takes the CLI's options by keyword, `slippage` (percent) among them; a futures account
    (`market="futures"`, direction, leverage, margin, mmr, tiers) takes `funding` and `mark` frames as
    `run_backtest` does."""
    config, sets = pf.request_sets(options.resolve_strategy(strategy), params or {},
                                   max_open if isinstance(max_open, list) else [max_open],
                                   stake if isinstance(stake, list) else [stake], rank_by, **run)
    accounts, best = pf.accounts(_run_batch(frames, config, funding, mark), config, sets, rank_by)
    curve = best["equity_curve"]
    return Portfolio(
        accounts=pl.DataFrame([{k: v for k, v in a.items() if k != "symbols"} for a in accounts]),
        contributions=pl.DataFrame(best["contributions"]),
        trades=pl.DataFrame(best["round_trips"]) if best["round_trips"] else pl.DataFrame(),
        equity=pl.DataFrame({"time": pl.from_epoch(pl.Series(curve["times"]), "s"), "equity": curve["equity"],
                             "buy_hold": curve["buy_hold"]}),
        best=best,
    )
