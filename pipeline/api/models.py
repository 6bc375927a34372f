"""Request bodies of the HTTP API: pydantic for the shape, `pipeline.options` for the rules.

Field types give the OpenAPI schema and catch a string where a number goes; every rule about
values (strategy, parameters, ranges, fee, fill, cash, time range, symbols, interval, grid,
top) is `pipeline.options`' and `pipeline.strategies`', so a request is refused with the very
message the CLI prints. The run options and their defaults are `options.run_config`'s keyword
parameters, read from its signature: nothing is restated here.
"""

from __future__ import annotations

import inspect
from typing import Any

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

    def _param_sets(self) -> Any:
        self.symbols = [self.symbol]
        return dict(self.params)
