"""`strategies check`: a strategy's look-ahead and warm-up checks on the lake's prices."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.runs import informative
from pipeline.runs.informative import with_informative


def check_strategy(settings: Settings, strategy: strategies.Strategy, params: dict[str, Any], symbols: list[str] | None,
                   interval: str, limit: int = 3) -> list:
    """Look-ahead and warm-up checks of `strategy` on `symbols` (default: the lake's first `limit`)."""

    from pipeline.engine import checks

    if interval not in ("1h", "1d"):
        raise PipelineError(f"--interval {interval!r} is not allowed; use 1h or 1d")
    config = options.run_config(strategy, params)
    snapshot = lake.require_snapshot(settings.lake_root)
    with lake.reading(settings.lake_root, snapshot) as pinned:
        names = reader.resolve_symbols(pinned, symbols)[: None if symbols else limit]
        informative.check(pinned, strategy, {name: interval for name in names})
        batch = with_informative(reader.read_prices(settings.lake_root, names, interval, None, None,
                                                    columns=engine.columns_needed(config), snapshot=pinned),
                                 strategy, settings.lake_root, pinned, None)
    reports = []
    for i, symbol in enumerate(batch.symbols):
        have = ~np.isnan(batch.columns["close"][i])
        columns = {name: np.ascontiguousarray(values[i][have]) for name, values in batch.columns.items()}
        reports.append(checks.check_symbol(strategy, params, symbol, columns))
    return reports
