"""Strategy registry: names, parameters, validation, sweeps and the kernel codes.

Everything a user can name on the command line or in `crypto_strategies` is
checked here, before any data is read; errors are `PipelineError`s whose
message names the bad value and what is allowed.

Adding a strategy: an indicator function and a branch in
`kernels.indicators.strategy_indicators_1d`, a branch in
`kernels.signals.strategy_signals_1d` and `warmup_bars_nb`, a code in
`kernels.enums`, and one `Strategy` entry below.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

import numpy as np

from pipeline.errors import PipelineError
from pipeline.kernels import enums
from pipeline.kernels.signals import warmup_bars_nb
from pipeline.options import is_plain_number

Number = int | float

# A sweep larger than this is almost certainly a typo in a step; refuse it
# before allocating (S x C x metrics) results.
MAX_GRID_COMBOS = 1_000_000


@dataclass(frozen=True)
class Param:
    """One strategy parameter: its type, default, allowed range and meaning."""

    name: str
    type: type  # int or float
    default: Number
    description: str
    minimum: Number | None = None
    maximum: Number | None = None
    # False makes `minimum` exclusive (bb_std > 0).
    minimum_inclusive: bool = True

    def allowed(self) -> str:
        """Human-readable allowed range, e.g. 'an integer >= 2'."""
        kind = "an integer" if self.type is int else "a number"
        parts = []
        if self.minimum is not None:
            op = ">=" if self.minimum_inclusive else ">"
            parts.append(f"{op} {_fmt(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"<= {_fmt(self.maximum)}")
        return f"{kind} {' and '.join(parts)}" if parts else kind

    def convert(self, value: object) -> Number:
        """Type and range-check one value (numbers or numeric strings); raise PipelineError."""
        number = _to_number(self.name, value)
        if self.type is int:
            if not float(number).is_integer():
                raise PipelineError(
                    f"{self.name}={_fmt(number)} is not an integer: must be {self.allowed()}"
                )
            number = int(number)
        else:
            number = float(number)
        too_low = self.minimum is not None and (
            number < self.minimum if self.minimum_inclusive else number <= self.minimum
        )
        too_high = self.maximum is not None and number > self.maximum
        if too_low or too_high:
            raise PipelineError(
                f"{self.name}={_fmt(number)} is out of range: must be {self.allowed()}"
            )
        return number


@dataclass(frozen=True)
class Strategy:
    """A registered strategy.

    `indicator_params` are the parameters the indicator depends on: combos that
    share them share one indicator computation in the batch kernel.
    """

    name: str
    code: int
    description: str
    params: tuple[Param, ...]
    indicator_params: tuple[str, ...]
    indicator_label: str
    # Cross-parameter rule: returns an error message or None.
    check: Callable[[Mapping[str, Number]], str | None] | None = field(default=None)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in their canonical order (the combos-matrix column order)."""
        return tuple(p.name for p in self.params)

    @property
    def defaults(self) -> dict[str, Number]:
        """Default value of every parameter."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        """The parameter called `name`; PipelineError naming the allowed ones otherwise."""
        for p in self.params:
            if p.name == name:
                return p
        if not self.params:
            raise PipelineError(
                f"unknown parameter {name!r}: strategy {self.name!r} takes no parameters"
            )
        raise PipelineError(
            f"unknown parameter {name!r} for strategy {self.name!r}; "
            f"allowed: {', '.join(self.param_names)}"
        )


def _fmt(value: object) -> str:
    """Numbers as a user typed them: 30 rather than 30.0; strings quoted."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _to_number(name: str, value: object) -> Number:
    if isinstance(value, bool) or value is None:
        raise PipelineError(f"{name}={value!r} is not a number")
    if isinstance(value, str):
        text = value.strip()
        if not is_plain_number(text):  # int() would read `1_4` and Arabic-Indic digits as 14
            raise PipelineError(f"{name}={value!r} is not a number (ASCII digits, e.g. 14 or 2.5)")
        try:
            number: Number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise PipelineError(f"{name}={value!r} is not a number") from None
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise PipelineError(f"{name}={value!r} is not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise PipelineError(f"{name}={value!r} is not a finite number")
    return number


def _check_fast_slow(p: Mapping[str, Number]) -> str | None:
    if p["fast_period"] >= p["slow_period"]:
        return (
            f"fast_period={p['fast_period']} must be less than slow_period={p['slow_period']}"
        )
    return None


def _check_thresholds(p: Mapping[str, Number]) -> str | None:
    if p["oversold_threshold"] >= p["overbought_threshold"]:
        return (
            f"oversold_threshold={_fmt(p['oversold_threshold'])} must be less than "
            f"overbought_threshold={_fmt(p['overbought_threshold'])}"
        )
    return None


_REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            name="rsi",
            code=enums.STRAT_RSI,
            description="Buy when Wilder's RSI crosses below oversold, sell when it crosses above overbought.",
            params=(
                Param("rsi_period", int, 14, "RSI lookback in bars (Wilder smoothing)", minimum=2),
                Param("oversold_threshold", float, 30.0,
                      "buy when RSI crosses below this level", minimum=0, maximum=100),
                Param("overbought_threshold", float, 70.0,
                      "sell when RSI crosses above this level", minimum=0, maximum=100),
            ),
            indicator_params=("rsi_period",),
            indicator_label="rsi",
            check=_check_thresholds,
        ),
        Strategy(
            name="ma_crossover",
            code=enums.STRAT_MA_CROSSOVER,
            description="Buy when the fast SMA crosses above the slow SMA, sell when it crosses below.",
            params=(
                Param("fast_period", int, 10, "fast simple moving average length in bars", minimum=1),
                Param("slow_period", int, 30, "slow simple moving average length in bars", minimum=1),
            ),
            indicator_params=("fast_period", "slow_period"),
            indicator_label="fast_sma",
            check=_check_fast_slow,
        ),
        Strategy(
            name="bollinger",
            code=enums.STRAT_BOLLINGER,
            description="Buy when the close crosses below the lower band, sell when it crosses above the upper band.",
            params=(
                # A 1-bar band has zero width: the close can never cross it, so it could never trade.
                Param("bb_period", int, 20, "moving average / standard deviation window in bars",
                      minimum=2),
                Param("bb_std", float, 2.0, "band width in population standard deviations",
                      minimum=0, minimum_inclusive=False),
            ),
            indicator_params=("bb_period",),
            indicator_label="bollinger_band",
            check=None,
        ),
        Strategy(
            name="macd",
            code=enums.STRAT_MACD,
            description="Buy when the MACD line crosses above its signal line, sell when it crosses below.",
            params=(
                # TA-Lib's MACD refuses periods of 1, and a 1-bar signal line equals the MACD line:
                # it could never cross it.
                Param("fast_period", int, 12, "fast EMA length in bars", minimum=2),
                Param("slow_period", int, 26, "slow EMA length in bars", minimum=2),
                Param("signal_period", int, 9, "signal line EMA length in bars", minimum=2),
            ),
            indicator_params=("fast_period", "slow_period", "signal_period"),
            indicator_label="macd",
            check=_check_fast_slow,
        ),
        Strategy(
            name="buy_and_hold",
            code=enums.STRAT_BUY_AND_HOLD,
            description="Buy on the first bar and hold to the end.",
            params=(),
            indicator_params=(),
            indicator_label="close",
            check=None,
        ),
    )
}

