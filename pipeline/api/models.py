"""Request bodies of the HTTP API: pydantic for the shape and the sizes, `pipeline.engine.options` for the rules.

Field types are strict (JSON `true` is not a number, `1` is not a string) and every size is
bounded (strings, lists, the body: `MAX_BODY_BYTES`); every rule about values (strategy,
parameters, ranges, fee, fill, cash, time range, symbols, interval, grid, top) is
`pipeline.engine.options`' and `pipeline.engine.strategies`', so a request is refused with the very message the
CLI prints. The schema documents each rule (`RULES`: the bounds and choices those checks use).
The run options and their defaults are `options.run_config`'s keyword parameters, read from its
signature: nothing is restated here.

`check()` applies the rules. It can take seconds (a sweep's grid may list a million points), so
the app calls it in a thread, never on the event loop.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, create_model

from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options, portfolio
from pipeline.engine.strategies import EXECUTION_PARAMS, MAX_GRID_COMBOS, Param

# Sizes of a request. A body is at most MAX_BODY_BYTES (413 beyond): a grid value list of ~100,000
# values fits; a range spec (`tp=0.001:1000:0.001`) reaches MAX_GRID_COMBOS in a few bytes.
MAX_BODY_BYTES = 1 << 20
MAX_NAME = 100  # a strategy, parameter or symbol name, a string parameter value
MAX_SYMBOLS = 10_000
MAX_GRID_SPECS = 32
MAX_SPEC_CHARS = 200_000
MAX_PARAMS = 32
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]


# Patterns of what the rules parse (ECMA-262 and Python read them alike): a plain number, surrounding
# spaces that the rule strips, a time range, a grid spec.
_S = "[" + "".join(f"\\u{ord(c):04x}" for c in options.SPACES) + "]*"
_NUMBER = options._PLAIN_NUMBER.pattern
NUMBER_TEXT = f"^{_S}{_NUMBER}{_S}$"
TIMERANGE = f"^{_S}(?:(?:[0-9]{{8}})?-(?:[0-9]{{8}})?)?{_S}$"
GRID_SPEC = (f"^[^=]+={_S}(?:{_NUMBER}(?:{_S},{_S}{_NUMBER})*|{_NUMBER}{_S}:{_S}{_NUMBER}{_S}:{_S}{_NUMBER})"
             f"{_S}$")


def _bounds(param: Param) -> dict[str, Any]:
    """A run parameter's range as JSON Schema keywords."""
    out: dict[str, Any] = {}
    if param.minimum is not None:
        out["minimum" if param.minimum_inclusive else "exclusiveMinimum"] = param.minimum
    if param.maximum is not None:
        out["maximum" if param.maximum_inclusive else "exclusiveMaximum"] = param.maximum
    return out


