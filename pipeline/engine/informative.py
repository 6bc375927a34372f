"""A strategy's informative series (INFORMATIVE: slower intervals of its own symbol, or another symbol's) on
the run's grid, without look-ahead: bar t sees the last informative bar closed by bar t's close (the contract's
"Informative intervals"). No I/O here: the caller reads the series (`pipeline.runs.informative` from the lake,
the notebook from frames) and `attach` lays them on the batch as the columns the kernels gather.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from pipeline.core import intervals
from pipeline.core.errors import PipelineError
from pipeline.engine.strategies import Strategy, informative_column
from pipeline.lake.align import last_closed
from pipeline.lake.reader import PriceBatch


def label(symbol: str | None, interval: str) -> str:
    """How messages name one informative series: `1d` (the run's own symbol) or `BTC_USDT 1d`."""
    return interval if symbol is None else f"{symbol} {interval}"


def check_interval(strategy: Strategy, interval: str) -> None:
    """PipelineError when the strategy reads an informative interval finer than the run's `interval`."""
    for symbol, wanted in strategy.informative:
        if intervals.SECONDS[wanted] < intervals.SECONDS[interval]:
            raise PipelineError(f"strategy {strategy.name!r} reads {label(symbol, wanted)} bars (INFORMATIVE), finer "
                                f"than the run's {interval}: an informative interval is the run's or a coarser one")


def attach(batch: PriceBatch, strategy: Strategy, series: list[PriceBatch]) -> PriceBatch:
    """`batch` with the strategy's informative columns: series[k] holds INFORMATIVE[k]'s bars (the run's
    own symbols, or the one symbol named). Another symbol's data version joins each row's version (a new
    bar of the market filter is a new result)."""
    if len(series) != len(strategy.informative):
        raise PipelineError(f"strategy {strategy.name!r} reads {len(strategy.informative)} informative series; "
                            f"{len(series)} given")
    step = intervals.SECONDS[batch.interval]
    columns = dict(batch.columns)
    versions = list(batch.data_versions)
    shape = batch.columns["close"].shape
    for k, ((symbol, interval), source) in enumerate(zip(strategy.informative, series, strict=True)):
        out = {c: np.full(shape, np.nan) for c in strategy.columns}
        row_of = {name: r for r, name in enumerate(source.symbols)}
        for i, name in enumerate(batch.symbols):
            r = 0 if symbol is not None else row_of.get(name)
            if r is None or not source.symbols:
                continue
            has = ~np.isnan(source.columns["close"][r])
            at = last_closed(batch.times, step, source.times[has], intervals.SECONDS[interval])
            seen = at >= 0
            for c in strategy.columns:
                out[c][i, seen] = source.columns[c][r][has][at[seen]]
            if symbol is not None:
                versions[i] = hashlib.sha256(f"{versions[i]}|{symbol}@{interval}={source.data_versions[0]}"
                                             .encode()).hexdigest()[:32]
        for c in strategy.columns:
            columns[informative_column(k, c)] = out[c]
    return dataclasses.replace(batch, columns=columns, data_versions=versions)
