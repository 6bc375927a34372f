"""The run options, each declared once: name, type, default, bounds or choices, help, and whether it
enters the cache key.

Everything else is derived from `OPTIONS`: the Typer options of `backtest`, `sweep` and `portfolio`
(pipeline.cli.run_options), the API's request models (pipeline.api.models), the notebook API's
keyword arguments, `RunConfig`'s fields and the one validation (pipeline.engine.options), the run
parameters a sweep may vary (pipeline.engine.strategies.EXECUTION_PARAMS) and the cache key's
fields (pipeline.store.cache). Adding an option is one entry here plus its use in the kernel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pipeline.core import intervals
from pipeline.core.errors import PipelineError
from pipeline.core.markets import MARKETS

INTERVALS = (*intervals.NAMES, "auto")  # SPEC 4.2, plus `auto` (chosen per symbol)
FILLS = ("close", "next_open")
ANNUALIZATIONS = ("observed", "calendar")
DIRECTIONS = ("long", "short", "both")
MARGINS = ("isolated", "cross")
# What a sweep's statistics (--stats) test its sets against: a flat account, or the symbol held.
BENCHMARKS = ("zero", "buy_and_hold")
STAT_NAMES = ("spa", "stepm", "mcs", "bootstrap", "psr", "haircut")
MAX_REPS = 100_000
# What "best" means in a sweep: the objective's result field, higher is better.
OBJECTIVES = {"total_return": "total_return_pct", "sharpe": "sharpe", "sortino": "sortino", "calmar": "calmar",
              "profit_factor": "profit_factor", "expectancy": "expectancy"}
# Objectives a walk-forward fold can rank by: those computed from the equity path alone (per-trade ones,
# profit factor and expectancy, need trades per fold, which the block sums do not keep).
WALK_FORWARD_OBJECTIVES = ("total_return", "sharpe", "sortino")
MAX_FOLDS = 50
# Starting cash: below a cent the kernel's unit arithmetic underflows; above a trillion the
# account's value overflows float precision in its fees and marks.
INITIAL_RANGE = (0.01, 1e12)
# The commands whose runs take options (a run option names those it belongs to).
RUN_COMMANDS = ("backtest", "sweep", "portfolio")
_ALL = frozenset(RUN_COMMANDS)
_SINGLE = frozenset({"backtest", "sweep"})  # one strategy run per symbol (not one account)
_SWEEP = frozenset({"sweep"})


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class RunOption:
    """One option of a run. `name` is its keyword (run_config, the notebook, the API's field) and,
    with dashes, its CLI flag."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str
    commands: frozenset[str] = _ALL  # the CLI commands (and API requests) that take it
    # Numbers: bounds (inclusive unless said), values allowed besides them (walk_forward 0 = off),
    # a step (pbo_blocks even); `noun` and `note` word the one-line error ("a percentage >= 0 ...").
    minimum: float | None = None
    maximum: float | None = None
    minimum_inclusive: bool = True
    maximum_inclusive: bool = True
    also: tuple[Any, ...] = ()
    multiple_of: int | None = None
    noun: str = ""
    note: str = ""
    verdict: str = "is out of range"
    # Text: the values allowed (none = any text the option's own parser takes, e.g. timerange), or a
    # pattern it must match whole (`noun` says what it is).
    choices: tuple[str, ...] = ()
    pattern: str = ""
    nullable: bool = False  # None is allowed (timerange: none = the whole history)
    # Where it goes: a RunConfig field (interval is the request's, chosen per symbol), named
    # `attribute` there and `record` in result records and cache keys when not `name`.
    in_config: bool = True
    attribute: str = ""
    record: str = ""
    # Its value decides result numbers: it is part of every cache key (as `record`).
    in_cache_key: bool = False
    # A sweep may vary it like a strategy parameter (-g sl=2:10:2): kept per parameter set.
    per_set: bool = False
    # (command, help) where a command reads it otherwise (portfolio: one account's interval and cash).
    helps: tuple[tuple[str, str], ...] = ()
    # A futures option (SPEC 4.3): anything but its default needs --market futures.
    futures: bool = False
    # Its column header in the CLI's results tables (per-set options; default: its name).
    header: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field(self) -> str:
        """Its RunConfig field (per-set options: its Execution field)."""
        return self.attribute or self.name

    @property
    def record_field(self) -> str:
        """Its field in result records and cache keys."""
        return self.record or self.field

    def help_for(self, command: str) -> str:
        """Its help text on `command` (backtest, sweep, portfolio)."""
        return dict(self.helps).get(command, self.help)

    def allowed(self) -> str:
        """What the one-line error says is allowed: 'a percentage >= 0 and < 100 (0.1 means 0.1 %)'."""
        if self.choices:
            return "use one of: " + ", ".join(self.choices)
        if self.pattern:
            return self.noun
        if self.type is bool:
            return "true or false"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>=' if self.minimum_inclusive else '>'} {_number(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"{'<=' if self.maximum_inclusive else '<'} {_number(self.maximum)}")
        noun = self.noun or ("an even integer" if self.multiple_of == 2 else
                             "an integer" if self.type is int else "a number")
        besides = "".join(f"{_number(v)} (off) or " for v in self.also)
        return f"{besides}{noun} {' and '.join(bounds)}{self.note}".rstrip()

    def check(self, value: Any) -> Any:
        """`value` if this option allows it (floats as float), else a PipelineError naming it."""
        if value is None and self.nullable:
            return None
        if self.type is bool:
            if not isinstance(value, bool):
                raise PipelineError(f"{self.flag} {value!r} is not allowed: true or false")
            return value
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices) or (
                    self.pattern and not re.fullmatch(self.pattern, value)):
                raise PipelineError(f"{self.flag} {value!r} is not allowed; {self.allowed()}")
            return value
        if not self._allows(value):
            raise PipelineError(f"{self.flag} {value!r} {self.verdict}: {self.allowed()}")
        return float(value) if self.type is float else value

    def _allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.type is int else int | float):
            return False
        if not math.isfinite(value):
            return False
        if value in self.also:
            return True
        low = self.minimum is None or (value >= self.minimum if self.minimum_inclusive else value > self.minimum)
        high = self.maximum is None or (value <= self.maximum if self.maximum_inclusive else value < self.maximum)
        return low and high and (self.multiple_of is None or value % self.multiple_of == 0)

    def json_schema(self) -> dict[str, Any]:
        """Its rule as JSON Schema keywords (the API documents what `check` enforces)."""
        if self.choices:
            return {"enum": list(self.choices)}
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["minimum" if self.minimum_inclusive else "exclusiveMinimum"] = self.minimum
        if self.maximum is not None:
            out["maximum" if self.maximum_inclusive else "exclusiveMaximum"] = self.maximum
        if self.multiple_of is not None:
            out["multipleOf"] = self.multiple_of
        if self.also:
            return {"anyOf": [*({"const": v} for v in self.also), out]}
        return out