# What `options.run_config` (engine.make_config, options.check_walk_forward) accepts per option, for the schema;
# tests/test_api_limits.py checks each bound against the rule itself.
RULES: dict[str, dict[str, Any]] = {
    "timerange": {"pattern": TIMERANGE},
    "fee": {"minimum": 0, "exclusiveMaximum": 100},
    "fill": {"enum": list(engine.FILLS)},
    "initial": {"minimum": options.INITIAL_RANGE[0], "maximum": options.INITIAL_RANGE[1]},
    "annualization": {"enum": list(engine.ANNUALIZATIONS)},
    "min_bar_coverage": {"minimum": 0, "maximum": 1},
    "objective": {"enum": list(engine.OBJECTIVES)},
    "min_trades": {"minimum": 0},
    # 0 (off) or even from PBO_BLOCKS_RANGE[0] = 2
    "pbo_blocks": {"minimum": 0, "maximum": engine.PBO_BLOCKS_RANGE[1], "multipleOf": 2},
    "walk_forward": {"anyOf": [{"const": 0}, {"minimum": 2, "maximum": options.MAX_FOLDS}]},
    "train_ratio": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    **{p.name: _bounds(p) for p in EXECUTION_PARAMS if p.type is float},
}
# The run options are `options.run_config`'s keyword parameters, whatever they are (fee, fill, ...,
# and whatever the engine adds there later): the API takes each with the CLI's default.
RUN_OPTIONS = {name: p for name, p in inspect.signature(options.run_config).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
_TYPES: dict[str, Any] = {"str": str, "float": float, "int": int, "bool": bool, "None": None}
_HELP = {"timerange": "YYYYMMDD-YYYYMMDD, either side open.", "fee": "Percent per fill (0.1 = 0.1 %).",
         "fill": "close (signal bar) or next_open.", "initial": "Starting cash.",
         "trades": "Attach each result's trade log (fills) and round trips.",
         "sl": "Stop-loss, percent below the entry fill price (0 = none).",
         "tp": "Take-profit, percent above the entry fill price (0 = none).",
         "trail": "The stop-loss trails the highest high since the entry (needs sl).",
         "size": "Share of the equity committed at each entry, in (0, 1].",
         "slippage": "Percent against the trader on every market fill (stop fills get none)."}


def _annotation(parameter: inspect.Parameter) -> Any:
    """`float`, `str | None` ... from the (string) annotation; Any for anything fancier."""
    text = parameter.annotation if isinstance(parameter.annotation, str) else getattr(
        parameter.annotation, "__name__", "")
    parts = [part.strip() for part in text.split("|")]
    if not parts or any(part not in _TYPES for part in parts):
        return Any
    kinds = [_TYPES[part] for part in parts]
    union = kinds[0] if kinds[0] is not None else type(None)
    for kind in kinds[1:]:
        union = union | (kind if kind is not None else type(None))
    return union


class _RunBase(BaseModel):
    """One strategy over symbols (none and `all` false = every symbol), as `cryptobt backtest`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    strategy: Name = Field(description="A strategy name from GET /api/strategies.", examples=["rsi"])
    params: dict[Name, float | int | Annotated[Name, Field(json_schema_extra={"pattern": NUMBER_TEXT})]] = Field(
        default_factory=dict, max_length=MAX_PARAMS,
        description="Parameter overrides (ranges in GET /api/strategies); the rest take defaults.")
    symbols: list[Name] | None = Field(default=None, max_length=MAX_SYMBOLS,
                                       description="Symbols; omit (or all=true) for every one.")
    all: bool = False
    interval: str = Field(default="1h", description=f"One of {', '.join(options.INTERVALS)}.",
                          json_schema_extra={"enum": list(options.INTERVALS)})
    no_cache: bool = Field(default=False, description="Neither read nor write the Redis cache.")

    _checked: Any = PrivateAttr(default=None)

    def _param_sets(self, strategy: Any) -> Any:
        return dict(self.params)

    def check(self) -> tuple[Any, list[str] | None, str]:
        """The rules (`options.run_request`): (RunConfig, symbols or None, interval), also kept as
        `checked`. Raises PipelineError with the CLI's message. Blocking: call it off the event loop."""
        strategy = options.resolve_strategy(self.strategy)
        self._checked = options.run_request(
            strategy, self._param_sets(strategy), self.symbols, self.all, self.interval,
            **{name: getattr(self, name) for name in RUN_OPTIONS})
        return self._checked

    @property
    def checked(self) -> tuple[Any, list[str] | None, str]:
        """(RunConfig, symbols or None, interval), as `check()` returned them."""
        if self._checked is None:
            raise RuntimeError("the request was not checked")
        return self._checked


RunRequest = create_model(
    "RunRequest", __base__=_RunBase, __doc__=_RunBase.__doc__,
    **{name: (_annotation(p), Field(default=p.default, description=_HELP.get(
        name, f"As --{name.replace('_', '-')} of cryptobt backtest."), json_schema_extra=RULES.get(name)))
       for name, p in RUN_OPTIONS.items()})


class SweepRequest(RunRequest):  # type: ignore[misc,valid-type]
    """A parameter grid over symbols, as `cryptobt sweep` (grid specs as its -g takes them)."""

    grid: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_SPEC_CHARS),
                         Field(json_schema_extra={"pattern": GRID_SPEC})]] = Field(
        min_length=1, max_length=MAX_GRID_SPECS,
        description=f"name=start:stop:step or name=v1,v2 per parameter; the run parameters sl, tp, trail, "
                    f"size, slippage may join. At most {MAX_GRID_COMBOS:,} combinations.",
        examples=[["rsi_period=7:28:7", "oversold_threshold=20,25,30", "sl=2:6:2"]])
    top: int = Field(default=5, description="Best N overall and per symbol in the answer.",
                     json_schema_extra={"minimum": 1, "maximum": options.MAX_TOP})
    samples: int | None = Field(default=None, description="Run this many grid points drawn at random.",
                                json_schema_extra={"minimum": 1})
    seed: int = Field(default=0, description="Seed of samples: the same seed draws the same points.",
                      json_schema_extra={"minimum": 0})

    def _param_sets(self, strategy: Any) -> Any:
        if self.params:
            raise PipelineError("use either params or grid, not both")
        options.check_top(self.top)
        return options.parse_grid(strategy, self.grid, self.samples, self.seed)


class EquityRequest(RunRequest):  # type: ignore[misc,valid-type]
    """One symbol's equity against buy & hold with its trades, for the dashboard's chart."""

    symbol: Name
    points: int = Field(default=2000, ge=10, le=100_000, description="Most points per curve (evenly thinned).")
    snapshot: str | None = Field(default=None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="A kept snapshot (a past run's) to draw on; default the current one.")

    def _param_sets(self, strategy: Any) -> Any:
        self.symbols = [self.symbol]
        return dict(self.params)


