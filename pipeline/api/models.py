"""Request bodies of the HTTP API: pydantic for the shape and the sizes, `pipeline.engine.options` for the rules.

Field types are strict (JSON `true` is not a number, `1` is not a string) and every size is
bounded (strings, lists, the body: `MAX_BODY_BYTES`); every rule about values (strategy,
parameters, ranges, fee, fill, cash, time range, symbols, interval, grid, top) is
`pipeline.engine.options`' and `pipeline.engine.strategies`', so a request is refused with the very message the
CLI prints. The run options (their fields, defaults, help and the schema's bounds and choices, `RULES`)
come from the one table, `pipeline.core.run_options.OPTIONS`: nothing is restated here.

`check()` applies the rules. It can take seconds (a sweep's grid may list a million points), so
the app calls it in a thread, never on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, create_model

from pipeline.core import plain_numbers
from pipeline.core.errors import PipelineError
from pipeline.core.run_options import CONFIG_OPTIONS, OPTIONS, RunOption, for_command
from pipeline.engine import options, portfolio
from pipeline.engine.strategies import MAX_GRID_COMBOS

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
_S = "[" + "".join(f"\\u{ord(c):04x}" for c in plain_numbers.SPACES) + "]*"
_NUMBER = plain_numbers.PLAIN_NUMBER.pattern
NUMBER_TEXT = f"^{_S}{_NUMBER}{_S}$"
TIMERANGE = f"^{_S}(?:(?:[0-9]{{8}})?-(?:[0-9]{{8}})?)?{_S}$"
GRID_SPEC = (f"^[^=]+={_S}(?:{_NUMBER}(?:{_S},{_S}{_NUMBER})*|{_NUMBER}{_S}:{_S}{_NUMBER}{_S}:{_S}{_NUMBER})"
             f"{_S}$")


# What `options.run_config` accepts per option (each option's rule in the table), for the schema;
# tests/test_api_limits.py checks each bound against the rule itself.
def _rule(option: RunOption) -> dict[str, Any]:
    """An option's rule as JSON Schema keywords (the time range: the pattern its parser takes)."""
    return {"pattern": TIMERANGE} if option.name == "timerange" else option.json_schema()


RULES: dict[str, dict[str, Any]] = {o.name: _rule(o) for o in CONFIG_OPTIONS if _rule(o)}
# The run options a backtest or sweep request takes: every one of `options.run_config`'s.
RUN_OPTIONS = {o.name: o for o in CONFIG_OPTIONS}


def _option_fields(chosen: tuple[RunOption, ...], command: str) -> dict[str, Any]:
    """create_model's fields of the run options `chosen`, with their defaults, help and rules."""
    return {o.name: (o.type | None if o.nullable else o.type, Field(
        default=o.default, description=o.help_for(command),
        json_schema_extra=_rule(o) or None))
        for o in chosen}


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


RunRequest = create_model("RunRequest", __base__=_RunBase, __doc__=_RunBase.__doc__,
                          **_option_fields(OPTIONS, "backtest"))


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


class _PortfolioBase(BaseModel):
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
        if self.grid and self.params:
            raise PipelineError("use either params or grid, not both")
        strategy = options.resolve_strategy(self.strategy)
        params: Any = list(strategies.parse_grid(strategy, self.grid)) if self.grid else dict(self.params)
        config, sets = pf.request_sets(strategy, params, self.max_open, self.stake, self.rank_by,
                                       **{o.name: getattr(self, o.name) for o in for_command("portfolio")
                                          if o.in_config})
        self._checked = (config, sets, symbols)
        return self._checked

    @property
    def checked(self) -> tuple[Any, list[Any], list[str] | None]:
        """(RunConfig, portfolio sets, symbols or None), as `check()` returned them."""
        if self._checked is None:
            raise RuntimeError("the request was not checked")
        return self._checked


PortfolioRequest = create_model("PortfolioRequest", __base__=_PortfolioBase, __doc__=_PortfolioBase.__doc__,
                                **_option_fields(for_command("portfolio"), "portfolio"))


class ErrorBody(BaseModel):
    """Every error answer: one line naming the bad value and what is allowed."""

    model_config = ConfigDict(extra="forbid")

    error: str