INTERVAL_HELP = ("1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w (a symbol is read at its own interval or a coarser one, "
                 "aggregated on read when the lake does not store it) or auto: per symbol, 1h when its hourly "
                 "bars in range span at most 50,000 hours, else 1d; a symbol whose own bars are coarser than 1h "
                 "keeps its own interval.")

# In the order the commands' --help and the API's schema list them.
OPTIONS: tuple[RunOption, ...] = (
    RunOption("interval", str, "1h", INTERVAL_HELP, choices=INTERVALS, in_config=False, in_cache_key=True,
              helps=(("portfolio", "1m .. 1w (see backtest --help) or auto (the coarsest interval any symbol "
                                   "needs: one account needs one grid)."),)),
    RunOption("timerange", str, None, "YYYYMMDD-YYYYMMDD, either side open.", nullable=True, in_cache_key=True),
    RunOption("fee", float, 0.1, "Fee in percent per fill (0.1 = 0.1 %).", minimum=0, maximum=100,
              maximum_inclusive=False, noun="a percentage", note=" (0.1 means 0.1 %)", attribute="fee_pct",
              in_cache_key=True),
    RunOption("fill", str, "close", "close (signal bar) or next_open.", choices=FILLS, in_cache_key=True),
    RunOption("initial", float, 1000.0, "Starting cash.", minimum=INITIAL_RANGE[0], maximum=INITIAL_RANGE[1],
              record="initial_investment", in_cache_key=True,
              helps=(("portfolio", "Starting cash of the one account."),)),
    RunOption("trades", bool, False, "Include each result's trade log (fills) and round trips.",
              commands=frozenset({"backtest"})),
    RunOption("annualization", str, "observed", "Sharpe and its kin: observed (each symbol's bars a year) or "
              "calendar (8,760 for 1h).", choices=ANNUALIZATIONS, in_cache_key=True),
    RunOption("min_bar_coverage", float, 0.0, "Drop bars built from less than this share of their interval's "
              "hours (0.5: a daily bar needs 12 hours); 0 keeps all.", minimum=0, maximum=1, noun="a share",
              note=" (0.5 drops daily bars built from fewer than 12 hours)", in_cache_key=True),
    # SPEC 4.1's run parameters: set for a whole run (--sl 5) or varied in a sweep like a strategy's own.
    RunOption("sl", float, 0.0, "Stop-loss in percent below the entry fill price (0 = none); checked from the "
              "bar after the entry against its open, high and low.", commands=_SINGLE, minimum=0, maximum=100,
              maximum_inclusive=False, attribute="sl_pct", in_cache_key=True, per_set=True, header="sl %"),
    RunOption("tp", float, 0.0, "Take-profit in percent above the entry fill price (0 = none).", commands=_SINGLE,
              minimum=0, maximum=1e6, attribute="tp_pct", in_cache_key=True, per_set=True, header="tp %"),
    RunOption("trail", bool, False, "The stop-loss trails the highest high since the entry (needs --sl).",
              commands=_SINGLE, in_cache_key=True, per_set=True),
    RunOption("size", float, 1.0, "Share of the equity committed at each entry, in (0, 1] (1 = all in).",
              commands=_SINGLE, minimum=0, minimum_inclusive=False, maximum=1, in_cache_key=True, per_set=True),
    RunOption("slippage", float, 0.0, "Percent against the trader on every market fill (close and next_open "
              "fills; stop fills get none).", minimum=0, maximum=100, maximum_inclusive=False,
              attribute="slippage_pct", in_cache_key=True, per_set=True, header="slip %"),
    RunOption("detail", str, None, "Replay each held bar's finer bars at this interval (finer than the run's, "
              "stored or built by the lake) to decide its stop-loss, trailing stop and take-profit: the first "
              "finer bar reaching a level decides.", commands=_SINGLE, choices=intervals.NAMES, nullable=True,
              in_cache_key=True),
    # SPEC 4.3: perpetual futures. Each needs --market futures (spot is long only, unlevered).
    RunOption("market", str, "spot", "spot, or futures: the symbols' USDT-margined perpetuals (their own series, "
              "with funding and mark prices).", choices=MARKETS, in_cache_key=True),
    RunOption("direction", str, "long", "Futures: long, short, or both (a built-in reverses at each signal; a "
              "strategy file's own enter_short/exit_short decide).", choices=DIRECTIONS,
              in_cache_key=True, per_set=True, futures=True),
    RunOption("leverage", float, 1.0, "Futures: notional / margin at each entry, 1 .. 125.",
              minimum=1, maximum=125, in_cache_key=True, per_set=True, futures=True),
    RunOption("margin", str, "isolated", "Futures: isolated (a position's own margin backs it) or cross (the "
              "account's cash backs it too, and goes with a liquidation).", choices=MARGINS,
              in_cache_key=True, futures=True,
              helps=(("portfolio", "Futures: isolated (each position's own margin backs it, liquidated alone) or "
                                   "cross (the account's equity backs every position; the account is liquidated "
                                   "when it falls to their maintenance margins)."),)),
    RunOption("mmr", float, None, "Futures: a flat maintenance margin rate (cum 0) for every symbol, instead of "
              "the tier table (0.005 = 0.5 %).", minimum=0, maximum=1, minimum_inclusive=False,
              maximum_inclusive=False, noun="a rate", note=" (0.005 = 0.5 %)", nullable=True, in_cache_key=True,
              futures=True),
    RunOption("tiers", str, None, "Futures: a maintenance-margin tier table in ccxt's layout (freqtrade's "
              "binance_leverage_tiers.json); default: the dated Binance snapshot cryptobt ships.",
              nullable=True, in_cache_key=True, futures=True),
    # A sweep's ranking and statistics: no result field depends on them, so no cache key does.
    RunOption("objective", str, "total_return", "What best means: total_return, sharpe, sortino, calmar, "
              "profit_factor or expectancy.", commands=_SWEEP, choices=tuple(OBJECTIVES)),
    RunOption("min_trades", int, 5, "Sets with fewer entries than this never win (they rank after every set "
              "that has them).", commands=_SWEEP, minimum=0),
    RunOption("pbo_blocks", int, 16, "Time blocks of the PBO's cross-validation (even, 2..24; 0 = no PBO).",
              commands=_SWEEP, minimum=0, maximum=24, multiple_of=2, verdict="is not allowed",
              noun="an even number", note=" (0 = off)"),
    RunOption("walk_forward", int, 0, "Cut each symbol's bars into K folds; in each, the best set on the train "
              "part (by --objective) is judged on the test part that follows (0 = off).", commands=_SWEEP,
              minimum=2, maximum=MAX_FOLDS, also=(0,), noun="a number of folds"),
    RunOption("train_ratio", float, 0.7, "Share of each fold that trains (walk-forward).", commands=_SWEEP,
              minimum=0, maximum=1, minimum_inclusive=False, maximum_inclusive=False, noun="a share",
              note=" (0.7 trains on the first 70 % of each fold)"),
    RunOption("anchored", bool, False, "Walk-forward trains from the first bar up to each test part.",
              commands=_SWEEP),
    RunOption("walk_forward_flat_start", bool, False, "Walk-forward test parts start flat with fresh cash (no "
              "position carried in from the full-history path).", commands=_SWEEP),
    # A sweep's statistics over its sets' daily returns (issue 30, docs/statistics.md).
    RunOption("stats", str, None, "Statistics over every set's daily returns, a comma list of spa, stepm, mcs, "
              "bootstrap, psr, haircut (or all): is the best set better than the benchmark after the search, and "
              "what is its Sharpe ratio worth (docs/statistics.md).", commands=_SWEEP, nullable=True),
    RunOption("benchmark", str, "zero", "What --stats tests the sets against: zero (staying flat) or "
              "buy_and_hold (the symbol bought at the first simulated bar's close).", commands=_SWEEP,
              choices=BENCHMARKS),
    RunOption("reps", int, 1000, "Bootstrap repetitions of --stats.", commands=_SWEEP, minimum=1,
              maximum=MAX_REPS, noun="a number of repetitions"),
    RunOption("block_size", int, 0, "Mean block length in days of --stats' stationary bootstrap (0 = the square "
              "root of the days, arch's default).", commands=_SWEEP, minimum=1, maximum=100_000, also=(0,),
              noun="a number of days"),
    RunOption("alpha", float, 0.05, "--stats' size: StepM's family-wise error rate, the model confidence set's "
              "size, and 1 - the Sharpe interval's confidence.", commands=_SWEEP, minimum=0, maximum=1,
              minimum_inclusive=False, maximum_inclusive=False, noun="a probability"),
    RunOption("seed", int, 0, "Seed of --samples' draws and of --stats' bootstrap: the same seed gives the same "
              "numbers.", commands=_SWEEP, minimum=0, maximum=2**31 - 1, noun="an integer"),
)
BY_NAME = {option.name: option for option in OPTIONS}
# RunConfig's options, and those kept per parameter set (a sweep's grid may vary them).
CONFIG_OPTIONS = tuple(o for o in OPTIONS if o.in_config)
PER_SET = tuple(o for o in OPTIONS if o.per_set)
# The futures options kept per run (not per set): one result field and results column each.
FUTURES_RUN = tuple(o for o in OPTIONS if o.futures and not o.per_set)
# The result fields of the options a cache key holds, with their defaults (timerange: its two ends).
KEY_DEFAULTS: dict[str, Any] = {
    **{name: None for name in ("timerange_start", "timerange_end")},
    **{o.record_field: o.default for o in OPTIONS if o.in_cache_key and o.name != "timerange"},
}


