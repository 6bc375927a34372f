"""Data health: what in a price series would make a backtest's numbers lie.

Checks, per symbol at its native interval (freqtrade warns on gaps and > 10 % jumps at load
time; these go further): gaps (missing bars between two bars: count and longest), jumps
(close to close beyond `jump_ratio`, either way), stale stretches (`stale_bars` or more equal
closes in a row), zero or negative prices, zero volume, high below low, duplicate timestamps.

The lake computes them per (symbol, year) as it writes a year (no second read) and keeps the
numbers in its state; `combine` folds a symbol's years together, adding the gap or jump that
sits between two years. Files are checked whole (`cryptobt data check FILE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import intervals

if TYPE_CHECKING:
    import polars as pl

COUNTS = ("gaps", "jumps", "stale", "zero_price", "zero_volume", "high_below_low", "duplicates")


@dataclass(frozen=True)
class Thresholds:
    jump_ratio: float = 10.0
    stale_bars: int = 24


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat()


def measure(frame: pl.DataFrame, interval: str, thresholds: Thresholds, by: str | None = None) -> list[dict]:
    """One record of counts per `by` key (or one for the whole frame) of a frame sorted by (by, ts).

    Besides the counts, a record keeps its first/last bar and close, so adjacent years can be
    joined by `combine`, and the worst jump and longest gap with where they are. NumPy over
    the sorted rows: one pass, no per-symbol Python loop over bars.
    """
    n = frame.height
    if n == 0:
        return []
    keys = frame[by].to_numpy() if by else np.zeros(n, dtype=np.int64)
    ts = frame["ts"].dt.epoch("us").to_numpy()
    close = frame["close"].to_numpy()
    prices = frame.select("open", "high", "low", "close").to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], n]
    same = keys[1:] == keys[:-1]  # pair (i, i+1) within one key
    step = intervals.SECONDS[interval] * 1_000_000
    gap = np.where(same, (ts[1:] - ts[:-1]) // step - 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = close[1:] / close[:-1]
        # A zero price is its own finding; it makes no jump (its ratio would be infinite).
        jump = np.where(same & (close[1:] > 0) & (close[:-1] > 0), np.maximum(ratio, 1.0 / ratio), 1.0)
    # Runs of equal closes: a new run starts at each key start or changed close.
    new_run = np.r_[True, ~same | (close[1:] != close[:-1])]
    run_id = np.cumsum(new_run) - 1
    run_len = np.bincount(run_id)
    run_key_row = np.flatnonzero(new_run)
    stale_run = run_len >= thresholds.stale_bars
    # Pair arrays have n-1 entries; pad so a key's segment [start, end) maps onto pairs [start, end-1).
    gap_p, jump_p = np.r_[gap, 0], np.r_[jump, 1.0]
    zero_price = (prices <= 0).any(axis=1)
    duplicates = np.r_[False, same & (ts[1:] == ts[:-1])]
    volume = frame["volume"].to_numpy()
    run_from, run_to = np.searchsorted(run_key_row, starts), np.searchsorted(run_key_row, ends)
    records = []
    for start, end, r0, r1 in zip(starts, ends, run_from, run_to, strict=True):
        g, j = gap_p[start:end - 1], jump_p[start:end - 1]
        stale_here = run_len[r0:r1][stale_run[r0:r1]]
        worst_gap = int(g.max()) if g.size else 0
        worst_jump = float(j.max()) if j.size else 1.0
        record = {
            "first_ts": _iso(int(ts[start])), "last_ts": _iso(int(ts[end - 1])),
            "first_close": float(close[start]), "last_close": float(close[end - 1]),
            "gaps": int((g > 0).sum()), "longest_gap": max(worst_gap, 0),
            "longest_gap_at": _iso(int(ts[start + 1 + int(g.argmax())])) if worst_gap > 0 else None,
            "jumps": int((j > thresholds.jump_ratio).sum()), "max_jump": worst_jump,
            "max_jump_at": _iso(int(ts[start + 1 + int(j.argmax())])) if worst_jump > 1.0 else None,
            "stale": int(stale_here.size), "longest_stale": int(stale_here.max()) if stale_here.size else 0,
            "zero_price": int(zero_price[start:end].sum()),
            "zero_volume": int((volume[start:end] == 0).sum()),
            "high_below_low": int((prices[start:end, 1] < prices[start:end, 2]).sum()),
            "duplicates": int(duplicates[start:end].sum()), "interval": interval,
        }
        if by:
            record[by] = keys[start].item()
        records.append(record)
    return records


def combine(parts: list[dict], thresholds: Thresholds) -> dict:
    """One symbol's record from its years' records (in any order), counting what lies between years."""
    parts = sorted(parts, key=lambda p: p["first_ts"])
    total = {k: sum(int(p[k]) for p in parts) for k in COUNTS}
    total["longest_gap"] = max(int(p["longest_gap"]) for p in parts)
    total["longest_stale"] = max(int(p["longest_stale"]) for p in parts)
    worst_jump = max(parts, key=lambda p: p["max_jump"])
    total["max_jump"], total["max_jump_at"] = worst_jump["max_jump"], worst_jump["max_jump_at"]
    widest = max(parts, key=lambda p: p["longest_gap"])
    total["longest_gap_at"] = widest["longest_gap_at"] if widest["longest_gap"] else None
    interval = parts[0]["interval"]
    step = intervals.SECONDS[interval]
    for before, after in zip(parts, parts[1:], strict=False):
        missing = int((datetime.fromisoformat(after["first_ts"]) - datetime.fromisoformat(before["last_ts"]))
                      .total_seconds() // step) - 1
        if missing > 0:
            total["gaps"] += 1
            if missing > total["longest_gap"]:
                total["longest_gap"], total["longest_gap_at"] = missing, after["first_ts"]
        ratio = after["first_close"] / before["last_close"] if before["last_close"] > 0 else float("inf")
        ratio = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
        if ratio > thresholds.jump_ratio:
            total["jumps"] += 1
        if ratio > total["max_jump"]:
            total["max_jump"], total["max_jump_at"] = ratio, after["first_ts"]
    total["interval"] = interval
    return total


GAP_NOTE = "gap(s)"


def worth_a_warning(notes: list[str]) -> list[str]:
    """The findings a backtest warns about: all but gaps, which SPEC section 3 makes part of the
    contract (a missing bar is skipped, never filled); import, export and `data check` list them."""
    return [note for note in notes if GAP_NOTE not in note.split(",")[0]]


def findings(record: dict, thresholds: Thresholds) -> list[str]:
    """Readable findings of one symbol's record; empty when it is healthy."""
    out = []
    if record["gaps"]:
        out.append(f"{record['gaps']:,} {GAP_NOTE}, longest {record['longest_gap']:,} missing {record['interval']} "
                   f"bar(s) before {record['longest_gap_at']}")
    if record["jumps"]:
        out.append(f"{record['jumps']:,} jump(s) beyond {thresholds.jump_ratio:g}x, largest "
                   f"x{record['max_jump']:,.1f} at {record['max_jump_at']}")
    if record["stale"]:
        out.append(f"{record['stale']:,} stale stretch(es) of >= {thresholds.stale_bars} equal closes, longest "
                   f"{record['longest_stale']:,}")
    for key, what in (("zero_price", "zero or negative price(s)"), ("zero_volume", "zero-volume bar(s)"),
                      ("high_below_low", "bar(s) with high below low"), ("duplicates", "duplicate timestamp(s)")):
        if record[key]:
            out.append(f"{record[key]:,} {what}")
    return out
