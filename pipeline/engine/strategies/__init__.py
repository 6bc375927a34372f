"""Strategy registry: built-ins and users' strategies, parameters, validation, sweeps.

A strategy is one file (see `pipeline.engine.strategies.api` for what it declares);
the five built-ins are the files next to this one, users' files come from
`--strategy-path DIR`, `CRYPTOBT_STRATEGY_PATH` and the `cryptobt.strategies`
entry-point group. Nothing outside a strategy's own file names it: the engine,
the sweep, the cache key and the results columns read these declarations.

Everything a user can name on the command line or in `crypto_strategies` is
checked here, before any data is read; errors are `PipelineError`s whose
message names the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType, ModuleType

import numpy as np

from pipeline.core import config
from pipeline.core.errors import PipelineError
from pipeline.core.run_options import PER_SET
from pipeline.engine.strategies import compiler, usercode
from pipeline.engine.strategies.api import PRICE_COLUMNS, Param

Number = int | float

# A sweep larger than this is almost certainly a typo in a step; refuse it
# before allocating (S x C x metrics) results.
MAX_GRID_COMBOS = 1_000_000

# SPEC 4.1's run parameters, which every strategy takes: set for a whole run by their options
# (--sl 5), or varied in a sweep like a strategy's own (-g sl=2:10:2; pipeline.engine.options.parse_grid).
# Percentages as the CLI takes them; the per-set run options of `run_options.PER_SET`, with their
# bounds (trail as 0 or 1). No strategy may declare a parameter of these names.
EXECUTION_PARAMS: tuple[Param, ...] = tuple(
    Param(o.name, int if o.type is bool else o.type, int(o.default) if o.type is bool else o.default, o.help,
          minimum=0 if o.type is bool else o.minimum, maximum=1 if o.type is bool else o.maximum,
          minimum_inclusive=o.minimum_inclusive, maximum_inclusive=o.maximum_inclusive, choices=o.choices)
    for o in PER_SET)
EXECUTION_NAMES = tuple(p.name for p in EXECUTION_PARAMS)


@dataclass(frozen=True)
class Strategy:
    """A strategy: its declarations and the module holding its Numba functions.

    `indicator_params` are the parameters the indicators depend on: parameter
    sets that share them share one indicator computation in the batch kernel.
    `row_params[k]` are those indicator row k depends on (all of `indicator_params` unless
    INDICATOR_PARAMS maps each indicator to its own): a sweep then keeps each row per distinct value
    of its own parameters and reuses it across sets that differ elsewhere (`grid.indicator_slots`).
    `code_version` hashes the strategy's code (`code_files`: a built-in's file; a
    user's strategy file and every helper module it imports, see `usercode`) with
    the shared kernels; it is part of every cache key, result and compiled kernel,
    so an edited file never serves an old number. `cache_problem` says why part of
    that code cannot be hashed: then nothing of the strategy is cached.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    columns: tuple[str, ...]
    indicators: tuple[str, ...]
    indicator_params: tuple[str, ...]
    row_params: tuple[tuple[str, ...], ...]
    indicator_label: str
    module_name: str
    origin: str  # "built-in" or the file it came from
    code_version: str
    # Cross-parameter rule: returns an error message or None (call `params_problem`, which guards a user's).
    check: Callable[[Mapping[str, Number]], str | None] | None = field(default=None)
    code_files: tuple[str, ...] = ()
    cache_problem: str | None = None
    modules: tuple[ModuleType, ...] = field(default=(), repr=False, compare=False)  # the code of code_files
    # Its short signals (futures): "own" (a short_signals function), "mirror" (SHORT_RULE = "mirror": a
    # long exit opens a short, a long entry closes it) or None (it cannot trade short).
    short_rule: str | None = None
    # The slower series it reads besides its own bars (INFORMATIVE): (symbol, interval) each, symbol None =
    # the run's own symbol. Their COLUMNS reach `indicators`/`signals` as `informative[k, j, t]`.
    informative: tuple[tuple[str | None, str], ...] = ()

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The rows of `prices` the kernels gather per symbol: COLUMNS, then each informative series'
        COLUMNS (batch columns named by `informative_column`)."""
        return self.columns + tuple(informative_column(k, c) for k in range(len(self.informative))
                                    for c in self.columns)

    @property
    def builtin(self) -> bool:
        return self.origin == "built-in"

    def kernels(self) -> ModuleType:
        """The compiled batch kernels (run_grid, run_single, signals_on_grid, ...).

        A user's strategy's come wrapped: whatever its code raises is one PipelineError naming its file.
        """
        return compiler.kernel_module(self)

    def params_problem(self, params: Mapping[str, Number]) -> str | None:
        """The cross-parameter rule's (CHECK's) message for `params`, or None."""
        if self.check is None:
            return None
        if self.builtin:
            return self.check(params)
        with usercode.running(self.origin, "its CHECK"):
            return self.check(params)

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


# Every module of this package is a built-in strategy except these.
_NOT_STRATEGIES = ("api", "compiler", "grid", "usercode")
BUILTIN_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_STRATEGIES))
"""The files of the built-in strategies, next to this one (one strategy per file)."""

ENTRY_POINT_GROUP = "cryptobt.strategies"
REQUIRED = ("NAME", "PARAMS", "COLUMNS", "INDICATORS", "INDICATOR_PARAMS", "indicators", "signals", "warmup")
_TEMPLATE_HINT = "see examples/strategies/donchian.py"


def _origin_of(module: ModuleType) -> str:
    return str(getattr(module, "__file__", None) or module.__name__)


def strategy_from_module(module: ModuleType, origin: str | None = None, imported: Sequence[str] = ()) -> Strategy:
    """Check a strategy module's declarations and describe it; PipelineError naming the file otherwise.

    `imported`: modules that importing it brought in (part of its code when they are the user's).
    """
    where = origin or _origin_of(module)
    for name in REQUIRED:
        if not hasattr(module, name):
            raise PipelineError(f"{where}: missing declaration {name} (a strategy declares "
                                f"{', '.join(REQUIRED)}; {_TEMPLATE_HINT})")
    for name in ("indicators", "signals", "warmup"):
        if not hasattr(getattr(module, name), "py_func"):
            raise PipelineError(f"{where}: {name} is not a Numba function; decorate it with @njit(cache=True)")
    strategy_name = module.NAME
    if not isinstance(strategy_name, str) or not strategy_name.isidentifier():
        raise PipelineError(f"{where}: NAME={strategy_name!r} must be an identifier such as 'donchian'")
    params = tuple(module.PARAMS)
    if not all(isinstance(p, Param) for p in params):
        raise PipelineError(f"{where}: PARAMS must be a tuple of pipeline.engine.strategies.api.Param")
    for p in params:
        try:
            p.convert(p.default)
        except PipelineError as exc:
            raise PipelineError(f"{where}: PARAMS: the default {exc}") from None
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise PipelineError(f"{where}: PARAMS names a parameter twice: {names}")
    taken = [n for n in names if n in (p.name for p in EXECUTION_PARAMS)]
    if taken:
        raise PipelineError(f"{where}: parameter name {taken[0]!r} is a run parameter every strategy has "
                            f"({', '.join(p.name for p in EXECUTION_PARAMS)}); rename it")
    columns = tuple(module.COLUMNS)
    bad = [c for c in columns if c not in PRICE_COLUMNS]
    if not columns or bad:
        raise PipelineError(f"{where}: COLUMNS={columns!r} must name one or more of {', '.join(PRICE_COLUMNS)}")
    indicators = tuple(module.INDICATORS)
    indicator_params, row_params = _indicator_params(module.INDICATOR_PARAMS, indicators, names, where)
    check = getattr(module, "CHECK", None)
    if check is not None and not callable(check):
        raise PipelineError(f"{where}: CHECK must be a function of the parameters returning a message or None")
    source_file = getattr(module, "__file__", None)
    origin = origin or ("built-in" if module.__name__.startswith("pipeline.engine.strategies.") else where)
    if origin == "built-in":  # its code is its file and the shared kernels, all of cryptobt's
        source = Path(source_file).read_bytes() if source_file else module.__name__.encode()
        code = usercode.Closure((module,), (source_file,) if source_file else (), source, None)
    else:
        code = usercode.closure(module, imported)
        usercode.compile_fresh(code.modules)
        # Code that cannot be hashed gets a version no other load shares: nothing of it is ever served again.
        source = code.source if code.problem is None else code.source + uuid.uuid4().bytes
    description = getattr(module, "DESCRIPTION", None) or (module.__doc__ or strategy_name).strip().splitlines()[0]
    return Strategy(
        short_rule=_short_rule(module, where),
        informative=_informative(module, where),
        name=strategy_name,
        description=description,
        params=params,
        columns=columns,
        indicators=indicators,
        indicator_params=indicator_params,
        row_params=row_params,
        indicator_label=str(getattr(module, "SIGNAL_VALUE", indicators[0] if indicators else "close")),
        module_name=module.__name__,
        origin=origin,
        code_version=compiler.code_version(source),
        check=check,
        code_files=code.files,
        cache_problem=code.problem,
        modules=code.modules,
    )


def informative_column(k: int, column: str) -> str:
    """The batch column holding COLUMNS `column` of a strategy's informative series k on the run's grid."""
    return f"informative{k}_{column}"


def _informative(module: ModuleType, where: str) -> tuple[tuple[str | None, str], ...]:
    """INFORMATIVE's series as (symbol or None, interval): `"1d"` is the run's own symbol at 1d,
    `("BTC_USDT", "1d")` another symbol's (the same one for every symbol of the run)."""
    from pipeline.core import intervals

    raw = getattr(module, "INFORMATIVE", ())
    if isinstance(raw, str) or not isinstance(raw, tuple | list):
        raise PipelineError(f"{where}: INFORMATIVE={raw!r} must be a tuple of intervals ('1d') or (symbol, "
                            "interval) pairs (('BTC_USDT', '1d'))")
    series = []
    for item in raw:
        symbol, interval = (None, item) if isinstance(item, str) else (tuple(item) if isinstance(item, tuple | list)
                                                                       else (None, None))
        if interval not in intervals.NAMES or not (symbol is None or (isinstance(symbol, str) and symbol)):
            raise PipelineError(f"{where}: INFORMATIVE item {item!r} is not an interval ({', '.join(intervals.NAMES)}) "
                                "or a (symbol, interval) pair")
        if (symbol, interval) in series:
            raise PipelineError(f"{where}: INFORMATIVE names {item!r} twice")
        series.append((symbol, interval))
    return tuple(series)


def _indicator_params(declared: object, indicators: tuple[str, ...], names: tuple[str, ...],
                      where: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """INDICATOR_PARAMS as (the parameters any indicator depends on, as declared; each row's own).

    A tuple says every indicator depends on all of it; a mapping names each indicator's own parameters
    ({"upper": ("entry_period",), "lower": ("exit_period",)}), every indicator once.
    """
    if isinstance(declared, Mapping):
        missing = [name for name in indicators if name not in declared]
        extra = [name for name in declared if name not in indicators]
        if missing or extra:
            raise PipelineError(f"{where}: INDICATOR_PARAMS as a mapping must name every indicator of INDICATORS "
                                f"{indicators} once: " + "; ".join(
                                    ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])))
        rows = [declared[name] for name in indicators]
    else:
        rows = [declared] * len(indicators)
        if not indicators:  # a tuple declared by a strategy without indicators still has to name parameters
            rows = [declared]
    checked: list[tuple[str, ...]] = []
    for row in rows:
        if isinstance(row, str) or not isinstance(row, (tuple, list)):
            raise PipelineError(f"{where}: INDICATOR_PARAMS must be a tuple of parameter names (or a mapping of each "
                                f"indicator to one), not {row!r}")
        unknown = [p for p in row if p not in names]
        if unknown:
            raise PipelineError(f"{where}: INDICATOR_PARAMS names {unknown} which are not in PARAMS ({names})")
        checked.append(tuple(row))
    union = tuple(dict.fromkeys(p for row in checked for p in row))
    return union, tuple(checked[:len(indicators)])