# How a sweep is computed, never what it computes (issue 31): its chunks (a block of symbols x a block of
# parameter sets) on Dask `distributed` workers, each chunk's kernel output kept as a part under the run id,
# resumable. Not in RunConfig nor any cache key: the results equal a single-process run's bit for bit. The
# CLI's sweep takes them (`pipeline.runs.cluster`); the API and the notebook run a sweep in their process.
SCALE_OUT: tuple[RunOption, ...] = (
    RunOption("cluster", str, None, "Run the sweep's chunks on the Dask scheduler at this address "
              "(tcp://HOST:8786; `dask scheduler` and `dask worker` start one, docs/scale-out.md).",
              commands=_SWEEP, nullable=True, in_config=False, pattern=r"(tcp|tls)://[^\s/:]+:\d{1,5}",
              noun="a scheduler address tcp://HOST:PORT (or tls://HOST:PORT)"),
    RunOption("workers", int, 0, "Run the sweep's chunks on a local cluster of this many worker processes "
              "(0 = in this process, as one run).", commands=_SWEEP, minimum=1, maximum=256, also=(0,),
              noun="a number of worker processes", in_config=False),
    RunOption("resume", str, None, "Compute only the missing chunks of the distributed sweep RUN_ID (its "
              "own request: give no strategy, grid or run option) and publish its results when all are there.",
              commands=_SWEEP, nullable=True, in_config=False, pattern=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
              noun="a run id (as the sweep printed it)"),
    RunOption("chunk_symbols", int, 0, "Symbols per chunk of a --cluster or --workers sweep (0 = as a "
              "single-process sweep chunks them, bounded by memory).", commands=_SWEEP, minimum=1,
              maximum=1_000_000, also=(0,), noun="a number of symbols", in_config=False),
    RunOption("chunk_sets", int, 0, "Parameter sets per chunk of a --cluster or --workers sweep (0 = about "
              "a second of one worker's kernels each).", commands=_SWEEP, minimum=1, maximum=1_000_000,
              also=(0,), noun="a number of parameter sets", in_config=False),
)
SCALE_OUT_BY_NAME = {option.name: option for option in SCALE_OUT}


