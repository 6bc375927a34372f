"""A/B timing of the simulation kernels: `simulate_1d` and `simulate_portfolio` as they are in the
work tree (B) against the same files at a git revision (A, default main), on the same synthetic
data, in one process.

    python -m bench.kernels_ab                     # both kernels, every case, 7 rounds
    python -m bench.kernels_ab --before HEAD~1 --repeat 9 --kernel simulate_1d

Why one process, interleaved: the machine is shared, so two runs minutes apart see different loads.
Each round times A then B (B then A on odd rounds), and every sample is the CPU time of this thread
(time.thread_time: time spent waiting for a core does not count), so a busy neighbour costs both
versions alike. The figure kept is each version's median of the rounds, and the ratio B / A of the
medians; the spread (max / min - 1 of a version's samples) says how much noise there was.

A's files are read with `git show` and imported under their own module names; their absolute imports
(enums, blocks, and the portfolio's add_return) resolve to the work tree's, which a split leaves
alone. Before timing, both versions' outputs on every case are compared: a split must not change a
number (NaN equals NaN, bit for bit otherwise).

Prices are pipeline.source.synthetic's (bench/scaling.py's seed); signals are drawn at random with a
fixed seed (the kernels take any booleans), a few percent of the bars, so that trades, stops and the
closed-trade statistics all run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
KERNEL_FILES = {"simulate_1d": "pipeline/engine/kernels/simulate.py",
                "simulate_portfolio": "pipeline/engine/kernels/portfolio.py"}


def load_revision(revision: str, kernel: str, folder: Path) -> ModuleType:
    """The kernel's module as it is at `revision`, imported from a copy under a name of its own."""
    path = KERNEL_FILES[kernel]
    source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    name = f"_kernels_ab_{revision.replace('~', '_').replace('^', '_').replace('/', '_')}_{Path(path).stem}"
    copy = folder / f"{name}.py"
    copy.write_text(source)
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_work_tree(kernel: str) -> ModuleType:
    return importlib.import_module(KERNEL_FILES[kernel].removesuffix(".py").replace("/", "."))


def synthetic_bars(rng: np.random.Generator, hours: int) -> dict[str, np.ndarray]:
    """One symbol's open, high, low and close (pipeline.source.synthetic, gaps dropped)."""
    from pipeline.source import synthetic

    frame = synthetic.generate_symbol(rng, hours, synthetic.DEFAULT_END - timedelta(hours=hours))
    return {c: frame[c].to_numpy() for c in ("open", "high", "low", "close")}


def random_signals(rng: np.random.Generator, shape, rate: float) -> tuple[np.ndarray, np.ndarray]:
    return rng.random(shape) < rate, rng.random(shape) < rate


# A case: (name, arguments builder, how many calls make one sample). The builder returns a fresh set of
# arguments for one call (output arrays included) and the names of the outputs to compare.
Case = tuple[str, Callable[[], tuple[tuple, tuple[int, ...]]], int]


def simulate_1d_cases(hours: int) -> list[Case]:
    from pipeline.engine.kernels import enums
    from pipeline.engine.kernels.blocks import N_BLOCK_STATS

    rng = np.random.default_rng(SEED)
    symbols = []
    while len(symbols) < 4:  # four symbols listed long enough to matter
        bars = synthetic_bars(rng, hours)
        if bars["close"].size > hours // 2:
            symbols.append(bars)
    signals = [random_signals(rng, b["close"].size, 0.03) for b in symbols]
    stops = np.zeros(enums.N_EXECUTION)
    stops[[enums.EX_SL, enums.EX_TP, enums.EX_TRAIL, enums.EX_SIZE, enums.EX_SLIPPAGE]] = 0.04, 0.08, 1.0, 0.5, 0.001
    fractions = np.linspace(0.0, 1.0, 17)

    def case(i: int, fill_next_open: bool, with_log: bool, execution, with_blocks: bool):
        def build():
            b, (entries, exits) = symbols[i], signals[i]
            n = b["close"].size
            metrics = np.zeros(enums.N_METRICS)
            equity = np.zeros(n if with_log else 0)
            trades = np.zeros(n if with_log else 0, dtype=enums.TRADE_DTYPE)
            blocks = np.zeros((fractions.size - 1, N_BLOCK_STATS))
            args = (b["open"], b["close"], entries, exits, b["close"], 0.001, 1000.0, fill_next_open, 8760.0,
                    metrics, equity, trades, b["high"], b["low"], execution,
                    fractions if with_blocks else None, blocks if with_blocks else None)
            return args, (9, 10, 11, 16)
        return build

    cases: list[Case] = []
    for name, fill_next_open, with_log, execution, with_blocks in (
        ("sweep: metrics only, close fills", False, False, None, False),
        ("sweep: metrics + 16 blocks, next-open fills", True, False, None, True),
        ("backtest: stops, size, slippage, trades + equity", False, True, stops, False),
        ("backtest: stops, next-open, trades + equity + blocks", True, True, stops, True),
    ):
        for i in range(len(symbols)):
            cases.append((f"{name} [symbol {i}]", case(i, fill_next_open, with_log, execution, with_blocks), 20))
    return cases


