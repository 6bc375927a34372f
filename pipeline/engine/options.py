"""The one validation of what a user asks a run for, shared by the CLI, the notebook and the HTTP API,
and the run's config it yields.

Every check here runs before anything is read or written, and fails with a
`PipelineError` whose one-line message names the bad value and what is allowed.
The run options themselves (defaults, bounds, help) are `pipeline.core.run_options.OPTIONS`;
`RunConfig` and `Execution` take their fields from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import run_options
from pipeline.core.errors import PipelineError
from pipeline.core.run_options import CONFIG_OPTIONS, PER_SET

if TYPE_CHECKING:  # the CLI imports this module for every command: keep Numba out of its start-up
    from pipeline.engine.strategies import Strategy

PLOT_SUFFIXES = (".html", ".png")
# Rows of a "best N" answer (--top, results top --n): more is a table to query (results sql).
MAX_TOP = 10_000
# Look-back windows (stats --hours, vacuum --keep-hours): up to a century.
MAX_HOURS = 876_000.0
# Sweeps estimated to take longer than this ask for --yes (bar-steps per second measured on the
# 2-core reference machine for the slowest built-in strategy, bollinger, rounded down).
SWEEP_CONFIRM_SECONDS = 60.0
SWEEP_MENTION_SECONDS = 1.0  # quicker sweeps start without a word
BAR_STEPS_PER_SECOND = 20e6
SECONDS_PER_BACKTEST = 100e-6  # shaping, ranking and writing one result row (measured: ~94 us)


class _Execution:
    """How one parameter set's orders execute (SPEC 4.1): stops, sizing, slippage.

    Percentages as the CLI takes them (`sl_pct=5` is a stop 5 % below the entry); these
    are the result fields, the results columns and part of the cache key. Its fields are the
    per-set run options (`run_options.PER_SET`).
    """

    @property
    def has_stops(self) -> bool:
        return self.sl_pct > 0.0 or self.tp_pct > 0.0

    def row(self) -> Any:
        """The kernels' (N_EXECUTION,) row, fractions at the EX_* indices."""
        import numpy as np

        from pipeline.engine.kernels import enums

        row = np.empty(enums.N_EXECUTION)
        row[enums.EX_SL] = self.sl_pct / 100.0
        row[enums.EX_TP] = self.tp_pct / 100.0
        row[enums.EX_TRAIL] = 1.0 if self.trail else 0.0
        row[enums.EX_SIZE] = self.size
        row[enums.EX_SLIPPAGE] = self.slippage_pct / 100.0
        row[enums.EX_LEVERAGE] = self.leverage
        row[enums.EX_DIRECTION] = enums.DIRECTIONS[self.direction]
        return row

    def fields(self) -> dict[str, Any]:
        """Result fields (and cache-key fields): sl_pct, tp_pct, trail, size, slippage_pct."""
        return {o.record_field: getattr(self, o.field) for o in PER_SET}

    @classmethod
    def of(cls, result: dict[str, Any]) -> Execution:
        """The execution a result record was computed with (records without the fields: the defaults)."""
        return cls(**{o.field: result[o.record_field] for o in PER_SET if result.get(o.record_field) is not None})


Execution = dataclasses.make_dataclass(
    "Execution", [(o.field, o.type, dataclasses.field(default=o.default)) for o in PER_SET],
    bases=(_Execution,), frozen=True)
Execution.__module__, Execution.__doc__ = __name__, _Execution.__doc__  # pickles by name
DEFAULT_EXECUTION = Execution()
# Each per-set option's result field (sl -> sl_pct).
EXECUTION_FIELDS = {o.name: o.record_field for o in PER_SET}


