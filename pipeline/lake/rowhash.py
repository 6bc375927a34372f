"""Content hashes of a symbol's rows: what a data version is made of.

A hash is the sum (mod 2^64) of a 64-bit hash of each row, with the row count. A sum does not care
how the rows are split, so the hashes of a year's base and tail add up to the hash of the whole
year (`year_sums`): a version does not depend on where the tail starts, and an export that rewrites
only the tail never reads the base. The export state keeps one hash per part, keyed by `part_key`.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from pipeline.source.ohlcv import PRICE_COLUMNS

if TYPE_CHECKING:
    import polars as pl

# The manifest mark of row-sum content hashes (`hash_symbols`): hashes of a year's parts add up.
ROW_HASH = "rowsum64-v1"

_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_ROW_SEED, _WORD_MULTIPLIER = np.uint64(0xD1B54A32D192ED03), np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1


def part_key(year: int, tail: bool) -> str:
    """The export state's key of a year's base ("2026") or tail ("2026t")."""
    return f"{year}t" if tail else str(year)


def part_year(key: str) -> int:
    return int(key.rstrip("t"))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (numpy's uint64 arithmetic wraps, as it must)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX[0]
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX[1]
    return x ^ (x >> np.uint64(31))


def hash_symbols(frame: pl.DataFrame) -> dict[int, str]:
    """Content hash of each symbol's rows in a (symbol_id, ts)-sorted frame: the sum (mod 2^64) of a
    64-bit hash of each row's (ts, open..volume) bits, and the row count.

    Each row's words are chained (xor, multiply, xorshift), so values swapped between rows or
    columns change the row hashes."""
    ids = frame["symbol_id"].to_numpy()
    if ids.size == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, ids.size])
    words = [frame["ts"].dt.epoch("us").to_numpy().view(np.uint64)]
    words += [np.ascontiguousarray(frame[column].to_numpy()).view(np.uint64) for column in PRICE_COLUMNS]
    row = np.full(ids.size, _ROW_SEED, dtype=np.uint64)
    shifted = np.empty_like(row)
    for word in words:  # in place: a pass per operation, no temporaries (0.13 s per 1.45 M rows)
        np.bitwise_xor(row, word, out=row)
        np.multiply(row, _WORD_MULTIPLIER, out=row)
        np.right_shift(row, np.uint64(32), out=shifted)
        np.bitwise_xor(row, shifted, out=row)
    sums = np.add.reduceat(_mix(row), starts)
    return {int(ids[start]): f"{int(total):016x}:{int(n)}" for start, total, n in zip(starts, sums, counts, strict=True)}


def year_sums(parts: dict[str, str]) -> dict[str, str]:
    """Per year, the sum of its parts' row-sum hashes (base + tail): the hash of the year's rows."""
    sums: dict[str, list[int]] = {}
    for key, digest in parts.items():
        total = sums.setdefault(str(part_year(key)), [0, 0])
        value, rows = digest.split(":")
        total[0] = (total[0] + int(value, 16)) & _MASK64
        total[1] += int(rows)
    return {year: f"{value:016x}:{rows}" for year, (value, rows) in sums.items()}


def data_version(parts: dict[str, str], native: str) -> str:
    """A symbol's data version from its parts' hashes: the same rows give the same version however
    the lake split them."""
    content: dict[str, str] = year_sums(parts)
    # Another native interval than 1h is part of the content.
    content = content if native == "1h" else {"native": native, **content}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()
