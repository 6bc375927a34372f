"""A run's informative series from the lake: one batched read per INFORMATIVE entry, laid on the run's grid
by `pipeline.engine.informative.attach`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.engine import informative
from pipeline.engine.strategies import Strategy
from pipeline.lake import reader
from pipeline.lake import snapshots as lake


def check(snapshot: lake.Snapshot, strategy: Strategy, interval_of: dict[str, str]) -> None:
    """Before any work: every interval of the run allows the strategy's informative ones, and every other
    symbol it names is in the lake."""
    for interval in set(interval_of.values()):
        informative.check_interval(strategy, interval)
    for symbol, interval in strategy.informative:
        if symbol is not None and symbol not in snapshot.symbols:
            raise PipelineError(f"strategy {strategy.name!r} reads {informative.label(symbol, interval)} bars "
                                f"(INFORMATIVE) but the lake has no symbol {symbol!r}")


def with_informative(batch: reader.PriceBatch, strategy: Strategy, lake_root: Path, snapshot: lake.Snapshot,
                     end: datetime | None) -> reader.PriceBatch:
    """`batch` with `strategy`'s informative columns read from `snapshot` (the whole history up to `end`)."""
    if not strategy.informative:
        return batch
    informative.check_interval(strategy, batch.interval)
    series = [reader.read_prices(lake_root, batch.symbols if symbol is None else [symbol], interval, None, end,
                                 columns=strategy.columns, snapshot=snapshot)
              for symbol, interval in strategy.informative]
    return informative.attach(batch, strategy, series)
