"""Request bodies of the HTTP API: pydantic for the shape, `pipeline.options` for the rules.

Field types give the OpenAPI schema and catch a string where a number goes; every rule about
values (strategy, parameters, ranges, fee, fill, cash, time range, symbols, interval, grid,
top) is `pipeline.options`' and `pipeline.strategies`', so a request is refused with the very
message the CLI prints. The run options and their defaults are `options.run_config`'s keyword
parameters, read from its signature: nothing is restated here.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator
from pydantic_core import PydanticCustomError

from pipeline import options
from pipeline.errors import PipelineError

RULE_ERROR = "run_option"  # the pydantic error type that carries a pipeline.options message verbatim
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


def _refuse(exc: PipelineError) -> PydanticCustomError:
    # The message is a template to pydantic: braces in it (a dict in a message) must not be read as fields.
    return PydanticCustomError(RULE_ERROR, "{message}", {"message": str(exc)})


class _RunBase(BaseModel):
    """One strategy over symbols (none and `all` false = every symbol), as `cryptobt backtest`."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="A strategy name from GET /api/strategies.", examples=["rsi"])
    params: dict[str, float | int | str] = Field(default_factory=dict,
                                                 description="Parameter overrides; the rest take defaults.")
    symbols: list[str] | None = Field(default=None, description="Symbols; omit (or all=true) for every one.")
    all: bool = False
    interval: str = Field(default="1h", description=f"One of {', '.join(options.INTERVALS)}.")
    no_cache: bool = Field(default=False, description="Neither read nor write the Redis cache.")

    _checked: Any = PrivateAttr(default=None)

    def _param_sets(self) -> Any:
        return dict(self.params)

    @model_validator(mode="after")
    def _rules(self) -> _RunBase:
        try:
            self._checked = options.run_request(
                self.strategy, self._param_sets(), self.symbols, self.all, self.interval,
                **{name: getattr(self, name) for name in RUN_OPTIONS})
        except PipelineError as exc:
            raise _refuse(exc) from None
        return self

    @property
    def checked(self) -> tuple[Any, list[str] | None, str]:
        """(RunConfig, symbols or None, interval), as `options.run_request` returned them."""
        return self._checked


RunRequest = create_model(
    "RunRequest", __base__=_RunBase, __doc__=_RunBase.__doc__,
    **{name: (_annotation(p), Field(default=p.default, description=_HELP.get(
        name, f"As --{name.replace('_', '-')} of cryptobt backtest.")))
       for name, p in RUN_OPTIONS.items()})


class SweepRequest(RunRequest):  # type: ignore[misc,valid-type]
    """A parameter grid over symbols, as `cryptobt sweep` (grid specs as its -g takes them)."""

    grid: list[str] = Field(min_length=1, description="name=start:stop:step or name=v1,v2 per parameter; the run "
                                                      "parameters sl, tp, trail, size, slippage may join.",
                            examples=[["rsi_period=7:28:7", "oversold_threshold=20,25,30", "sl=2:6:2"]])
    top: int = Field(default=5, description="Best N overall and per symbol in the answer.")
    samples: int | None = Field(default=None, description="Run this many grid points drawn at random.")
    seed: int = Field(default=0, description="Seed of samples: the same seed draws the same points.")

    def _param_sets(self) -> Any:
        if self.params:
            raise PipelineError("use either params or grid, not both")
        options.check_top(self.top)
        return options.parse_grid(self.strategy, self.grid, self.samples, self.seed)


class EquityRequest(RunRequest):  # type: ignore[misc,valid-type]
    """One symbol's equity against buy & hold with its trades, for the dashboard's chart."""

    symbol: str
    points: int = Field(default=2000, ge=10, le=100_000, description="Most points per curve (evenly thinned).")
    snapshot: str | None = Field(default=None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="A kept snapshot (a past run's) to draw on; default the current one.")

    def _param_sets(self) -> Any:
        self.symbols = [self.symbol]
        return dict(self.params)


class PortfolioRequest(BaseModel):
    """One account over many symbols, as `cryptobt portfolio` (several max_open, stake or grid values
    = one account each, best first)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="A strategy name from GET /api/strategies.", examples=["rsi"])
    params: dict[str, float | int | str] = Field(default_factory=dict,
                                                 description="Parameter overrides; the rest take defaults.")
    grid: list[str] = Field(default_factory=list, max_length=16,
                            description="Strategy parameter sweep, as -g: name=start:stop:step or name=v1,v2.")
    symbols: list[str] | None = Field(default=None, description="Symbols; omit (or all=true) for every one.")
    all: bool = False
    interval: str = Field(default="1h", description=f"One of {', '.join(options.INTERVALS)} (auto: the coarsest "
                                                    "interval any symbol needs: one account needs one grid).")
    timerange: str | None = Field(default=None, description=_HELP["timerange"])
    fee: float = Field(default=0.1, description=_HELP["fee"])
    slippage: float = Field(default=0.0, description=_HELP["slippage"])
    fill: str = Field(default="close", description=_HELP["fill"])
    initial: float = Field(default=1000.0, description="Starting cash of the one account.")
    annualization: str = Field(default="observed", description="As --annualization of cryptobt portfolio.")
    min_bar_coverage: float = Field(default=0.0, description="As --min-bar-coverage of cryptobt portfolio.")
    max_open: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [10], min_length=1, max_length=64, description="Most positions open at once.")
    stake: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=lambda: ["10%"], min_length=1, max_length=64,
        description="Per entry: a fraction of equity in (0, 1] (0.1 or 10%) or an amount of cash > 1.")
    rank_by: str = Field(default="auto", description="auto, volume or name: which same-bar entries win free slots.")
    points: int = Field(default=2000, ge=10, le=100_000, description="Most points of the best account's curves.")

    _checked: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _rules(self) -> PortfolioRequest:
        from pipeline import portfolio as pf
        from pipeline import strategies

        try:  # the checks of `cryptobt portfolio`, in its order
            symbols = options.check_symbols(self.symbols, self.all)
            options.check_interval(self.interval)
            stakes = [pf.Stake.parse(text) for text in self.stake]
            if self.rank_by not in pf.RANK_BY:
                raise PipelineError(f"--rank-by {self.rank_by!r} is not allowed; use one of: {', '.join(pf.RANK_BY)}")
            if self.grid and self.params:
                raise PipelineError("use either params or grid, not both")
            params: Any = list(strategies.parse_grid(self.strategy, self.grid)) if self.grid else dict(self.params)
            config = options.run_config(self.strategy, params, timerange=self.timerange, fee=self.fee, fill=self.fill,
                                        initial=self.initial, annualization=self.annualization,
                                        min_bar_coverage=self.min_bar_coverage, slippage=self.slippage)
            sets = pf.make_sets(config, sorted(set(self.max_open)), list(dict.fromkeys(stakes)))
        except PipelineError as exc:
            raise _refuse(exc) from None
        self._checked = (config, sets, symbols)
        return self

    @property
    def checked(self) -> tuple[Any, list[Any], list[str] | None]:
        """(RunConfig, portfolio sets, symbols or None)."""
        return self._checked
