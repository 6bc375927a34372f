"""A sweep's parameter grid: `-g` specs (name=start:stop:step or name=v1,v2) into parameter sets,
and the (sets x parameters) matrix the kernels take, ordered so an indicator is computed once per
distinct value."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.plain_numbers import is_plain_number
from pipeline.engine.strategies import (
    MAX_GRID_COMBOS,
    Number,
    Strategy,
    resolve_params,
)
from pipeline.engine.strategies.api import Param


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


def _spec_values(strategy: Strategy, spec: str, common: Sequence[Param] = ()) -> tuple[str, list[Number]]:
    if not isinstance(spec, str) or "=" not in spec:
        raise PipelineError(
            f"bad grid spec {spec!r}: expected name=start:stop:step or name=v1,v2,..."
        )
    name, _, body = spec.partition("=")
    name = name.strip()
    param = next((p for p in common if p.name == name), None)
    if param is None:
        try:
            param = strategy.param(name)
        except PipelineError as exc:
            if not common:
                raise
            raise PipelineError(f"{exc}; or a run parameter: {', '.join(p.name for p in common)}") from None
    body = body.strip()
    if not body:
        raise PipelineError(f"bad grid spec {spec!r}: no values after '='")
    if param.choices:  # a text run parameter (direction=long,short): a list of its words
        words = [w.strip() for w in body.split(",")]
        for word in words:
            if word not in param.choices:
                raise PipelineError(f"bad grid spec {spec!r}: {name}={word!r} is not allowed; use {param.allowed()}")
        return name, list(dict.fromkeys(words))
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
    values: dict[Number, None] = {}  # distinct values in their order: a dict, not `in` a list (quadratic)
    for value in raw:
        text = format(value.normalize(), "f")
        try:
            converted = param.convert(text)
        except PipelineError as exc:
            raise PipelineError(f"bad grid spec {spec!r}: {exc}") from None
        values.setdefault(converted, None)
    return name, list(values)


def parse_grid(strategy: Strategy, specs: Sequence[str], common: Sequence[Param] = (),
               samples: int | None = None, seed: int = 0) -> ParamGrid:
    """Parameter sets of a sweep, every one validated.

    With `samples`, a random subset of that many grid points (reproducible from `seed`, drawn
    without listing the grid, so a grid too large to run whole can be sampled), in grid order.

    Each spec is `name=start:stop:step` (the stop is included when it lies on
    the grid) or `name=v1,v2,...`; parameters without a spec take their
    defaults. `common` are parameters of the run that may join the grid too
    (stops, size, slippage); a set holds one only when the grid varies it. Combinations that are invalid together (fast_period >=
    slow_period, oversold >= overbought) are dropped and counted in
    `ParamGrid.dropped`; if every combination is invalid, or a spec is
    malformed, names an unknown parameter or a value out of range, a
    PipelineError names it.
    """
    axes: dict[str, list[Number]] = {}
    for spec in specs:
        name, values = _spec_values(strategy, spec, common)
        if name in axes:
            raise PipelineError(f"bad grid spec {spec!r}: {name} is given more than once")
        axes[name] = values
    names = list(strategy.param_names) + [p.name for p in common if p.name in axes]
    value_lists = [axes.get(n, [strategy.defaults.get(n)]) for n in names]
    total = math.prod(len(v) for v in value_lists)
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise PipelineError(f"--samples {samples!r} is out of range: an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise PipelineError(f"--seed {seed!r} is out of range: an integer >= 0")
    chosen = total if samples is None else min(samples, total)
    if chosen > MAX_GRID_COMBOS:
        raise PipelineError(
            f"the grid has {chosen} combinations, more than {MAX_GRID_COMBOS}; use larger steps or --samples"
        )
    combos: Iterable[tuple[Number, ...]] = itertools.product(*value_lists)
    if chosen < total:
        combos = (_grid_point(value_lists, int(i)) for i in
                  np.sort(np.random.default_rng(seed).choice(total, size=chosen, replace=False)))
    grid = ParamGrid()
    for combo in combos:
        params = dict(zip(names, combo, strict=True))
        problem = strategy.params_problem(params)
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


def _grid_point(value_lists: list[list[Number]], index: int) -> tuple[Number, ...]:
    """The `index`-th combination of itertools.product(*value_lists), without listing the others."""
    point = []
    for values in reversed(value_lists):
        index, digit = divmod(index, len(values))
        point.append(values[digit])
    return tuple(reversed(point))


def combos_matrix(
    strategy: Strategy, params_list: Sequence[Mapping[str, object]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameter sets as the batch kernel's inputs.

    Returns `(combos, recompute, order)`: combos is (C x P) float64 with
    the parameters in `Strategy.param_names` order, sorted so
    that combos sharing an indicator are adjacent; recompute[i] is True where
    row i needs a new indicator computation; row i is params_list[order[i]].
    Every parameter set is validated with resolve_params.
    """
    names = strategy.param_names
    n = len(params_list)
    combos = np.zeros((n, len(names)), dtype=np.float64)
    for i, params in enumerate(params_list):
        resolved = resolve_params(strategy, params)
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


# Memory a sweep may give each thread for the indicator rows it keeps (`indicator_slots`): past it, a set whose
# indicator parameters differ from the set before computes every indicator again, as without the rows.
INDICATOR_TABLE_BYTES = 256 * 2**20


def indicator_slots(strategy: Strategy, combos: np.ndarray, recompute: np.ndarray,
                    bars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Where the batch kernel keeps each indicator row of each set of `combos` (from `combos_matrix`).

    With INDICATOR_PARAMS naming each indicator's own parameters, indicator row k of a set depends only on
    `strategy.row_params[k]`: the kernel keeps one row per distinct value of those (a slot of its table) and
    copies it in wherever a set needs it, so a Donchian sweep of 40 entry x 25 exit periods computes its
    indicators 64 times per symbol instead of 1,000.

    Returns `(slots, fills, recompute)`: slots[c, k] is the table row holding indicator row k of set c;
    fills[c, k] is True at the first set needing that slot (the kernel computes the indicators there and
    keeps what is new); recompute[c] = any(fills[c]). None when keeping rows saves no computation (every
    row depends on the same parameters) or the table of `bars` columns would pass INDICATOR_TABLE_BYTES.
    """
    rows = strategy.row_params
    if not rows or all(set(row) == set(strategy.indicator_params) for row in rows):
        return None
    names = strategy.param_names
    n = combos.shape[0]
    slots = np.empty((n, len(rows)), dtype=np.int64)
    fills = np.zeros((n, len(rows)), dtype=np.bool_)
    taken = 0
    for k, row in enumerate(rows):
        if row:
            values, inverse = np.unique(combos[:, [names.index(p) for p in row]], axis=0, return_inverse=True)
            distinct, inverse = values.shape[0], inverse.reshape(-1)
        else:
            distinct, inverse = 1, np.zeros(n, dtype=np.int64)
        slots[:, k] = inverse + taken
        fills[np.unique(inverse, return_index=True)[1], k] = True
        taken += distinct
    shared = fills.any(axis=1)
    if n == 0 or shared.sum() >= recompute.sum() or taken * bars * 8 > INDICATOR_TABLE_BYTES:
        return None
    return slots, fills, shared
