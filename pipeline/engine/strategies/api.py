"""What a strategy file may use: the public API for writing one (built-in or your own).

A strategy is one Python file that declares, at module level:

- `NAME` (str), `DESCRIPTION` (str, optional: the module docstring otherwise);
- `PARAMS`: a tuple of `Param` (name, type, default, allowed range, meaning);
- `CHECK` (optional): a function of the resolved parameters (dict) returning an
  error message or None: the cross-parameter rule;
- `COLUMNS`: the price columns the indicators and signals read, any of
  open, high, low, close, volume; row j of `prices` below is `COLUMNS[j]`;
- `INDICATORS`: names of the indicator rows `indicators` fills (may be empty);
- `INDICATOR_PARAMS`: the parameters the indicators depend on, so a sweep
  computes each distinct indicator once and reuses it for the other parameters;
  or a mapping of each indicator to its own (`{"upper": ("entry_period",), ...}`): each row is then
  kept per distinct value of its own parameters and shared across the sets that differ elsewhere;
- `SIGNAL_VALUE` (optional): what the trade log's `indicator` value is;
- three Numba functions (`@njit(cache=True)`), over one symbol's bars in time
  order (gaps removed, no NaN in the prices):
  `indicators(prices, params, ind)` fills `ind` (len(INDICATORS) x bars);
  `signals(prices, params, ind, entries, exits, sig_value)` fills the three
  per-bar arrays (entry flat -> long, exit long -> flat, the logged value);
  `warmup(params) -> int`: bars needed before the first signal can fire;
- for perpetual futures' `--direction short|both` (optional): `SHORT_RULE = "mirror"` (a long exit
  opens a short, a long entry closes it: the built-ins') or a fourth Numba function
  `short_signals(prices, params, ind, enter_short, exit_short)` filling the short side's signals;
  a file with neither runs long only.
- slower series (optional): `INFORMATIVE = ("1d", ("BTC_USDT", "1d"))`; then `indicators`,
  `signals` and `short_signals` take a trailing `informative` argument, `informative[k, j, t]` =
  COLUMNS[j] of the last bar of series k closed by bar t's close (docs/contract.md, "Informative
  intervals"; examples/strategies/daily_trend.py).
  `params` is a float64 array in `PARAMS` order (cast periods with `int()`).
  An integer parameter lies within +-INT_PARAM_LIMIT (2**31 - 1) whatever PARAMS declares.

Indicators must be causal (bar t uses bars <= t only); `cryptobt strategies
check NAME` verifies it on data: every output (each indicator row and each of
SIGNAL_OUTPUTS) at every truncation point.

A strategy file may import helper modules of its own (files next to it whose
names start with `_` are not loaded as strategies); they are part of its code
identity (see `pipeline.engine.strategies.usercode`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from numba import njit

from pipeline.core.errors import PipelineError
from pipeline.core.plain_numbers import is_plain_number
from pipeline.engine.kernels.indicators import (
    bb_std_1d,
    bbands_1d,
    ema_1d,
    macd_1d,
    rsi_1d,
    sma_1d,
)
from pipeline.engine.kernels.signals import cross_above, cross_below, lines_cross_signals

Number = int | float

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")

# What `signals` fills besides the indicators, in its argument order: every one is an output the
# look-ahead check compares (a new output joins this tuple and the kernel's `strategy_outputs`).
# The short side (futures) is compared too: a strategy's own short_signals, or the mirror of its long signals.
SIGNAL_OUTPUTS = ("entries", "exits", "sig_value", "enter_short", "exit_short")

# Every integer parameter (a strategy's or a run's) lies within +-INT_PARAM_LIMIT, whatever it declares:
# kernels cast parameters from float64 to int64 and add a few (warm-ups); a value past int32 is longer
# than any series and would wrap there (1e29 became a negative period).
INT_PARAM_LIMIT = 2**31 - 1

__all__ = [
    "INT_PARAM_LIMIT",
    "PRICE_COLUMNS",
    "SIGNAL_OUTPUTS",
    "Param",
    "bb_std_1d",
    "bbands_1d",
    "cross_above",
    "cross_below",
    "ema_1d",
    "fast_below_slow",
    "lines_cross_signals",
    "macd_1d",
    "njit",
    "rsi_1d",
    "sma_1d",
]


def fmt_number(value: object) -> str:
    """Numbers as a user typed them: 30 rather than 30.0; strings quoted."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _to_number(named: str, value: object) -> Number:
    """`value` as an int or float; `named` is how messages name it (`rsi_period='x'`, `--sl 'x'`)."""
    if isinstance(value, bool) or value is None:
        raise PipelineError(f"{named} is not a number")
    if isinstance(value, str):
        text = value.strip()
        if not is_plain_number(text):  # int() would read `1_4` and Arabic-Indic digits as 14
            raise PipelineError(f"{named} is not a number (ASCII digits, e.g. 14 or 2.5)")
        try:
            number: Number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise PipelineError(f"{named} is not a number") from None
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise PipelineError(f"{named} is not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise PipelineError(f"{named} is not a finite number")
    return number


@dataclass(frozen=True)
class Param:
    """One strategy parameter: its type, default, allowed range and meaning."""

    name: str
    type: type  # int or float
    default: Number
    description: str
    minimum: Number | None = None
    maximum: Number | None = None
    # False makes `minimum` exclusive (bb_std > 0), or `maximum` (slippage < 100).
    minimum_inclusive: bool = True
    maximum_inclusive: bool = True
    # A text parameter's allowed words (type str). Only the engine's run parameters have them
    # (direction=long,short,both): a strategy's own parameters are numbers, its kernels read floats.
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type is int:  # the bound every integer parameter has (INT_PARAM_LIMIT)
            if self.minimum is None or self.minimum < -INT_PARAM_LIMIT:
                object.__setattr__(self, "minimum", -INT_PARAM_LIMIT)
                object.__setattr__(self, "minimum_inclusive", True)
            if self.maximum is None or self.maximum > INT_PARAM_LIMIT:
                object.__setattr__(self, "maximum", INT_PARAM_LIMIT)
                object.__setattr__(self, "maximum_inclusive", True)

    def allowed(self) -> str:
        """Human-readable allowed range, e.g. 'an integer >= 2'."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        kind = "an integer" if self.type is int else "a number"
        parts = []
        if self.minimum is not None:
            op = ">=" if self.minimum_inclusive else ">"
            parts.append(f"{op} {fmt_number(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"{'<=' if self.maximum_inclusive else '<'} {fmt_number(self.maximum)}")
        return f"{kind} {' and '.join(parts)}" if parts else kind

    def convert(self, value: object, option: str | None = None) -> Number:
        """Type and range-check one value (numbers or numeric strings); raise PipelineError.

        Messages name the value as `name=value`, or as `option value` (`--sl 150`) when the
        value came from a command-line option.
        """
        if self.choices:
            word = value.strip() if isinstance(value, str) else value
            if word not in self.choices:
                raise PipelineError(f"{f'{option} {value!r}' if option else f'{self.name}={value!r}'} is not "
                                    f"allowed; use {self.allowed()}")
            return word
        number = _to_number(f"{option} {value!r}" if option else f"{self.name}={value!r}", value)
        named = f"{option} {value!r}" if option else f"{self.name}={fmt_number(number)}"
        if self.type is int:
            if not float(number).is_integer():
                raise PipelineError(f"{named} is not an integer: must be {self.allowed()}")
            number = int(number)
        else:
            number = float(number)
        too_low = self.minimum is not None and (
            number < self.minimum if self.minimum_inclusive else number <= self.minimum
        )
        too_high = self.maximum is not None and (
            number > self.maximum if self.maximum_inclusive else number >= self.maximum
        )
        if too_low or too_high:
            raise PipelineError(f"{named} is out of range: must be {self.allowed()}")
        return number


def fast_below_slow(params: dict) -> str | None:
    """Cross-parameter rule of two moving averages: fast_period < slow_period."""
    if params["fast_period"] >= params["slow_period"]:
        return f"fast_period={params['fast_period']} must be less than slow_period={params['slow_period']}"
    return None
