"""The trades table: each result's fills and round trips, one row each."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.store.files import (
    trades_root,
    write_table,
)
from pipeline.store.rows import result_row
from pipeline.store.schemas import (
    FUTURES_TRIP_FIELDS,
    ROUND_TRIP_FIELDS,
    RUN_PARAMETER_FIELDS,
    TRADE_SCHEMA,
)
from pipeline.store.values import (
    as_utc,
    parse_ts,
    plain,
    utc_now,
)


def append_trades(
    results_root: str | os.PathLike[str],
    run_id: str,
    results: Iterable[Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[Path]:
    """Append the ``trades`` (fills) and ``round_trips`` lists of result records to the trades
    table, one row each (``kind`` says which); returns the files."""
    created = utc_now() if created_at is None else as_utc(created_at, "created_at")
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        trades = record.get("trades") or ()
        trips = record.get("round_trips") or ()
        if not trades and not trips:
            continue
        result = result_row(record, run_id, created)
        head = {name: result.get(name) for name in ("run_id", "created_at", "symbol", "strategy", "interval",
                                                    "params_json", "snapshot_id", "data_version", "market",
                                                    *RUN_PARAMETER_FIELDS)}
        rows = rows_by_strategy.setdefault(result["strategy"], [])
        for trade_no, trade in enumerate(trades):
            rows.append({
                **head,
                "trade_no": trade_no,
                "kind": "fill",
                "time": parse_ts(trade.get("time"), "trades.time"),
                **{name: plain(trade.get(name)) for name in ("action", "price", "units", "value", "fee",
                                                              "indicator")},
            })
        for trade_no, trip in enumerate(trips):
            rows.append({
                **head,
                "trade_no": trade_no,
                "kind": "round_trip",
                **{name: plain(trip.get(name)) for name in (*ROUND_TRIP_FIELDS, *FUTURES_TRIP_FIELDS)},
                "entry_time": parse_ts(trip.get("entry_time"), "round_trips.entry_time"),
                "exit_time": parse_ts(trip.get("exit_time"), "round_trips.exit_time"),
            })
    root = trades_root(results_root)
    return [
        write_table(root, run_id, strategy, created, rows, TRADE_SCHEMA)
        for strategy, rows in rows_by_strategy.items()
    ]