def set_parameters(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result's parameters as a sweep names them: the strategy's, then the run parameters
    (sl, tp, trail, size, slippage) that any of `results` sets to other than the default."""
    default = DEFAULT_EXECUTION.fields()
    used = [(name, field) for name, field in EXECUTION_FIELDS.items()
            if any(r.get(field, default[field]) != default[field] for r in results)]
    return [{**r["params"], **{name: r.get(field, default[field]) for name, field in used}} for r in results]


class _RunConfig:
    """What is common to every result of a run (SPEC section 4's common parameters): the strategy,
    its parameter sets with their executions, the time range, and every run option of
    `run_options.CONFIG_OPTIONS` as a field of the same name (fee as `fee_pct`)."""

    @property
    def fee_frac(self) -> float:
        return self.fee_pct / 100.0

    def execution(self, c: int) -> Execution:
        """The execution of parameter set c."""
        return self.executions[c] if self.executions else DEFAULT_EXECUTION

    @property
    def sets(self) -> list[tuple[dict[str, Any], Execution]]:
        """(strategy parameters, execution) of every parameter set, in order."""
        return [(params, self.execution(c)) for c, params in enumerate(self.params_list)]

    @property
    def has_stops(self) -> bool:
        return any(e.has_stops for e in self.executions)

    def key_fields(self, c: int) -> dict[str, Any]:
        """The cache key's run option fields of parameter set c (the interval is each symbol's)."""
        return {"timerange_start": self.timerange_start, "timerange_end": self.timerange_end,
                **{o.record_field: getattr(self, o.field) for o in CONFIG_OPTIONS
                   if o.in_cache_key and not o.per_set and o.name != "timerange"},
                **self.execution(c).fields()}

    def futures_fields(self) -> dict[str, Any]:
        """The result fields of the futures options kept per run (margin, mmr, tiers)."""
        return {o.record_field: getattr(self, o.field) for o in run_options.FUTURES_RUN}

    @property
    def stats_request(self) -> Any:
        """A sweep's statistics as asked (`pipeline.engine.sweep_stats.StatsRequest`), or None."""
        if not getattr(self, "stats", None):
            return None
        return run_options.StatsRequest(stats=tuple(self.stats.split(",")), benchmark=self.benchmark, reps=self.reps,
                            seed=self.seed, alpha=self.alpha, block_size=self.block_size,
                            sets_tried=len(self.params_list))

    def sliced(self, first: int, stop: int) -> RunConfig:
        """The same run over parameter sets first..stop-1."""
        return dataclasses.replace(self, params_list=self.params_list[first:stop],
                                   executions=self.executions[first:stop] if self.executions else ())


RunConfig = dataclasses.make_dataclass("RunConfig", [
    ("strategy", Any),  # a Strategy, resolved at the run's edge (resolve_strategy)
    ("params_list", list[dict[str, Any]]),
    *((o.field, o.type, dataclasses.field(default=o.default)) for o in CONFIG_OPTIONS
      if not o.per_set and o.name != "timerange"),
    ("timerange_start", datetime | None, dataclasses.field(default=None)),
    ("timerange_end", datetime | None, dataclasses.field(default=None)),
    ("grid_dropped", int, dataclasses.field(default=0)),
    ("extra", dict[str, Any], dataclasses.field(default_factory=dict)),
    # Stops, size and slippage of each parameter set (parallel to params_list; empty = defaults).
    ("executions", tuple[Execution, ...], dataclasses.field(default=())),
    # Futures: the maintenance-margin tier table (pipeline.engine.tiers.TierTable) `tiers` names.
    ("tier_table", Any, dataclasses.field(default=None, compare=False, repr=False)),
], bases=(_RunConfig,), frozen=True)
RunConfig.__module__, RunConfig.__doc__ = __name__, _RunConfig.__doc__  # pickles by name


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
    return run_options.BY_NAME["interval"].check(interval)


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


def run_config(strategy: Strategy, params: Mapping[str, Any] | list[dict[str, Any]] | None = None,
               **given: Any) -> RunConfig:
    """The run's config from the strategy, its parameters (a dict, or a list of sets: a sweep) and any
    run options of `run_options.CONFIG_OPTIONS` by name (fee, fill, sl, walk_forward, ...), each
    checked by the table's rule, before any work.

    A parameter set may also hold per-set options (a sweep's `-g sl=2:10:2`); the options `sl` ..
    `slippage` set them for every set (giving one both ways is an error).
    """
    from pipeline.lake import reader

    unknown = [name for name in given if name not in _CONFIG_NAMES]
    if unknown:
        raise PipelineError(f"unknown run option {unknown[0]!r}; use one of: {', '.join(_CONFIG_NAMES)}")
    values = {o.name: given.get(o.name, o.default) for o in CONFIG_OPTIONS}
    start, end = reader.parse_timerange(values.pop("timerange"))
    params_list, executions, dropped = _parameter_sets(strategy, params, values)
    checked = {o.field: o.check(values[o.name]) for o in CONFIG_OPTIONS if not o.per_set and o.name != "timerange"}
    _check_walk_forward(checked)
    _check_stats(checked, params_list)
    table = _check_futures(strategy, checked, values, executions)
    _check_detail(checked, executions)
    return RunConfig(strategy, params_list, **checked, timerange_start=start, timerange_end=end,
                     grid_dropped=dropped, tier_table=table,
                     executions=() if all(e == DEFAULT_EXECUTION for e in executions) else tuple(executions))


_CONFIG_NAMES = tuple(o.name for o in CONFIG_OPTIONS)


def _parameter_sets(strategy: Strategy, params: Mapping[str, Any] | list[dict[str, Any]] | None,
                    values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Execution], int]:
    """The strategy's parameter sets, resolved, each with its execution (the per-set options of the
    run, or of the set), and how many sets were dropped (a trailing stop without a stop-loss)."""
    from pipeline.engine import strategies

    raw = params if isinstance(params, list) else [dict(params or {})]
    dropped = getattr(params, "dropped", 0)
    if not raw:
        raise PipelineError("the parameter grid is empty")
    given = {p.name: int(values[p.name]) if isinstance(values[p.name], bool) else values[p.name]
             for p in strategies.EXECUTION_PARAMS}
    base = {p.name: p.convert(given[p.name], option=f"--{p.name}") for p in strategies.EXECUTION_PARAMS}
    params_list, executions = [], []
    trail_problem = None
    for one in raw:
        chosen = dict(base)
        for p in strategies.EXECUTION_PARAMS:
            if p.name in one:
                if base[p.name] != p.default:
                    raise PipelineError(f"{p.name} is given twice: --{p.name} {given[p.name]!r} and "
                                        f"{p.name}={one[p.name]!r} in the parameters; give one")
                chosen[p.name] = p.convert(one[p.name])
        execution = Execution(**{o.field: o.type(chosen[o.name]) for o in PER_SET})
        if execution.trail and execution.sl_pct == 0.0:
            # A sweep drops such a set (counted, like fast >= slow); a run of one refuses it.
            trail_problem = "--trail needs a stop-loss to trail (--sl PCT, or sl in the grid)"
            dropped += 1
            continue
        params_list.append(strategies.resolve_params(
            strategy, {k: v for k, v in one.items() if k not in strategies.EXECUTION_NAMES}))
        executions.append(execution)
    if not params_list:
        raise PipelineError(trail_problem or "the parameter grid is empty")
    return params_list, executions, dropped