def simulate_portfolio_cases(hours: int, n_symbols: int) -> list[Case]:
    from pipeline.engine.kernels import enums
    from pipeline.engine.kernels import portfolio as pk

    rng = np.random.default_rng(SEED)
    open2d = np.full((n_symbols, hours), np.nan)
    close2d = np.full((n_symbols, hours), np.nan)
    for s in range(n_symbols):  # each symbol's bars at the end of the grid (late listings leave NaN before)
        b = synthetic_bars(rng, hours)
        open2d[s, hours - b["close"].size:] = b["open"]
        close2d[s, hours - b["close"].size:] = b["close"]
    entries, exits = random_signals(rng, close2d.shape, 0.01)
    rank = rng.random(close2d.shape)

    def case(max_open: int, fraction: bool, stake: float, fill_next_open: bool, with_log: bool):
        def build():
            metrics = np.zeros(enums.N_PORTFOLIO_METRICS)
            contrib = np.zeros((n_symbols, pk.N_CONTRIB))
            equity = np.zeros(hours if with_log else 0)
            trades = np.zeros(int(entries.sum()) if with_log else 0, dtype=pk.PORTFOLIO_TRADE_DTYPE)
            args = (open2d, close2d, entries, exits, rank, max_open, fraction, stake, 0.001, 0.0005, 10_000.0,
                    fill_next_open, 8760.0, metrics, contrib, equity, trades)
            return args, (13, 14, 15, 16)
        return build

    return [
        ("5 slots, 20 % stakes, close fills, trades + equity", case(5, True, 0.2, False, True), 5),
        ("5 slots, 20 % stakes, next-open fills", case(5, True, 0.2, True, False), 5),
        (f"{n_symbols} slots, 500 cash stakes, close fills", case(n_symbols, False, 500.0, False, False), 5),
    ]


def _same(a, b) -> bool:
    if a.dtype.names:
        return all(_same(a[f], b[f]) for f in a.dtype.names)
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def check_equal(kernel_a, kernel_b, cases: list[Case]) -> None:
    """Both versions give the same return value and outputs on every case, or exit naming the case."""
    for name, build, _ in cases:
        (args_a, outputs), (args_b, _) = build(), build()
        got_a, got_b = kernel_a(*args_a), kernel_b(*args_b)
        differ = [i for i in outputs if args_a[i] is not None and not _same(args_a[i], args_b[i])]
        if got_a != got_b or differ:
            sys.exit(f"kernels_ab: A and B differ on {name!r} (return {got_a} vs {got_b}, outputs {differ})")


def sample(kernel, cases: list[Case]) -> float:
    """CPU seconds of this thread for one pass over every case (each called its number of times)."""
    prepared = [(build()[0], calls) for _, build, calls in cases]
    start = time.thread_time()
    for args, calls in prepared:
        for _ in range(calls):
            kernel(*args)
    return time.thread_time() - start


def compare(kernel_a, kernel_b, cases: list[Case], repeat: int) -> dict:
    check_equal(kernel_a, kernel_b, cases)  # also compiles (or loads) both
    samples: dict[str, list[float]] = {"A": [], "B": []}
    for round_ in range(repeat):
        order = (("A", kernel_a), ("B", kernel_b)) if round_ % 2 == 0 else (("B", kernel_b), ("A", kernel_a))
        for label, kernel in order:
            samples[label].append(sample(kernel, cases))
    median = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: max(v) / min(v) - 1.0 for k, v in samples.items()}
    return {"median_a": median["A"], "median_b": median["B"], "ratio": median["B"] / median["A"],
            "spread_a": spread["A"], "spread_b": spread["B"], "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision of A (default main)")
    parser.add_argument("--kernel", choices=(*KERNEL_FILES, "all"), default="all")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (each times A and B once; >= 5)")
    parser.add_argument("--hours", type=int, default=50_000, help="hourly bars per symbol (simulate_1d)")
    parser.add_argument("--portfolio-hours", type=int, default=20_000)
    parser.add_argument("--portfolio-symbols", type=int, default=40)
    args = parser.parse_args(argv)
    if args.repeat < 5:
        parser.error(f"--repeat {args.repeat}: a median needs at least 5 rounds")
    kernels = list(KERNEL_FILES) if args.kernel == "all" else [args.kernel]
    with tempfile.TemporaryDirectory(prefix="kernels-ab-") as folder:
        for kernel in kernels:
            before = getattr(load_revision(args.before, kernel, Path(folder)), kernel)
            after = getattr(load_work_tree(kernel), kernel)
            if kernel == "simulate_1d":
                cases = simulate_1d_cases(args.hours)
            else:
                cases = simulate_portfolio_cases(args.portfolio_hours, args.portfolio_symbols)
            r = compare(before, after, cases, args.repeat)
            print(f"{kernel}: A = {args.before}, B = work tree; {len(cases)} cases, {args.repeat} rounds, "
                  f"same outputs on every case")
            print(f"  median CPU s per round: A {r['median_a']:.4f}  B {r['median_b']:.4f}  "
                  f"B/A {r['ratio']:.3f}  (spread A {r['spread_a']:.1%}, B {r['spread_b']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