def _short_rule(module: ModuleType, where: str) -> str | None:
    """How the strategy trades short (Strategy.short_rule), from its SHORT_RULE and short_signals."""
    rule = getattr(module, "SHORT_RULE", None)
    own = getattr(module, "short_signals", None)
    if rule is not None and rule != "mirror":
        raise PipelineError(f"{where}: SHORT_RULE={rule!r} is not allowed; use \"mirror\" or define short_signals")
    if own is not None:
        if rule is not None:
            raise PipelineError(f"{where}: declares both SHORT_RULE and short_signals; keep one")
        if not callable(own):
            raise PipelineError(f"{where}: short_signals must be an @njit function "
                                "(prices, params, ind, enter_short, exit_short)")
        return "own"
    return rule


_REGISTRY: dict[str, Strategy] = {}
for _module_name in BUILTIN_MODULES:
    _builtin = strategy_from_module(importlib.import_module(f"pipeline.engine.strategies.{_module_name}"), "built-in")
    _REGISTRY[_builtin.name] = _builtin
BUILTIN_NAMES: frozenset[str] = frozenset(_REGISTRY)

STRATEGIES: Mapping[str, Strategy] = MappingProxyType(_REGISTRY)
"""Every registered strategy by name (read-only); users' strategies join as they are loaded."""

