"""Request bodies of the HTTP API: pydantic for the shape, `pipeline.options` for the rules.

Field types give the OpenAPI schema and catch a string where a number goes; every rule about
values (strategy, parameters, ranges, fee, fill, cash, time range, symbols, interval, grid,
top) is `pipeline.options`' and `pipeline.strategies`', so a request is refused with the very
message the CLI prints. Defaults come from `options.run_config`'s signature, not restated.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from pipeline import options
from pipeline.errors import PipelineError

_DEFAULTS = {name: p.default for name, p in inspect.signature(options.run_config).parameters.items()}
RULE_ERROR = "run_option"  # the pydantic error type that carries a pipeline.options message verbatim


def _refuse(exc: PipelineError) -> PydanticCustomError:
    # The message is a template to pydantic: braces in it (a dict in a message) must not be read as fields.
    return PydanticCustomError(RULE_ERROR, "{message}", {"message": str(exc)})


class RunRequest(BaseModel):
    """One strategy over symbols (none and `all` false = every symbol), as `cryptobt backtest`."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="A strategy name from GET /api/strategies.", examples=["rsi"])
    params: dict[str, float | int | str] = Field(default_factory=dict,
                                                 description="Parameter overrides; the rest take defaults.")
    symbols: list[str] | None = Field(default=None, description="Symbols; omit (or all=true) for every one.")
    all: bool = False
    interval: str = Field(default="1h", description=f"One of {', '.join(options.INTERVALS)}.")
    timerange: str | None = Field(default=_DEFAULTS["timerange"], description="YYYYMMDD-YYYYMMDD, either side open.")
    fee: float = Field(default=_DEFAULTS["fee"], description="Percent per fill (0.1 = 0.1 %).")
    fill: str = Field(default=_DEFAULTS["fill"], description="close (signal bar) or next_open.")
    initial: float = Field(default=_DEFAULTS["initial"], description="Starting cash.")
    trades: bool = Field(default=_DEFAULTS["trades"], description="Attach each result's trade log.")
    no_cache: bool = Field(default=False, description="Neither read nor write the Redis cache.")

    _checked: Any = PrivateAttr(default=None)

    def _param_sets(self) -> Any:
        return dict(self.params)

    @model_validator(mode="after")
    def _rules(self) -> RunRequest:
        try:
            self._checked = options.run_request(
                self.strategy, self._param_sets(), self.symbols, self.all, self.interval,
                timerange=self.timerange, fee=self.fee, fill=self.fill, initial=self.initial, trades=self.trades)
        except PipelineError as exc:
            raise _refuse(exc) from None
        return self

    @property
    def checked(self) -> tuple[Any, list[str] | None, str]:
        """(RunConfig, symbols or None, interval), as `options.run_request` returned them."""
        return self._checked


class SweepRequest(RunRequest):
    """A parameter grid over symbols, as `cryptobt sweep` (grid specs as its -g takes them)."""

    grid: list[str] = Field(min_length=1, description="name=start:stop:step or name=v1,v2 per parameter.",
                            examples=[["rsi_period=7:28:7", "oversold_threshold=20,25,30"]])
    top: int = Field(default=5, description="Best N overall and per symbol in the answer.")

    def _param_sets(self) -> Any:
        from pipeline import strategies

        if self.params:
            raise PipelineError("use either params or grid, not both")
        options.check_top(self.top)
        return strategies.parse_grid(self.strategy, self.grid)


class EquityRequest(RunRequest):
    """One symbol's equity against buy & hold with its trades, for the dashboard's chart."""

    symbol: str
    points: int = Field(default=2000, ge=10, le=100_000, description="Most points per curve (evenly thinned).")

    def _param_sets(self) -> Any:
        self.symbols = [self.symbol]
        return dict(self.params)
