"""The strategy registry: defaults, validation messages, sweeps and the combos matrix."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.engine import options, strategies
from pipeline.engine.strategies import get_strategy


def test_registry_has_the_five_spec_strategies_with_their_defaults():
    assert strategies.strategy_names() == ["bollinger", "buy_and_hold", "ma_crossover", "macd", "rsi"]
    assert set(strategies.STRATEGIES) == set(strategies.strategy_names())
    defaults = {name: strategies.get_strategy(name).defaults for name in strategies.strategy_names()}
    assert defaults == {
        "rsi": {"rsi_period": 14, "oversold_threshold": 30.0, "overbought_threshold": 70.0},
        "ma_crossover": {"fast_period": 10, "slow_period": 30},
        "bollinger": {"bb_period": 20, "bb_std": 2.0},
        "macd": {"fast_period": 12, "slow_period": 26, "signal_period": 9},
        "buy_and_hold": {},
    }
    for name in strategies.strategy_names():
        strategy = strategies.get_strategy(name)
        assert strategy.builtin and strategy.module_name == f"pipeline.engine.strategies.{name}"
        for p in strategy.params:
            assert p.type in (int, float) and p.description and isinstance(p.default, p.type)


def test_param_columns_is_the_sorted_union_of_all_parameter_names():
    assert strategies.PARAM_COLUMNS == (
        "bb_period", "bb_std", "fast_period", "overbought_threshold", "oversold_threshold",
        "rsi_period", "signal_period", "slow_period",
    )


def test_resolve_params_fills_defaults_and_types_cli_strings():
    assert strategies.resolve_params(get_strategy("rsi"), {"rsi_period": "21", "oversold_threshold": "25.5"}) == {
        "rsi_period": 21, "oversold_threshold": 25.5, "overbought_threshold": 70.0,
    }
    resolved = strategies.resolve_params(get_strategy("bollinger"), {"bb_std": "2.5", "bb_period": 10.0})
    assert resolved == {"bb_period": 10, "bb_std": 2.5}
    assert type(resolved["bb_period"]) is int and type(resolved["bb_std"]) is float
    assert strategies.resolve_params(get_strategy("buy_and_hold"), {}) == {}
    assert strategies.resolve_params(get_strategy("ma_crossover"), {"fast_period": np.int64(1)})["fast_period"] == 1


@pytest.mark.parametrize(
    ("strategy", "overrides", "message"),
    [
        ("rsi", {"rsi_period": 1}, "rsi_period=1 is out of range: must be an integer >= 2"),
        ("rsi", {"rsi_period": "14.5"}, "rsi_period=14.5 is not an integer"),
        ("macd", {"signal_period": 2.5}, "signal_period=2.5 is not an integer"),
        ("ma_crossover", {"fast_period": 0}, "fast_period=0 is out of range: must be an integer >= 1"),
        ("bollinger", {"bb_period": -3}, "bb_period=-3 is out of range"),
        ("bollinger", {"bb_std": 0}, "bb_std=0 is out of range: must be a number > 0"),
        ("bollinger", {"bb_std": "abc"}, "bb_std='abc' is not a number"),
        ("bollinger", {"bb_std": "inf"}, "bb_std='inf' is not a number"),
        ("rsi", {"rsi_period": True}, "rsi_period=True is not a number"),
        ("rsi", {"rsi_period": None}, "rsi_period=None is not a number"),
        ("rsi", {"oversold_threshold": -1}, "oversold_threshold=-1 is out of range: must be a number >= 0 and <= 100"),
        ("rsi", {"overbought_threshold": 101}, "overbought_threshold=101 is out of range"),
        ("rsi", {"oversold_threshold": 70}, "oversold_threshold=70 must be less than overbought_threshold=70"),
        ("ma_crossover", {"fast_period": 30}, "fast_period=30 must be less than slow_period=30"),
        ("macd", {"fast_period": 26, "slow_period": "12"}, "fast_period=26 must be less than slow_period=12"),
        ("rsi", {"period": 14}, "unknown parameter 'period' for strategy 'rsi'; allowed: rsi_period, oversold_threshold, overbought_threshold"),
        ("buy_and_hold", {"fast_period": 3}, "unknown parameter 'fast_period': strategy 'buy_and_hold' takes no parameters"),
        ("foo", {}, "unknown strategy 'foo'; choose one of: bollinger, buy_and_hold, ma_crossover, macd, rsi"),
    ],
)
def test_bad_parameters_fail_with_a_message_naming_them(strategy, overrides, message):
    with pytest.raises(PipelineError) as exc_info:
        strategies.resolve_params(get_strategy(strategy), overrides)
    assert message in str(exc_info.value)


def test_unknown_strategy_is_an_error_at_the_edge_that_resolves_it():
    # Past the edge a Strategy object travels: the one lookup is where a name is met.
    for call in (lambda: strategies.get_strategy("sma"), lambda: options.resolve_strategy("sma")):
        with pytest.raises(PipelineError, match="unknown strategy 'sma'"):
            call()


def test_range_specs_include_the_stop_when_it_lies_on_the_grid_and_are_float_safe():
    grid = strategies.parse_grid(get_strategy("bollinger"), ["bb_std=0.1:0.7:0.2"])
    assert [g["bb_std"] for g in grid] == [0.1, 0.3, 0.5, 0.7]
    grid = strategies.parse_grid(get_strategy("bollinger"), ["bb_std=1:2:0.3"])
    assert [g["bb_std"] for g in grid] == [1.0, 1.3, 1.6, 1.9]
    grid = strategies.parse_grid(get_strategy("rsi"), ["rsi_period=10:20:5"])
    assert [g["rsi_period"] for g in grid] == [10, 15, 20]
    assert all(g["oversold_threshold"] == 30.0 and g["overbought_threshold"] == 70.0 for g in grid)


def test_value_lists_and_defaults_combine_into_the_cartesian_product():
    grid = strategies.parse_grid(get_strategy("macd"), ["fast_period=8,12", "signal_period=5:9:2"])
    assert grid == [
        {"fast_period": f, "slow_period": 26, "signal_period": s} for f in (8, 12) for s in (5, 7, 9)
    ]
    assert grid.dropped == 0
    assert strategies.parse_grid(get_strategy("buy_and_hold"), []) == [{}]
    assert strategies.parse_grid(get_strategy("rsi"), []) == [strategies.resolve_params(get_strategy("rsi"), {})]


def test_invalid_combinations_are_dropped_and_counted():
    grid = strategies.parse_grid(get_strategy("ma_crossover"), ["fast_period=5:30:5", "slow_period=10,20,30"])
    assert len(grid) == 9 and grid.dropped == 9
    assert all(g["fast_period"] < g["slow_period"] for g in grid)
    assert "must be less than slow_period" in grid.dropped_example
    grid = strategies.parse_grid(get_strategy("rsi"), ["oversold_threshold=20,60,80"])
    assert [g["oversold_threshold"] for g in grid] == [20.0, 60.0] and grid.dropped == 1


@pytest.mark.parametrize(
    ("strategy", "specs", "message"),
    [
        ("rsi", ["rsi_period"], "bad grid spec 'rsi_period': expected name=start:stop:step"),
        ("rsi", ["rsi_period="], "bad grid spec 'rsi_period=': no values"),
        ("rsi", ["rsi_period=1:5:1"], "bad grid spec 'rsi_period=1:5:1': rsi_period=1 is out of range"),
        ("rsi", ["rsi_period=5:1:1"], "bad grid spec 'rsi_period=5:1:1': stop is below start"),
        ("rsi", ["rsi_period=2:10:0"], "bad grid spec 'rsi_period=2:10:0': step must be > 0"),
        ("rsi", ["rsi_period=2:10:1.5"], "rsi_period=3.5 is not an integer"),
        ("rsi", ["rsi_period=2:10"], "bad grid spec 'rsi_period=2:10': a range is start:stop:step"),
        ("rsi", ["rsi_period=a,b"], "bad grid spec 'rsi_period=a,b': 'a' is not a number"),
        ("rsi", ["rsi_period=nan"], "bad grid spec 'rsi_period=nan'"),
        ("rsi", ["rsi_period=3", "rsi_period=4"], "rsi_period is given more than once"),
        ("rsi", ["window=3"], "unknown parameter 'window' for strategy 'rsi'"),
        ("rsi", ["oversold_threshold=80,90"], "no valid combination in the grid"),
        ("ma_crossover", ["fast_period=1:2000000:1"], "more than 1000000"),
    ],
)
def test_bad_grid_specs_fail_with_a_message_naming_them(strategy, specs, message):
    with pytest.raises(PipelineError) as exc_info:
        strategies.parse_grid(get_strategy(strategy), specs)
    assert message in str(exc_info.value)


def test_combos_matrix_groups_combos_sharing_an_indicator_and_flags_recomputes():
    params_list = [
        {"rsi_period": 14, "oversold_threshold": 30},
        {"rsi_period": 7, "oversold_threshold": 25},
        {"rsi_period": 14, "oversold_threshold": 20},
        {"rsi_period": 7, "oversold_threshold": 35},
    ]
    combos, recompute, order = strategies.combos_matrix(get_strategy("rsi"), params_list)
    assert combos.shape == (4, 3) and combos.dtype == np.float64
    assert combos.flags.c_contiguous
    np.testing.assert_array_equal(combos[:, 0], [7, 7, 14, 14])
    np.testing.assert_array_equal(recompute, [True, False, True, False])
    for i, j in enumerate(order):
        resolved = strategies.resolve_params(get_strategy("rsi"), params_list[j])
        np.testing.assert_array_equal(combos[i, :3], list(resolved.values()))


def test_combos_matrix_recomputes_whenever_any_indicator_parameter_changes():
    grid = strategies.parse_grid(get_strategy("bollinger"), ["bb_period=10,20", "bb_std=1,2,3"])
    combos, recompute, _ = strategies.combos_matrix(get_strategy("bollinger"), grid)
    np.testing.assert_array_equal(recompute, [True, False, False, True, False, False])
    grid = strategies.parse_grid(get_strategy("macd"), ["signal_period=5,9"])
    _, recompute, _ = strategies.combos_matrix(get_strategy("macd"), grid)
    np.testing.assert_array_equal(recompute, [True, True])
    _, recompute, _ = strategies.combos_matrix(get_strategy("buy_and_hold"), [{}, {}])
    np.testing.assert_array_equal(recompute, [True, False])


def test_combos_matrix_validates_every_parameter_set():
    with pytest.raises(PipelineError, match="fast_period=40 must be less than slow_period=30"):
        strategies.combos_matrix(get_strategy("ma_crossover"), [{"fast_period": 5}, {"fast_period": 40}])


@pytest.mark.parametrize(
    ("strategy", "params", "bars"),
    [
        ("rsi", {}, 16),
        ("rsi", {"rsi_period": 2}, 4),
        ("ma_crossover", {}, 31),
        ("bollinger", {"bb_period": 5}, 6),
        ("macd", {}, 35),
        ("macd", {"fast_period": 3, "slow_period": 5, "signal_period": 2}, 7),
        ("buy_and_hold", {}, 1),
    ],
)
def test_warmup_bars_per_strategy(strategy, params, bars):
    assert strategies.warmup_bars(get_strategy(strategy), params) == bars


def test_indicator_labels_name_the_value_in_the_trade_log():
    labels = {name: get_strategy(name).indicator_label for name in strategies.strategy_names()}
    assert labels == {
        "rsi": "rsi", "ma_crossover": "fast_sma", "bollinger": "bollinger_band",
        "macd": "macd", "buy_and_hold": "close",
    }