def _check_futures(strategy: Strategy, checked: dict[str, Any], values: dict[str, Any],
                   executions: list[Execution]) -> Any:
    """The rules between the futures options (SPEC 4.3); the tier table a futures run uses (None on spot).
    `checked["tiers"]` becomes the table's identity (file name and content hash: part of the cache key)."""
    from pipeline.engine import tiers

    shorted = next((e.direction for e in executions if e.direction != "long"), None)
    if checked["market"] != "futures":
        given = [o for o in CONFIG_OPTIONS if o.futures and values[o.name] != o.default]
        levered = next((e.leverage for e in executions if e.leverage != 1.0), None)
        if given or levered is not None or shorted is not None:
            flag = (f"{given[0].flag} {values[given[0].name]}" if given else
                    f"leverage {levered:g}" if levered is not None else f"direction {shorted}")
            raise PipelineError(f"{flag} is a futures option: add --market futures (spot is long only, unlevered)")
        return None
    if shorted is not None and strategy.short_rule is None:
        raise PipelineError(f"--direction {shorted}: strategy {strategy.name!r} returns no short "
                            "signals (give its file short_signals(...) or SHORT_RULE = \"mirror\")")
    table = tiers.load(checked["tiers"], checked["mmr"])
    checked["tiers"] = table.identity
    return table


