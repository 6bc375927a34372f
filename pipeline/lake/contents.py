"""What the lake holds, for `cryptobt data list` and `cryptobt data check` (wiring stays in the CLI).

A lake symbol's health was measured when its snapshot was written (the manifest keeps the
findings); a file is read and measured on the spot, without the importer's refusals, so a
zero price or a duplicate timestamp is reported rather than refused.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import intervals
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.source import health
from pipeline.source.bar_rules import native_interval
from pipeline.source.ohlcv import SUPPORTED_SUFFIXES, read_ohlcv_file


def listing(lake_root: Path, snapshot_id: str | None = None) -> list[dict]:
    """One row per symbol: native interval, readable intervals, first/last bar, bars, gaps, version, source,
    and why the export refused its source rows (`refused`: it keeps older bars, or has none)."""
    snapshot = lake.require_snapshot(lake_root, snapshot_id)
    refused = snapshot.manifest.get("refused", {})
    rows = []
    for name in sorted(set(snapshot.symbols) | set(refused)):
        meta = snapshot.symbols.get(name)
        row = {"symbol": name, "interval": None, "intervals": [], "stored": [], "first": None, "last": None,
               "bars": 0, "gaps": None, "data_version": None, "refused": refused.get(name),
               "source": snapshot.manifest.get("source"), "snapshot_id": snapshot.id}
        if meta is not None:
            native = meta.get("native", "1h")
            span = meta.get(native) or meta[reader.stored(meta)[0]]
            row.update({
                "interval": native, "intervals": [i for i in intervals.NAMES if reader.read_from(meta, i)],
                "stored": reader.stored(meta), "first": span["first"], "last": span["last"], "bars": span["bars"],
                "gaps": meta.get("gaps"), "data_version": meta["data_version"],
            })
        rows.append(row)
    return rows


def check_file(path: Path, thresholds: health.Thresholds) -> list[str]:
    frame = read_ohlcv_file(path, validate=False)
    records = health.measure(frame, native_interval(frame, str(path)), thresholds)
    return health.findings(health.combine(records, thresholds), thresholds) if records else []


def check(lake_root: Path, targets: list[str], thresholds: health.Thresholds,
          snapshot_id: str | None = None) -> dict[str, list[str]]:
    """Findings per target: a path to an OHLCV file is measured now; anything else is a lake symbol
    (all of them when `targets` is empty), whose findings its snapshot recorded."""
    files = [t for t in targets if Path(t).suffix.lower() in SUPPORTED_SUFFIXES and Path(t).is_file()]
    symbols = [t for t in targets if t not in files]
    found = {str(path): check_file(Path(path), thresholds) for path in files}
    if symbols or not targets:
        snapshot = lake.require_snapshot(lake_root, snapshot_id)
        for name in reader.resolve_symbols(snapshot, symbols):
            found[name] = snapshot.symbols[name].get("health", [])
    return found