STRATEGIES: Mapping[str, Strategy] = MappingProxyType(_REGISTRY)
"""Every registered strategy by name (read-only)."""

PARAM_COLUMNS: tuple[str, ...] = tuple(
    sorted({p.name for s in _REGISTRY.values() for p in s.params})
)
"""Every parameter name of every strategy, sorted: the fixed parameter columns of a results table."""

assert all(len(s.params) <= enums.N_PARAMS for s in _REGISTRY.values())
assert all(enums.STRATEGY_CODES[name] == s.code for name, s in _REGISTRY.items())


def strategy_names() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; PipelineError listing the choices otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise PipelineError(
            f"unknown strategy {name!r}; choose one of: {', '.join(strategy_names())}"
        ) from None


def indicator_label(strategy_name: str) -> str:
    """Name of the indicator value recorded in the strategy's trade log.

    rsi: the RSI; ma_crossover: the fast SMA; bollinger: the band that was
    crossed (lower on buy signals, upper on sell signals); macd: the MACD line;
    buy_and_hold: the close.
    """
    return get_strategy(strategy_name).indicator_label


def resolve_params(strategy_name: str, overrides: Mapping[str, object]) -> dict[str, Number]:
    """Defaults overlaid with `overrides`, typed and validated.

    Values may be numbers or numeric strings ("14", "2.5"). Raises
    PipelineError for an unknown strategy or parameter, a non-numeric value, a
    non-integer period, a value out of range or an invalid combination
    (fast_period >= slow_period, oversold_threshold >= overbought_threshold).
    """
    strategy = get_strategy(strategy_name)
    resolved: dict[str, Number] = dict(strategy.defaults)
    for name, value in overrides.items():
        resolved[name] = strategy.param(name).convert(value)
    if strategy.check is not None:
        problem = strategy.check(resolved)
        if problem is not None:
            raise PipelineError(f"invalid parameters for {strategy.name!r}: {problem}")
    return resolved


