"""Maintenance-margin tier tables (SPEC 4.3): ccxt's layout, as freqtrade's binance_leverage_tiers.json.

Per `BASE/QUOTE:SETTLE` symbol a list of brackets, each with `minNotional`, `maxNotional`,
`maintenanceMarginRate`, `maxLeverage` and `info.cum` (the maintenance amount). A symbol of ours
matches an entry by that name or by the names a file or a database gives the same perpetual:
`XRP_USDT_USDT` (freqtrade's file name), `XRP_USDT`, `XRPUSDT`, `XRP/USDT`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core import markets
from pipeline.core.errors import PipelineError
from pipeline.engine.kernels.enums import N_TIER, TIER_CUM, TIER_MAX, TIER_MIN, TIER_MMR

# The snapshot cryptobt ships: Binance's USDT-margined tiers of a dozen major perpetuals, as freqtrade
# published them on this date (its commit 3d9514d2, freqtrade/exchange/binance_leverage_tiers.json).
SHIPPED = Path(__file__).resolve().parent / "data" / "binance_leverage_tiers-2024-10-24.json"


def names_of(key: str) -> tuple[str, ...]:
    """The symbol names that mean the perpetual `key` (`XRP/USDT:USDT`)."""
    pair, _, settle = key.partition(":")
    base, _, quote = pair.partition("/")
    names = [key, pair, f"{base}_{quote}", f"{base}{quote}"]
    if settle:
        names.append(f"{base}_{quote}_{settle}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class TierTable:
    """Brackets per symbol name (K x N_TIER float64, ascending), or one flat rate for every symbol."""

    identity: str  # what results and cache keys record: `mmr=0.005` or `<file name>@<sha256 prefix>`
    brackets: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    flat: np.ndarray | None = field(default=None, repr=False)
    # Each bracket's maxLeverage, parallel to `brackets` (NaN where the file gives none).
    caps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def leverage_notes(self, symbols: list[str], leverages: list[float], initial: float) -> list[str]:
        """One line per symbol whose tiers refuse the run's highest leverage L on an entry of the initial cash
        (notional initial x L): the notional up to which they allow L (none: above every bracket's maxLeverage).
        The backtest does not enforce the cap (SPEC 4.3 takes --leverage as given); these lines report it."""
        leverage = max(leverages, default=1.0)
        notional = initial * leverage
        notes = []
        for symbol in symbols:
            name = markets.symbol_of(symbol)
            caps, brackets = self.caps.get(name), self.brackets.get(name)
            if caps is None or brackets is None:
                continue
            allowed = np.flatnonzero(~(caps < leverage))
            limit = brackets[allowed[-1], TIER_MAX] if allowed.size else 0.0
            if notional <= limit:
                continue
            where = ("at no notional" if allowed.size == 0 else f"only up to {limit:,.0f} notional")
            notes.append(f"--leverage {leverage:g}: {symbol}'s tiers ({self.identity}) allow it {where}, so Binance "
                         f"would refuse an entry of the initial cash ({notional:,.0f} notional) and any larger one; "
                         "the backtest does not enforce the tier's maxLeverage")
        return notes

    def of(self, symbol: str) -> np.ndarray:
        """The brackets of `symbol`; PipelineError when the table has none and no flat rate was given."""
        found = self.brackets.get(markets.symbol_of(symbol))
        if found is not None:
            return found
        if self.flat is not None:
            return self.flat
        raise PipelineError(f"symbol {symbol!r} is not in the tier table {self.identity}; give --tiers FILE "
                            "holding it or a flat --mmr RATE")

    def stacked(self, symbols: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(S x K x N_TIER) brackets of `symbols` padded to the longest, and each one's count (the kernels')."""
        each = [self.of(s) for s in symbols]
        longest = max((len(b) for b in each), default=1)
        out = np.zeros((len(symbols), longest, N_TIER))
        for i, brackets in enumerate(each):
            out[i, :len(brackets)] = brackets
        return out, np.array([len(b) for b in each], dtype=np.int64)


def flat(mmr: float) -> np.ndarray:
    """One bracket from 0 without end at maintenance rate `mmr`, cum 0."""
    row = np.zeros((1, N_TIER))
    row[0, TIER_MIN] = 0.0
    row[0, TIER_MAX] = np.inf
    row[0, TIER_MMR] = mmr
    row[0, TIER_CUM] = 0.0
    return row


def _number(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PipelineError(f"{where}: {name} {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise PipelineError(f"{where}: {name} {value!r} is not a number") from None
    if math.isnan(number) or number < 0:
        raise PipelineError(f"{where}: {name} {value!r} must be a number >= 0")
    return number


def _caps(entries: list) -> np.ndarray:
    """Each bracket's maxLeverage (NaN where absent or not a positive number)."""
    caps = np.full(len(entries), np.nan)
    for j, entry in enumerate(entries):
        value = entry.get("maxLeverage")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            caps[j] = float(value)
    return caps


def _brackets(where: str, entries: object) -> np.ndarray:
    if not isinstance(entries, list) or not entries:
        raise PipelineError(f"{where}: a list of brackets is expected")
    rows = np.zeros((len(entries), N_TIER))
    for j, entry in enumerate(entries):
        at = f"{where} bracket {j + 1}"
        if not isinstance(entry, dict):
            raise PipelineError(f"{at}: an object with minNotional, maxNotional, maintenanceMarginRate is expected")
        info = entry.get("info") if isinstance(entry.get("info"), dict) else {}
        rows[j, TIER_MIN] = _number(at, "minNotional", entry.get("minNotional"))
        rows[j, TIER_MAX] = _number(at, "maxNotional", entry.get("maxNotional"))
        rows[j, TIER_MMR] = _number(at, "maintenanceMarginRate", entry.get("maintenanceMarginRate"))
        rows[j, TIER_CUM] = _number(at, "info.cum", info.get("cum", 0.0))
        if not rows[j, TIER_MMR] < 1.0:
            raise PipelineError(f"{at}: maintenanceMarginRate {rows[j, TIER_MMR]:g} must be below 1")
        if rows[j, TIER_MAX] <= rows[j, TIER_MIN] or (j and rows[j, TIER_MIN] < rows[j - 1, TIER_MAX]):
            raise PipelineError(f"{at}: notional brackets must ascend without overlap "
                                f"({rows[j, TIER_MIN]:g} .. {rows[j, TIER_MAX]:g})")
    return rows


def load(path: str | None, mmr: float | None) -> TierTable:
    """The tier table of a run: `mmr` alone is a flat rate for every symbol; a file (default: the shipped
    snapshot) gives each symbol its brackets, with `mmr` for the symbols it lacks."""
    source = SHIPPED if path is None else Path(path).expanduser()
    if path is None and mmr is not None:
        return TierTable(f"mmr={mmr:g}", flat=flat(mmr))
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise PipelineError(f"--tiers {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"--tiers {source}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise PipelineError(f"--tiers {source}: an object of symbols (\"XRP/USDT:USDT\": [brackets]) is expected")
    brackets: dict[str, np.ndarray] = {}
    caps: dict[str, np.ndarray] = {}
    for key, entries in data.items():
        rows = _brackets(f"--tiers {source.name} {key}", entries)
        for name in names_of(str(key)):
            brackets.setdefault(name, rows)
            caps.setdefault(name, _caps(entries))
    identity = f"{source.name}@{hashlib.sha256(raw).hexdigest()[:16]}" + (f"+mmr={mmr:g}" if mmr is not None else "")
    return TierTable(identity, brackets, None if mmr is None else flat(mmr), caps)