def check_scale_out(**given: Any) -> dict[str, Any]:
    """The scale-out options of a sweep (`SCALE_OUT`, by name; absent ones take their defaults), each
    checked by its rule and together: a one-line PipelineError naming the bad value and what is allowed."""
    unknown = [name for name in given if name not in SCALE_OUT_BY_NAME]
    if unknown:
        raise PipelineError(f"unknown scale-out option {unknown[0]!r}; use one of: {', '.join(SCALE_OUT_BY_NAME)}")
    values = {o.name: o.check(given.get(o.name, o.default)) for o in SCALE_OUT}
    if values["cluster"] is not None and values["workers"]:
        raise PipelineError(f"--cluster {values['cluster']!r} and --workers {values['workers']}: use one of them, "
                            "not both (a scheduler's address, or a local cluster of N processes)")
    scaled = values["cluster"] is not None or values["workers"] or values["resume"] is not None
    for name in ("chunk_symbols", "chunk_sets"):
        if values[name] and not scaled:
            raise PipelineError(f"{SCALE_OUT_BY_NAME[name].flag} {values[name]} chunks a distributed sweep: "
                                "give --cluster tcp://HOST:PORT or --workers N with it")
    if values["resume"] is not None and (values["chunk_symbols"] or values["chunk_sets"]):
        raise PipelineError(f"--resume {values['resume']!r} keeps the run's own chunks: drop --chunk-symbols "
                            "and --chunk-sets")
    return values


