"""`cryptobt demo` on empty caches: it says that Numba compiles first, and a second process compiles the
kernels of its last runs meanwhile (`demo.compile_ahead`), writing nothing and gone when the demo ends."""

from __future__ import annotations

import io
import os

from rich.console import Console


def _files(root):
    """Every file under root with its mtime, but the readers' pins (.readers/*.lock, which every read of a
    snapshot takes so that a vacuum spares it)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.parent.name != ".readers"}


def test_compiling_ahead_makes_the_demos_sweep_then_its_runs_in_reverse_on_two_symbols_and_writes_nothing(
        build_lake, tmp_path, monkeypatch):
    from pipeline import demo, runs

    root = build_lake(6, 0.3, None, demo.DEFAULT_FUTURES)
    before = _files(root.parent)
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("CRYPTOBT_GRID_CACHE", "0")  # as _start_compiling_ahead runs it
    made = []
    backtest, curves = runs.backtest, runs.equity_curves

    def recorded_backtest(settings, config, symbols, interval, **kwargs):
        made.append((config, tuple(symbols)))
        return backtest(settings, config, symbols, interval, **kwargs)

    def recorded_curves(settings, config, symbols, interval, **kwargs):
        made.append(("curves", tuple(symbols)))
        return curves(settings, config, symbols, interval, **kwargs)

    monkeypatch.setattr(runs, "backtest", recorded_backtest)
    monkeypatch.setattr(runs, "equity_curves", recorded_curves)
    demo.compile_ahead(str(root))

    perpetual = "XRP_USDT_USDT:futures"
    spot = tuple(sorted(s for s in demo.lake.require_snapshot(root).symbols if s != perpetual)[:2])
    configs = demo.demo_runs()
    runs_made = [("sweep", configs.pop("sweep")), *reversed(configs.items())]
    assert [key for key, _ in runs_made[:3]] == ["sweep", "futures 50x cross", "futures 3x isolated"]
    assert made == [("curves", spot[:1])] + [(c, (perpetual,) if c.market == "futures" else spot) for _, c in runs_made]
    assert _files(root.parent) == before and not (tmp_path / "results").exists()


def test_a_demo_on_empty_caches_says_so_and_its_helper_is_gone_when_it_ends(tmp_path, monkeypatch):
    from pipeline import demo
    from pipeline.engine.strategies import compiler

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(compiler, "compiled_before", lambda strategy: False)  # as on a fresh clone
    helpers = []
    start = demo._start_compiling_ahead
    monkeypatch.setattr(demo, "_start_compiling_ahead", lambda root: helpers.append(start(root)) or helpers[-1])
    out = io.StringIO()
    console = Console(file=out, width=200)
    demo.run_demo(tmp_path / "data", None, 6, 0.3, console=console, err_console=console)
    printed = out.getvalue()
    assert "first run on this machine: Numba compiles each kernel once" in printed
    assert "demo finished in" in printed
    (helper,) = helpers
    assert helper is not None and helper.poll() is not None  # killed or finished: not left running
    assert helper.args[-1].startswith("from pipeline.demo import compile_ahead")
    assert os.path.isfile(tmp_path / "data" / "plots" / "rsi.png")
