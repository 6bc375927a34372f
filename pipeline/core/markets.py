"""Markets (SPEC 4.3): a perpetual's series is its symbol qualified by the market, `XRP_USDT:futures`.

A symbol is its name (the contract's "Symbol identity"); the futures market's series are the names
ending in FUTURES_SUFFIX, which a spot symbol cannot (its name is letters, digits, `_`, `-` and `.`),
so a spot series and a perpetual of the same symbol are two series in PostgreSQL, the lake, cache keys
and results alike.
"""

from __future__ import annotations

MARKETS = ("spot", "futures")
FUTURES_SUFFIX = ":futures"


def series_name(symbol: str, market: str) -> str:
    """The series of `symbol` on `market`: `XRP_USDT` -> `XRP_USDT:futures` on futures (as given on spot)."""
    if market == "futures" and not symbol.endswith(FUTURES_SUFFIX):
        return symbol + FUTURES_SUFFIX
    return symbol


def market_of(name: str) -> str:
    """The market of a series name."""
    return "futures" if name.endswith(FUTURES_SUFFIX) else "spot"


def symbol_of(name: str) -> str:
    """A series name without its market: `XRP_USDT:futures` -> `XRP_USDT` (the tier table's lookup)."""
    return name[: -len(FUTURES_SUFFIX)] if name.endswith(FUTURES_SUFFIX) else name