class ParamGrid(list):
    """The parameter sets of a sweep (a list of dicts) plus what was dropped.

    `dropped` counts the combinations that were valid value by value but not
    together (e.g. fast_period >= slow_period); `dropped_example` is the
    message of the first one, for reporting.
    """

    def __init__(self, items: Sequence[dict[str, Number]] = (), dropped: int = 0,
                 dropped_example: str | None = None) -> None:
        super().__init__(items)
        self.dropped = dropped
        self.dropped_example = dropped_example


def _decimal(text: str, spec: str) -> Decimal:
    if not is_plain_number(text):
        raise PipelineError(f"bad grid spec {spec!r}: {text.strip()!r} is not a number (ASCII digits)")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise PipelineError(f"bad grid spec {spec!r}: {text.strip()!r} is not a number") from None
    if not value.is_finite():
        raise PipelineError(f"bad grid spec {spec!r}: {text.strip()!r} is not a finite number")
    return value


def _spec_values(strategy: Strategy, spec: str) -> tuple[str, list[Number]]:
    if not isinstance(spec, str) or "=" not in spec:
        raise PipelineError(
            f"bad grid spec {spec!r}: expected name=start:stop:step or name=v1,v2,..."
        )
    name, _, body = spec.partition("=")
    name = name.strip()
    param = strategy.param(name)
    body = body.strip()
    if not body:
        raise PipelineError(f"bad grid spec {spec!r}: no values after '='")
    raw: list[Decimal]
    if ":" in body:
        parts = body.split(":")
        if len(parts) != 3:
            raise PipelineError(
                f"bad grid spec {spec!r}: a range is start:stop:step (three numbers)"
            )
        start, stop, step = (_decimal(p, spec) for p in parts)
        if step <= 0:
            raise PipelineError(f"bad grid spec {spec!r}: step must be > 0")
        if stop < start:
            raise PipelineError(f"bad grid spec {spec!r}: stop is below start")
        # Decimal arithmetic keeps 0.1-steps exact, so the stop is included
        # exactly when it lies on the grid.
        count = int((stop - start) // step) + 1
        if count > MAX_GRID_COMBOS:
            raise PipelineError(
                f"bad grid spec {spec!r}: {count} values, more than {MAX_GRID_COMBOS}"
            )
        raw = [start + i * step for i in range(count)]
    else:
        raw = [_decimal(p, spec) for p in body.split(",")]
    values: list[Number] = []
    for value in raw:
        text = format(value.normalize(), "f")
        try:
            converted = param.convert(text)
        except PipelineError as exc:
            raise PipelineError(f"bad grid spec {spec!r}: {exc}") from None
        if converted not in values:
            values.append(converted)
    return name, values


def parse_grid(strategy_name: str, specs: Sequence[str]) -> ParamGrid:
    """Parameter sets of a sweep, every one validated.

    Each spec is `name=start:stop:step` (the stop is included when it lies on
    the grid) or `name=v1,v2,...`; parameters without a spec take their
    defaults. Combinations that are invalid together (fast_period >=
    slow_period, oversold >= overbought) are dropped and counted in
    `ParamGrid.dropped`; if every combination is invalid, or a spec is
    malformed, names an unknown parameter or a value out of range, a
    PipelineError names it.
    """
    strategy = get_strategy(strategy_name)
    axes: dict[str, list[Number]] = {}
    for spec in specs:
        name, values = _spec_values(strategy, spec)
        if name in axes:
            raise PipelineError(f"bad grid spec {spec!r}: {name} is given more than once")
        axes[name] = values
    names = list(strategy.param_names)
    value_lists = [axes.get(n, [strategy.defaults[n]]) for n in names]
    total = math.prod(len(v) for v in value_lists)
    if total > MAX_GRID_COMBOS:
        raise PipelineError(
            f"the grid has {total} combinations, more than {MAX_GRID_COMBOS}; use larger steps"
        )
    grid = ParamGrid()
    for combo in itertools.product(*value_lists):
        params = dict(zip(names, combo, strict=True))
        problem = strategy.check(params) if strategy.check is not None else None
        if problem is None:
            grid.append(params)
        else:
            grid.dropped += 1
            if grid.dropped_example is None:
                grid.dropped_example = problem
    if not grid:
        raise PipelineError(
            f"no valid combination in the grid {list(specs)} for {strategy.name!r}: "
            f"{grid.dropped_example}"
        )
    return grid


def combos_matrix(
    strategy_name: str, params_list: Sequence[Mapping[str, object]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameter sets as the batch kernel's inputs.

    Returns `(combos, recompute, order)`: combos is (C x N_PARAMS) float64 with
    the parameters in `Strategy.param_names` order (unused slots 0), sorted so
    that combos sharing an indicator are adjacent; recompute[i] is True where
    row i needs a new indicator computation; row i is params_list[order[i]].
    Every parameter set is validated with resolve_params.
    """
    strategy = get_strategy(strategy_name)
    names = strategy.param_names
    n = len(params_list)
    combos = np.zeros((n, enums.N_PARAMS), dtype=np.float64)
    for i, params in enumerate(params_list):
        resolved = resolve_params(strategy_name, params)
        for j, name in enumerate(names):
            combos[i, j] = resolved[name]
    key_cols = [names.index(p) for p in strategy.indicator_params]
    rest_cols = [j for j in range(len(names)) if j not in key_cols]
    # np.lexsort sorts by the last key first: indicator columns decide, the others break ties.
    sort_keys = [combos[:, j] for j in reversed(rest_cols)] + [
        combos[:, j] for j in reversed(key_cols)
    ]
    order = np.lexsort(sort_keys) if sort_keys and n else np.arange(n)
    order = order.astype(np.int64)
    combos = np.ascontiguousarray(combos[order])
    recompute = np.ones(n, dtype=np.bool_)
    if n > 1:
        if key_cols:
            same = np.all(combos[1:, key_cols] == combos[:-1, key_cols], axis=1)
        else:
            same = np.ones(n - 1, dtype=np.bool_)
        recompute[1:] = ~same
    return combos, recompute, order


def warmup_bars(strategy_name: str, params: Mapping[str, object]) -> int:
    """Bars a symbol needs before the strategy's first signal can fire.

    rsi: rsi_period + 2; ma_crossover: slow_period + 1; bollinger: bb_period + 1;
    macd: slow_period + signal_period; buy_and_hold: 1. A symbol with fewer bars
    gets status too_few_bars and zero trades. (With fill=next_open one more bar
    is needed for the first fill.)
    """
    strategy = get_strategy(strategy_name)
    resolved = resolve_params(strategy_name, params)
    row = np.zeros(enums.N_PARAMS, dtype=np.float64)
    for j, name in enumerate(strategy.param_names):
        row[j] = resolved[name]
    return int(warmup_bars_nb(strategy.code, row))