def parse_stats(text: str | None) -> tuple[str, ...]:
    """The statistics `--stats` names ("spa,mcs", "all"), in STAT_NAMES order; a one-line error names a
    wrong one."""
    if text is None or not str(text).strip():
        return ()
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in (*STAT_NAMES, "all")]
    if unknown:
        raise PipelineError(f"--stats {unknown[0]!r} is not a statistic; use a comma list of: "
                            f"{', '.join(STAT_NAMES)} (or all)")
    return STAT_NAMES if "all" in names else tuple(n for n in STAT_NAMES if n in names)


@dataclass(frozen=True)
class StatsRequest:
    """What a sweep's statistics are asked for: which (`STAT_NAMES`), against what benchmark, with how
    many bootstrap repetitions of which mean block length (0: sqrt(days), `arch`'s default), under which
    seed, at which size `alpha` (StepM's family-wise error, the MCS's size, the interval's 1 - alpha)."""

    stats: tuple[str, ...]
    benchmark: str = "zero"
    reps: int = 1000
    seed: int = 0
    alpha: float = 0.05
    block_size: int = 0
    sets_tried: int = 0  # the sweep's grid size: the haircut's number of tests

    def block_for(self, days: int) -> int:
        return self.block_size or max(int(math.sqrt(days)), 1)


def for_command(command: str) -> tuple[RunOption, ...]:
    """The options `command` (backtest, sweep, portfolio) takes, in table order."""
    return tuple(o for o in OPTIONS if command in o.commands)