PARAM_COLUMNS: tuple[str, ...] = tuple(sorted({p.name for s in _REGISTRY.values() for p in s.params}))
"""Every built-in strategy's parameter names, sorted: the fixed parameter columns of a results table."""

_loaded_paths: set[Path] = set()
_environment_loaded = False


def register(strategy: Strategy) -> None:
    """Add a strategy to the registry; PipelineError when its NAME is taken by another file or a built-in."""
    existing = _REGISTRY.get(strategy.name)
    # The same file loaded again (edited in a notebook, say) replaces itself.
    if existing is None or existing.origin == strategy.origin:
        _REGISTRY[strategy.name] = strategy
        return
    what = "the built-in" if existing.builtin else f"the strategy in {existing.origin} named"
    raise PipelineError(f"{strategy.origin}: strategy name {strategy.name!r} clashes with {what} "
                        f"{strategy.name!r}; give NAME another value")


def load_strategy_file(path: Path) -> Strategy:
    """Import one user strategy file and register it; PipelineError naming the file and the problem."""
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    module_name = f"cryptobt_user_{path.stem}_{digest}"
    # Its helper modules are imported from its folder (files starting with `_` are not strategies), afresh
    # when edited since they were hashed.
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    usercode.forget_edited_modules()
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise PipelineError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the strategy file ({exc})") from None
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    before = set(sys.modules)
    try:
        with usercode.running(str(path), "importing the strategy"):
            spec.loader.exec_module(module)
    except PipelineError:
        del sys.modules[module_name]
        raise
    strategy = strategy_from_module(module, str(path), sorted(set(sys.modules) - before))
    register(strategy)
    return strategy


