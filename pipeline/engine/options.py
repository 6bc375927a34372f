"""The one validation of what a user asks a run for, shared by the CLI, the notebook and the HTTP API.

Every check here runs before anything is read or written, and fails with a
`PipelineError` whose one-line message names the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import intervals
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # the CLI imports this module for every command: keep Numba out of its start-up
    from pipeline.engine.batch import RunConfig
    from pipeline.engine.strategies import Strategy

PLOT_SUFFIXES = (".html", ".png")
INTERVALS = (*intervals.NAMES, "auto")  # SPEC 4.2, plus `auto` (chosen per symbol)
# Starting cash: below a cent the kernel's unit arithmetic underflows; above a trillion the
# account's value overflows float precision in its fees and marks.
INITIAL_RANGE = (0.01, 1e12)
# Rows of a "best N" answer (--top, results top --n): more is a table to query (results sql).
MAX_TOP = 10_000
# Look-back windows (stats --hours, vacuum --keep-hours): up to a century.
MAX_HOURS = 876_000.0
# A plain number in ASCII: no `1_4`, no Arabic-Indic digits, no `nan`/`inf` (Python's int() and
# float() take all of these).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# The characters str.strip() removes around a value (the API's schema patterns allow them where a rule strips).
SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
# Sweeps estimated to take longer than this ask for --yes (bar-steps per second measured on the
# 2-core reference machine for the slowest built-in strategy, bollinger, rounded down).
SWEEP_CONFIRM_SECONDS = 60.0
SWEEP_MENTION_SECONDS = 1.0  # quicker sweeps start without a word
BAR_STEPS_PER_SECOND = 20e6
SECONDS_PER_BACKTEST = 100e-6  # shaping, ranking and writing one result row (measured: ~94 us)
# Objectives a walk-forward fold can rank by: those computed from the equity path alone (per-trade ones,
# profit factor and expectancy, need trades per fold, which the block sums do not keep).
WALK_FORWARD_OBJECTIVES = ("total_return", "sharpe", "sortino")
MAX_FOLDS = 50


def is_plain_number(text: str) -> bool:
    """Whether `text` is a number written with ASCII digits only (what every numeric option takes)."""
    return bool(_PLAIN_NUMBER.fullmatch(text.strip()))


def check_initial(initial: float) -> float:
    return check_number("--initial", initial, *INITIAL_RANGE)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """`["rsi_period=21", ...]` -> `{"rsi_period": "21"}` (values are checked by the strategy)."""
    params = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"--param {item!r} is not name=value (e.g. --param rsi_period=21)")
        name, value = item.split("=", 1)
        params[name.strip()] = value.strip()
    return params


def load_strategy_paths(paths: Sequence[Path | str] | None) -> None:
    """Register the user strategies in `--strategy-path` folders (and CRYPTOBT_STRATEGY_PATH's)."""
    from pipeline.engine import strategies

    strategies.add_strategy_paths(list(paths or []))


def check_top(top: int, option: str = "--top") -> int:
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise PipelineError(f"{option} {top!r} is out of range: an integer from 1 to {MAX_TOP}")
    return top


# Counts a user gives (trades, rows): far past any real run, and inside every integer type they meet.
MAX_COUNT = 2**31 - 1


def check_count(option: str, value: int, minimum: int = 0) -> int:
    """An integer count within [minimum, MAX_COUNT]: --min-trades of `results top`."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise PipelineError(f"{option} {value!r} is out of range: an integer from {minimum} to {MAX_COUNT:,}")
    return value


def check_number(option: str, value: float, minimum: float | None = None, maximum: float | None = None, *,
                 above: bool = False) -> float:
    """A finite number within the bounds (`above` makes the minimum exclusive): --hours, --keep-hours, --wait."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PipelineError(f"{option} {value!r} is not a finite number")
    if (minimum is not None and (value <= minimum if above else value < minimum)) or (
            maximum is not None and value > maximum):
        bounds = [f"{'>' if above else '>='} {minimum:g}" if minimum is not None else "",
                  f"<= {maximum:g}" if maximum is not None else ""]
        raise PipelineError(f"{option} {value!r} is out of range: a number {' and '.join(b for b in bounds if b)}")
    return float(value)


def check_plot(path: Path | str | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise PipelineError(f"--plot {path}: use a .html or .png file name")
    return path


def check_symbols(symbols: Sequence[str] | None, all_: bool) -> list[str] | None:
    if symbols and all_:
        raise PipelineError("use either --symbol or --all, not both")
    return list(symbols) if symbols else None


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise PipelineError(f"--interval {interval!r} is not allowed; use one of: {', '.join(INTERVALS)}")
    return interval


def check_walk_forward(walk_forward: int, train_ratio: float, anchored: bool, objective: str, flat_start: bool = False) -> None:
    """One-line errors for the walk-forward options (`pipeline.engine.walkforward`), before any work."""
    if isinstance(walk_forward, bool) or not isinstance(walk_forward, int) or not (
            walk_forward == 0 or 2 <= walk_forward <= MAX_FOLDS):
        raise PipelineError(f"--walk-forward {walk_forward!r} is out of range: 0 (off) or 2 to {MAX_FOLDS} folds")
    if not (isinstance(train_ratio, int | float) and not isinstance(train_ratio, bool)
            and math.isfinite(train_ratio) and 0 < train_ratio < 1):
        raise PipelineError(f"--train-ratio {train_ratio!r} is out of range: a share between 0 and 1 (0.7 trains "
                            "on the first 70 % of each fold)")
    if walk_forward and objective not in WALK_FORWARD_OBJECTIVES:
        raise PipelineError(f"--objective {objective} cannot rank a walk-forward fold (it needs trades per fold); "
                            f"use one of: {', '.join(WALK_FORWARD_OBJECTIVES)}")
    if anchored and not walk_forward:
        raise PipelineError("--anchored needs --walk-forward K")
    if not isinstance(flat_start, bool):
        raise PipelineError(f"--walk-forward-flat-start {flat_start!r} is not allowed: true or false")
    if flat_start and not walk_forward:
        raise PipelineError("--walk-forward-flat-start needs --walk-forward K")


def resolve_strategy(name: str) -> Strategy:
    """The strategy a user names, resolved once at a run's edge (the CLI, the API, the notebook, a flow):
    from here the Strategy object travels, never its name. PipelineError listing the choices otherwise."""
    from pipeline.engine import strategies

    return strategies.get_strategy(name)


def run_request(
    strategy: Strategy,
    params: Mapping[str, Any] | list[dict[str, Any]] | None,
    symbols: Sequence[str] | None = None,
    all_: bool = False,
    interval: str = "1h",
    **config: Any,
) -> tuple[RunConfig, list[str] | None, str]:
    """Everything a backtest or sweep asks for, checked together (the CLI's and the API's one path):
    the run's config, its symbols (None = all) and its interval. `config` goes to `run_config`."""
    chosen = check_symbols(symbols, all_)
    check_interval(interval)
    return run_config(strategy, params, **config), chosen, interval


def strategy_catalog() -> list[dict[str, Any]]:
    """Every strategy with its parameters, defaults and allowed ranges, from the registry."""
    from pipeline.engine import strategies

    rows = []
    for name in strategies.strategy_names():
        strategy = strategies.STRATEGIES[name]
        rows.append({"name": name, "description": strategy.description, "origin": strategy.origin,
                     "columns": list(strategy.columns), "parameters": [
            {"name": p.name, "type": p.type.__name__, "default": p.default, "allowed": p.allowed(),
             "minimum": p.minimum, "maximum": p.maximum, "minimum_inclusive": p.minimum_inclusive,
             "description": p.description} for p in strategy.params]})
    return rows


def run_config(
    strategy: Strategy,
    params: Mapping[str, Any] | list[dict[str, Any]] | None,
    *,
    timerange: str | None = None,
    fee: float = 0.1,
    fill: str = "close",
    initial: float = 1000.0,
    trades: bool = False,
    annualization: str = "observed",
    min_bar_coverage: float = 0.0,
    sl: float = 0.0,
    tp: float = 0.0,
    trail: bool = False,
    size: float = 1.0,
    slippage: float = 0.0,
    objective: str = "total_return",
    min_trades: int = 5,
    pbo_blocks: int = 16,
    walk_forward: int = 0,
    train_ratio: float = 0.7,
    anchored: bool = False,
    walk_forward_flat_start: bool = False,
) -> RunConfig:
    """Strategy, parameters, time range, fee, fill, cash, stops, size and slippage, checked together:
    the run's config. `sl`, `tp` and `slippage` are percentages (0 = none), `size` a share of equity."""
    from pipeline.engine import batch as engine
    from pipeline.lake import reader

    start, end = reader.parse_timerange(timerange)
    return engine.make_config(strategy, params if isinstance(params, list) else dict(params or {}),
                              fee_pct=fee, fill=fill, initial=initial, trades=trades,
                              timerange_start=start, timerange_end=end, annualization=annualization,
                              min_bar_coverage=min_bar_coverage, sl=sl, tp=tp, trail=trail, size=size,
                              slippage=slippage, objective=objective, min_trades=min_trades, pbo_blocks=pbo_blocks,
                              walk_forward=walk_forward, train_ratio=train_ratio, anchored=anchored,
                              walk_forward_flat_start=walk_forward_flat_start)


def parse_grid(strategy: Strategy, specs: Sequence[str], samples: int | None = None, seed: int = 0) -> Any:
    """A sweep's parameter sets from `-g` specs: the strategy's parameters and the run parameters
    sl, tp, trail, size, slippage (`-g sl=2:10:2`), each axis a name=start:stop:step or name=v1,v2;
    `samples` of them drawn at random (reproducible from `seed`) when given."""
    from pipeline.engine import batch as engine
    from pipeline.engine import strategies

    return strategies.parse_grid(strategy, specs, common=engine.EXECUTION_PARAMS, samples=samples, seed=seed)