def _check_detail(checked: dict[str, Any], executions: list[Execution]) -> None:
    """--detail decides stops (and a perpetual's liquidations) on finer bars: a spot run without a stop would
    change nothing. Its interval against the run's: `check_detail`."""
    detail = checked["detail"]
    if detail is None:
        return
    if checked["market"] != "futures" and not any(e.has_stops for e in executions):
        raise PipelineError(f"--detail {detail} decides stops on finer bars: add --sl or --tp (or sl/tp in the grid)"
                            " or run perpetuals (--market futures: their liquidations too)")


def check_detail(detail: str | None, interval: str) -> None:
    """--detail must be finer than the run's interval (`interval`, a symbol's under --interval auto) and tile it."""
    from pipeline.core import intervals

    if detail is None:
        return
    finer = [n for n in intervals.NAMES if n != interval and intervals.divides(n, interval)]
    if detail not in finer:
        raise PipelineError(f"--detail {detail} is not finer than the run's {interval} bars: use a finer interval "
                            f"that tiles them ({', '.join(finer) or 'none'})")


MAX_BOOTSTRAP_MEANS = 200_000_000  # 1.5 GiB of doubles
MAX_MCS_SETS = 15_000  # its pair weights: 1.7 GiB


def _check_stats(checked: dict[str, Any], params_list: list[dict[str, Any]]) -> None:
    """--stats names known statistics (kept in their canonical order) and a sweep of two sets or more."""
    names = run_options.parse_stats(checked["stats"])
    checked["stats"] = ",".join(names) or None
    n_sets = len(params_list)
    if names and n_sets < 2:
        raise PipelineError(f"--stats needs a sweep of at least two parameter sets; this grid has {n_sets}")
    # What one symbol's statistics hold at once: the bootstrap means (reps x sets) and the MCS's pair
    # weights (sets x sets), in doubles. Refused here, before any work, where they pass a few GiB.
    if names and checked["reps"] * n_sets > MAX_BOOTSTRAP_MEANS:
        raise PipelineError(f"--reps {checked['reps']:,} x {n_sets:,} sets needs {checked['reps'] * n_sets * 8 / 2**30:.1f} "
                            f"GiB of bootstrap means per symbol; keep reps x sets <= {MAX_BOOTSTRAP_MEANS:,}")
    if "mcs" in names and n_sets > MAX_MCS_SETS:
        raise PipelineError(f"--stats mcs over {n_sets:,} sets needs {n_sets**2 * 8 / 2**30:.1f} GiB for its pair "
                            f"weights; sweep at most {MAX_MCS_SETS:,} sets with mcs, or leave mcs out")


def _check_walk_forward(checked: dict[str, Any]) -> None:
    """The rules between walk-forward options (each alone passed its own)."""
    walk_forward = checked["walk_forward"]
    if walk_forward and checked["objective"] not in run_options.WALK_FORWARD_OBJECTIVES:
        raise PipelineError(f"--objective {checked['objective']} cannot rank a walk-forward fold (it needs trades "
                            f"per fold); use one of: {', '.join(run_options.WALK_FORWARD_OBJECTIVES)}")
    if checked["anchored"] and not walk_forward:
        raise PipelineError("--anchored needs --walk-forward K")
    if checked["walk_forward_flat_start"] and not walk_forward:
        raise PipelineError("--walk-forward-flat-start needs --walk-forward K")


def parse_grid(strategy: Strategy, specs: Sequence[str], samples: int | None = None, seed: int = 0) -> Any:
    """A sweep's parameter sets from `-g` specs: the strategy's parameters and the run parameters
    sl, tp, trail, size, slippage (`-g sl=2:10:2`), each axis a name=start:stop:step or name=v1,v2;
    `samples` of them drawn at random (reproducible from `seed`) when given."""
    from pipeline.engine import strategies

    seed = run_options.BY_NAME["seed"].check(seed)
    return strategies.parse_grid(strategy, specs, common=strategies.EXECUTION_PARAMS, samples=samples, seed=seed)