def add_strategy_paths(paths: Sequence[Path | str]) -> list[str]:
    """Load every `*.py` (not starting with `_`) of each folder as a strategy; return their names."""
    names = []
    for raw in paths:
        folder = Path(raw)
        if not folder.is_dir():
            raise PipelineError(f"--strategy-path {str(raw)!r} is not a folder")
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("_"):
                continue
            resolved = file.resolve()
            if resolved in _loaded_paths:
                continue
            names.append(load_strategy_file(resolved).name)
            _loaded_paths.add(resolved)
    return names


def _load_environment() -> None:
    """Users' strategies from CRYPTOBT_STRATEGY_PATH and installed packages, once per process."""
    global _environment_loaded
    if _environment_loaded:
        return
    _environment_loaded = True
    add_strategy_paths(config.strategy_path_env())
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        with usercode.running(f"entry point {entry.name} = {entry.value}", "loading"):
            module = entry.load()
        if not isinstance(module, ModuleType):
            raise PipelineError(f"entry point {entry.name} = {entry.value} must name a strategy module")
        register(strategy_from_module(module, f"entry point {entry.value}"))


def strategy_names() -> list[str]:
    """Registered strategy names, sorted."""
    _load_environment()
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; PipelineError listing the choices otherwise.

    The registry's lookup, which `pipeline.engine.options.resolve_strategy` makes at a run's edge (the
    CLI, the API, the notebook, a flow): from there the Strategy object travels, never its name."""
    if name not in _REGISTRY:
        _load_environment()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise PipelineError(
            f"unknown strategy {name!r}; choose one of: {', '.join(strategy_names())}"
        ) from None


def resolve_params(strategy: Strategy, overrides: Mapping[str, object]) -> dict[str, Number]:
    """Defaults overlaid with `overrides`, typed and validated.

    Values may be numbers or numeric strings ("14", "2.5"). Raises
    PipelineError for an unknown parameter, a non-numeric value, a
    non-integer period, a value out of range or an invalid combination
    (fast_period >= slow_period, oversold_threshold >= overbought_threshold).
    """
    resolved: dict[str, Number] = dict(strategy.defaults)
    for name, value in overrides.items():
        resolved[name] = strategy.param(name).convert(value)
    problem = strategy.params_problem(resolved)
    if problem is not None:
        raise PipelineError(f"invalid parameters for {strategy.name!r}: {problem}")
    return resolved




def warmup_bars(strategy: Strategy, params: Mapping[str, object]) -> int:
    """Bars a symbol needs before the strategy's first signal can fire.

    The strategy's `warmup` declaration (rsi: rsi_period + 2; ma_crossover:
    slow_period + 1; bollinger: bb_period + 1; macd: slow_period +
    signal_period; buy_and_hold: 1). A symbol with fewer bars
    gets status too_few_bars and zero trades. (With fill=next_open one more bar
    is needed for the first fill.)
    """
    resolved = resolve_params(strategy, params)
    row = np.array([float(resolved[name]) for name in strategy.param_names], dtype=np.float64)
    return int(strategy.kernels().warmup_bars(row))


def enable_bounds_checks() -> None:
    """Compile users' strategy code with Numba's bounds checks from now on (`cryptobt strategies check`),
    the strategies loaded already included."""
    usercode.enable_bounds_checks(m for s in _REGISTRY.values() if not s.builtin for m in s.modules)


# The sweep grid lives in its own room; its names stay reachable as `strategies.parse_grid` etc.
from pipeline.engine.strategies.grid import ParamGrid, combos_matrix, indicator_slots, parse_grid  # noqa: E402,F401