class PortfolioRequest(BaseModel):
    """One account over many symbols, as `cryptobt portfolio` (several max_open, stake or grid values
    = one account each, best first)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    strategy: Name = Field(description="A strategy name from GET /api/strategies.", examples=["rsi"])
    params: dict[Name, float | int | Annotated[Name, Field(json_schema_extra={"pattern": NUMBER_TEXT})]] = Field(
        default_factory=dict, max_length=MAX_PARAMS, description="Parameter overrides; the rest take defaults.")
    grid: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_SPEC_CHARS),
                         Field(json_schema_extra={"pattern": GRID_SPEC})]] = Field(
        default_factory=list, max_length=16,
        description="Strategy parameter sweep, as -g: name=start:stop:step or name=v1,v2.")
    symbols: list[Name] | None = Field(default=None, max_length=MAX_SYMBOLS,
                                       description="Symbols; omit (or all=true) for every one.")
    all: bool = False
    interval: str = Field(default="1h", description=f"One of {', '.join(options.INTERVALS)} (auto: the coarsest "
                                                    "interval any symbol needs: one account needs one grid).",
                          json_schema_extra={"enum": list(options.INTERVALS)})
    timerange: str | None = Field(default=None, description=_HELP["timerange"], json_schema_extra=RULES["timerange"])
    fee: float = Field(default=0.1, description=_HELP["fee"], json_schema_extra=RULES["fee"])
    slippage: float = Field(default=0.0, description=_HELP["slippage"], json_schema_extra=RULES["slippage"])
    fill: str = Field(default="close", description=_HELP["fill"], json_schema_extra=RULES["fill"])
    initial: float = Field(default=1000.0, description="Starting cash of the one account.",
                           json_schema_extra=RULES["initial"])
    annualization: str = Field(default="observed", description="As --annualization of cryptobt portfolio.",
                               json_schema_extra=RULES["annualization"])
    min_bar_coverage: float = Field(default=0.0, description="As --min-bar-coverage of cryptobt portfolio.",
                                    json_schema_extra=RULES["min_bar_coverage"])
    max_open: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [10], min_length=1, max_length=64, description="Most positions open at once.")
    stake: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=lambda: ["10%"], min_length=1, max_length=64,
        description="Per entry: a fraction of equity in (0, 1] (0.1 or 10%) or an amount of cash > 1.")
    rank_by: str = Field(default="auto", description="auto, volume or name: which same-bar entries win free slots.",
                         json_schema_extra={"enum": list(portfolio.RANK_BY)})
    points: int = Field(default=2000, ge=10, le=100_000, description="Most points of the best account's curves.")

    _checked: Any = PrivateAttr(default=None)

    def check(self) -> tuple[Any, list[Any], list[str] | None]:
        """The checks of `cryptobt portfolio`, in its order: (RunConfig, portfolio sets, symbols or None),
        also kept as `checked`. Raises PipelineError with the CLI's message. Blocking (a grid): call it
        off the event loop."""
        from pipeline.engine import portfolio as pf
        from pipeline.engine import strategies

        symbols = options.check_symbols(self.symbols, self.all)
        options.check_interval(self.interval)
        stakes = [pf.Stake.parse(text) for text in self.stake]
        if self.rank_by not in pf.RANK_BY:
            raise PipelineError(f"--rank-by {self.rank_by!r} is not allowed; use one of: {', '.join(pf.RANK_BY)}")
        if self.grid and self.params:
            raise PipelineError("use either params or grid, not both")
        strategy = options.resolve_strategy(self.strategy)
        params: Any = list(strategies.parse_grid(strategy, self.grid)) if self.grid else dict(self.params)
        config = options.run_config(strategy, params, timerange=self.timerange, fee=self.fee, fill=self.fill,
                                    initial=self.initial, annualization=self.annualization,
                                    min_bar_coverage=self.min_bar_coverage, slippage=self.slippage)
        sets = pf.make_sets(config, sorted(set(self.max_open)), list(dict.fromkeys(stakes)))
        self._checked = (config, sets, symbols)
        return self._checked

    @property
    def checked(self) -> tuple[Any, list[Any], list[str] | None]:
        """(RunConfig, portfolio sets, symbols or None), as `check()` returned them."""
        if self._checked is None:
            raise RuntimeError("the request was not checked")
        return self._checked


class ErrorBody(BaseModel):
    """Every error answer: one line naming the bad value and what is allowed."""

    model_config = ConfigDict(extra="forbid")

    error: str
