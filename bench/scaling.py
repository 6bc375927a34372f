"""Scaling of the kernel (issue 17): a single RSI run and a 1,000-combination RSI sweep over
synthetic hourly prices, at 50, 211 and 1,000 symbols (5 years) and at 1, 5 and 10 years
(211 symbols); time, bar-steps/s, cost per bar-step and peak RSS of each cell.

    python -m bench.scaling                 # the full table (a few minutes on 2 cores)
    python -m bench.scaling --quick         # reduced scale, for development and smoke tests
    python -m bench.run --scaling           # the same table at the end of the benchmark

Prices are pipeline.source.synthetic's market (same seed, same market), laid on the hourly grid the
lake reader hands the kernel (NaN where a symbol has no bar: before its listing, in an
outage). Each cell runs through the engine's own entry point, `engine.run_metrics`, as
bench/run.py measures its kernel rows, in a fresh process of its own so that its peak RSS
is the cell's: the child reports VmHWM, the high-water mark of its own address space (the
ru_maxrss of a child forked from a large parent keeps the parent's size, see
bench.run.bench_cold_cli). The generated prices are cached in bench/.work/scaling as .npy
files, which the child loads whole (as a lake read would fill its arrays).

A bar-step is one bar of one symbol simulated for one parameter set (missing bars are no
bar-steps); the cost per bar-step is the kernel's time over bar-steps. Writes a section
of bench/RESULTS.md (replacing the previous one) and the "scaling" key of
bench/results.json; bench/run.py keeps the section when it rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "scaling"
SEED = 42
FULL = {"symbols": (50, 211, 1000), "years": (1.0, 5.0, 10.0), "base_symbols": 211, "base_years": 5.0,
        "combos": 1000}
QUICK = {"symbols": (10, 21, 100), "years": (0.25, 1.0, 2.0), "base_symbols": 21, "base_years": 1.0,
         "combos": 64}
SECTION = "## Scaling"


def grid_specs(combos: int) -> list[str]:
    """An RSI sweep of about `combos` sets: k values of each parameter over bench/run.py's ranges
    (k = 10 is that grid exactly: 1,000 sets, 10 distinct RSI periods)."""
    k = max(1, round(combos ** (1 / 3)))
    if k == 10:
        return ["rsi_period=5:50:5", "oversold_threshold=15:42:3", "overbought_threshold=60:87:3"]

    def spread(first: int, last: int) -> str:
        values = sorted({round(first + (last - first) * i / max(k - 1, 1)) for i in range(k)})
        return ",".join(str(v) for v in values)

    return [f"rsi_period={spread(5, 50)}", f"oversold_threshold={spread(15, 42)}",
            f"overbought_threshold={spread(60, 87)}"]


# ---------------------------------------------------------------- the children's side

def generate(n_symbols: int, years: float, out: Path) -> None:
    """pipeline.source.synthetic's market of `n_symbols` x `years` (generate_market's symbols, drawn in the
    same order from the same seed) on the hourly grid, saved as open.npy, close.npy and times.npy.
    Symbol by symbol onto the grid: generate_market's one frame of every bar would take ~2 GB at
    1,000 symbols x 5 years."""
    import numpy as np

    from pipeline.source import synthetic

    hours = int(round(years * synthetic.HOURS_PER_YEAR))
    start = synthetic.DEFAULT_END - timedelta(hours=hours)
    rng = np.random.default_rng(SEED)
    open_ = np.full((n_symbols, hours), np.nan)
    close = np.full((n_symbols, hours), np.nan)
    start_us = int(start.timestamp()) * 1_000_000
    for i in range(n_symbols):
        frame = synthetic.generate_symbol(rng, hours, start)
        at = (frame["ts"].dt.epoch("us").to_numpy() - start_us) // 3_600_000_000
        open_[i, at] = frame["open"].to_numpy()
        close[i, at] = frame["close"].to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "open.npy", open_)
    np.save(out / "close.npy", close)
    np.save(out / "times.npy", int(start.timestamp()) + 3600 * np.arange(hours, dtype=np.int64))


def _load_batch(data: Path):
    """The saved prices as the PriceBatch a lake read hands the kernel."""
    import numpy as np

    return _batch(np.load(data / "open.npy"), np.load(data / "close.npy"), np.load(data / "times.npy"))


def _batch(open_, close, times):
    import numpy as np

    from pipeline.lake.reader import PriceBatch
    from pipeline.source import synthetic

    names = synthetic.symbol_names(close.shape[0])
    return PriceBatch(snapshot_id="synthetic", interval="1h", symbols=names, times=times,
                      columns={"open": open_, "close": close}, data_versions=["synthetic"] * len(names),
                      bars=(~np.isnan(close)).sum(axis=1))


def _part(batch, n_symbols: int, hours: int | None = None):
    """The first `n_symbols` symbols (and the last `hours` hours) of `batch`, copied: contiguous rows."""
    rows, cols = slice(n_symbols), slice(-hours if hours else None, None)
    return _batch(batch.columns["open"][rows, cols].copy(), batch.columns["close"][rows, cols].copy(),
                  batch.times[cols].copy())


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


# Bytes a bar of one symbol's kernel buffers (pipeline.engine.kernels.strategy_kernel._symbol_buffers for RSI):
# open, close, grid index, the indicator's close, the RSI and the signal value at 8 bytes, entries and exits at 1.
BUFFER_BYTES_PER_BAR = 6 * 8 + 2
SUBSET = 20  # symbols of the single-thread sweep measured in every sweep cell (the same 20 at 50, 211, 1,000)


def _static_imbalance(bars, threads: int) -> float:
    """Bars of the busiest thread over the mean, when the symbols are split into `threads` contiguous
    chunks of equal count, as numba's prange splits them (chunk size 0, the default)."""
    import numpy as np

    chunks = [int(c.sum()) for c in np.array_split(bars, threads)]
    return max(chunks) / (sum(chunks) / threads) if sum(chunks) else 1.0


def _with_cpu(fn, threads: int):
    """fn()'s result, the CPU seconds it took and the share of `threads` cores it got (CPU time over wall
    time x threads). On one thread, the calling thread's own CPU time (numba runs a 1-thread parallel
    region there; idle OpenMP workers spinning after a 2-thread region would count in the process's); on
    more, the process's, which idle spinning can only raise. A share well below 1 means other processes
    held the cores: a loaded machine."""
    clock = time.thread_time if threads == 1 else time.process_time
    cpu, t = clock(), time.perf_counter()
    result = fn()
    cpu, wall = clock() - cpu, time.perf_counter() - t
    return result, cpu, cpu / (wall * threads)


def measure_cell(kind: str, data: Path, combos: int, repeat: int) -> dict:
    """One cell in this (fresh) process: the kernel timed warm, then this process's peak RSS.

    Beside the cell's figure, what explains a cost per bar-step that is not flat: the run on one
    thread (parallel speed-up) and the fixed cost of a call (one symbol, 200 bars); for a sweep,
    the first SUBSET symbols swept on one thread (no scheduling, same symbols in every symbol count)."""
    import numba

    from bench.timing import timed
    from pipeline.engine import batch as engine
    from pipeline.engine import options, strategies

    t = time.perf_counter()
    batch = _load_batch(data)
    load_seconds = time.perf_counter() - t
    bars = int(batch.bars.sum())
    threads = numba.config.NUMBA_NUM_THREADS
    small = _part(batch, 2)
    found: dict = {"threads": threads, "imbalance": _static_imbalance(batch.bars, threads),
                   "symbol_buffers_mb": int(batch.bars.max()) * BUFFER_BYTES_PER_BAR / 2**20}
    if kind == "run":
        config = options.run_config(strategies.get_strategy("rsi"), {})
        engine.run_metrics(small, config)  # loads (or compiles) the kernel
        rss_before = _memory_kb("VmRSS") / 1024
        stats, _, share = _with_cpu(lambda: timed(lambda: engine.run_metrics(batch, config), repeat), threads)
        tiny = _part(batch, 1, 200)
        call = timed(lambda: engine.run_metrics(tiny, config), 100)
        numba.set_num_threads(1)
        one_calls = max(1, repeat // 2)
        one, one_cpu, one_share = _with_cpu(lambda: timed(lambda: engine.run_metrics(batch, config), one_calls), 1)
        call_one = timed(lambda: engine.run_metrics(tiny, config), 100)
        numba.set_num_threads(threads)
        sets = 1
        found.update(one_thread_seconds=one["median"], parallel_speedup=one["median"] / stats["median"],
                     one_thread_cpu_ns_per_bar_step=one_cpu / (one_calls + 1) / bars * 1e9,  # + the warm-up call
                     call_overhead_us=call["median"] * 1e6, call_overhead_one_thread_us=call_one["median"] * 1e6)
    else:
        rsi = strategies.get_strategy("rsi")
        config = options.run_config(rsi, strategies.parse_grid(rsi, grid_specs(combos)))
        engine.run_metrics(small, config)
        rss_before = _memory_kb("VmRSS") / 1024
        stats, _, share = _with_cpu(lambda: timed(lambda: engine.run_metrics(batch, config), repeat, warmup=0),
                                    threads)
        sets = len(config.params_list)
        subset = _part(batch, min(SUBSET, len(batch.symbols)))
        subset_steps = int(subset.bars.sum()) * sets
        numba.set_num_threads(1)
        one, one_cpu, one_share = _with_cpu(lambda: timed(lambda: engine.run_metrics(subset, config), 1, warmup=0), 1)
        numba.set_num_threads(threads)
        found.update(specs=grid_specs(combos), subset_symbols=len(subset.symbols),
                     subset_one_thread_ns_per_bar_step=one["median"] / subset_steps * 1e9,
                     one_thread_cpu_ns_per_bar_step=one_cpu / subset_steps * 1e9)
    found.update(cpu_share=share, one_thread_cpu_share=one_share)
    steps = bars * sets
    return {"kind": kind, "symbols": len(batch.symbols), "hours": int(batch.times.size), "combos": sets,
            "bars": bars, "grid_cells": int(batch.columns["close"].size),
            "bar_share": bars / batch.columns["close"].size,
            "input_mb": (batch.columns["open"].nbytes + batch.columns["close"].nbytes) / 2**20,
            "load_seconds": load_seconds, "seconds": stats["median"], "min": stats["min"], "max": stats["max"],
            "n": stats["n"], "bar_steps": steps, "bar_steps_per_second": steps / stats["median"],
            "ns_per_bar_step": stats["median"] / steps * 1e9, "rss_before_kernel_mb": rss_before,
            "peak_rss_mb": _memory_kb("VmHWM") / 1024,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cube_mb": len(batch.symbols) * sets * _n_metrics() * 8 / 2**20, **found}


def _n_metrics() -> int:
    from pipeline.engine.kernels import enums

    return enums.N_METRICS


# ---------------------------------------------------------------- the parent's side

def _child(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "bench.scaling", *args], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench.scaling {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def dataset(n_symbols: int, years: float, work: Path) -> Path:
    """The cached prices of `n_symbols` x `years`, generated (in a child process) if missing."""
    path = work / f"market-{n_symbols}x{years:g}y-seed{SEED}"
    if not (path / "times.npy").exists():
        _child(["--generate", str(n_symbols), str(years), str(path)])
    return path


def run_scaling(preset: dict, work: Path = WORK, combos: int | None = None, log=print) -> dict:
    """Every cell of the table, each in a fresh child process; the table's data."""
    combos = preset["combos"] if combos is None else combos
    shapes = [(n, preset["base_years"]) for n in preset["symbols"]]
    shapes += [(preset["base_symbols"], y) for y in preset["years"] if (preset["base_symbols"], y) not in shapes]
    started = time.perf_counter()
    cells = []
    for n_symbols, years in shapes:
        t = time.perf_counter()
        data = dataset(n_symbols, years, work)
        generated = time.perf_counter() - t
        for kind in ("run", "sweep"):
            repeat = 5 if kind == "run" else 1
            cell = json.loads(_child(["--cell", kind, str(data), "--combos", str(combos), "--repeat", str(repeat)])
                              .strip().splitlines()[-1])
            cell.update(years=years, generate_seconds=generated)
            cells.append(cell)
            log(f"  {kind:5} {n_symbols:>5} symbols x {years:g} y: {cell['seconds']:.3f} s, "
                f"{cell['ns_per_bar_step']:.2f} ns/bar-step, peak RSS {cell['peak_rss_mb']:.0f} MB")
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "combos": combos, "preset": preset,
            "cells": cells, "wall_seconds": time.perf_counter() - started,
            "load_average": os.getloadavg()}


def _cells(s: dict, kind: str) -> list[dict]:
    return [c for c in s["cells"] if c["kind"] == kind]


def _l2_bytes() -> int | None:
    """This machine's L2 cache per core (Linux sysfs), if it says."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size[:-1]) * {"K": 2**10, "M": 2**20}[size[-1]]
        except (OSError, ValueError, KeyError):
            continue
    return None


def report_lines(s: dict) -> list[str]:
    """The RESULTS.md section (starting with SECTION)."""
    preset = s["preset"]
    sweeps_all = _cells(s, "sweep")
    sets = sweeps_all[0]["combos"] if sweeps_all else s["combos"]
    heading = (f"{SECTION}: RSI run and {sets:,}-combination RSI sweep, synthetic hourly prices" +
               ("" if sets >= 1000 else f" (sweep cells with {sets:,} combinations, not 1,000)"))
    runs = {(c["symbols"], c["years"]): c for c in _cells(s, "run")}
    sweeps = {(c["symbols"], c["years"]): c for c in sweeps_all}
    threads = next(iter(runs.values()))["threads"] if runs else 0
    lines = [heading, "",
             f"Measured {s['date']} (load average {s['load_average'][0]:.1f} at the end; the whole table took "
             f"{s['wall_seconds']:.0f} s with data generation). `python -m bench.scaling`: each cell in a fresh "
             f"process, `engine.run_metrics` on {threads} threads, warm (run: median of 5; sweep: one call after a "
             f"2-symbol warm-up). A bar-step is one bar of one symbol for one parameter set (a missing hour is "
             f"none). Peak RSS is the cell process's own high-water mark (VmHWM) with its inputs (open and close, "
             f"float64) loaded; in brackets what the process held before the kernel ran.", "",
             "| symbols x years | bars (grid share) | run | run bar-steps/s | run ns/bar-step | run peak RSS "
             "| sweep | sweep bar-steps/s | sweep ns/bar-step | sweep peak RSS (metrics cube) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base_key = (preset["base_symbols"], preset["base_years"])
    for key, r in runs.items():
        w = sweeps.get(key)
        row = (f"| {key[0]:,} x {key[1]:g}{' (base)' if key == base_key else ''} | {r['bars'] / 1e6:,.2f} M "
               f"({100 * r['bar_share']:.0f} %) | {r['seconds'] * 1000:,.1f} ms | "
               f"{r['bar_steps_per_second'] / 1e6:,.0f} M | {r['ns_per_bar_step']:.2f} | {r['peak_rss_mb']:,.0f} MB "
               f"({r['rss_before_kernel_mb']:,.0f}) |")
        row += (f" {w['seconds']:,.2f} s | {w['bar_steps_per_second'] / 1e6:,.0f} M | {w['ns_per_bar_step']:.2f} | "
                f"{w['peak_rss_mb']:,.0f} MB ({w['cube_mb']:,.0f} MB) |" if w else " | | | |")
        lines.append(row)
    l2 = _l2_bytes()
    lines += ["", "What moves the cost per bar-step, measured in the same cells: the run on one thread and the "
              f"sweep of the first {SUBSET} symbols (the same {SUBSET} at every symbol count) on one thread, as wall "
              f"time and, in brackets, as the computing thread's own CPU time per bar-step (the kernel's cost "
              f"whatever else holds the core); the run's speed-up from 1 to {threads} threads; the bars of the "
              f"busiest thread over the mean when prange splits the symbols into {threads} contiguous chunks of "
              f"equal count (numba's default; 1.00 = even); the kernel buffers of the longest symbol "
              f"({BUFFER_BYTES_PER_BAR} bytes a bar) beside the L2 cache of a core"
              f"{f' ({l2 / 2**20:g} MB)' if l2 else ''}; the fixed cost of a call (one symbol, 200 bars; median of "
              f"100); the share of its cores each cell process got while timed (CPU time over wall time x threads: "
              f"well below 1 = other processes held the cores).", "",
              "| symbols x years | run, 1 thread: ns/bar-step (CPU) | run speed-up | busiest thread's bars / mean | "
              f"sweep, {SUBSET} symbols, 1 thread: ns/bar-step (CPU) | buffers of the longest symbol | fixed cost of "
              f"a call ({threads} / 1 threads) | cores' time got: run / sweep |",
              "|---|---|---|---|---|---|---|---|"]
    for key, r in runs.items():
        w = sweeps.get(key)
        sweep_cost = f"{_one_thread_ns(w):.2f} ({_one_thread_cpu_ns(w):.2f})" if w else ""
        lines.append(f"| {key[0]:,} x {key[1]:g} | {_one_thread_ns(r):.2f} ({_one_thread_cpu_ns(r):.2f}) | "
                     f"{r['parallel_speedup']:.2f}x | {r['imbalance']:.2f} | {sweep_cost} | "
                     f"{r['symbol_buffers_mb']:.2f} MB | {r['call_overhead_us']:,.0f} / "
                     f"{r['call_overhead_one_thread_us']:,.0f} us | "
                     f"{r['cpu_share']:.2f} / {w['cpu_share'] if w else float('nan'):.2f} |")
    lines += ["", *flatness_lines(s)]
    return lines


def _one_thread_ns(cell: dict) -> float:
    """A cell's cost per bar-step on one thread: the whole run, or the sweep of its first SUBSET symbols."""
    if cell["kind"] == "run":
        return cell["one_thread_seconds"] / cell["bar_steps"] * 1e9
    return cell["subset_one_thread_ns_per_bar_step"]


def _one_thread_cpu_ns(cell: dict) -> float:
    """The same in the computing thread's CPU time: the kernel's own cost, whatever else held the core."""
    return cell["one_thread_cpu_ns_per_bar_step"]


def _spread(values: list[float]) -> float:
    return max(values) / min(values)


FLAT = 1.15  # "flat": the largest cost per bar-step along an axis within 15 % of the smallest


def flatness_lines(s: dict) -> list[str]:
    """Along each axis, run and sweep: the cost per bar-step, whether it is flat, and where it is not,
    which of the measured figures goes with it. Each clause is triggered by a measured figure and quotes
    it; nothing is said that the cells did not measure."""
    preset = s["preset"]
    l2 = _l2_bytes()
    out = []
    axes = {"symbols": lambda c: c["years"] == preset["base_years"],
            "years": lambda c: c["symbols"] == preset["base_symbols"]}
    runs = {(c["symbols"], c["years"]): c for c in _cells(s, "run")}
    for kind in ("run", "sweep"):
        for axis, keep in axes.items():
            cells = sorted((c for c in _cells(s, kind) if keep(c)), key=lambda c: c[axis])
            if len(cells) < 2:
                continue
            threads = cells[0]["threads"]
            costs = [c["ns_per_bar_step"] for c in cells]
            figures = ", ".join(f"{c[axis]:g}: {c['ns_per_bar_step']:.2f}" for c in cells)
            line = f"- {kind}, along {axis} (ns/bar-step {figures}): max/min {_spread(costs):.2f}x"
            if _spread(costs) <= FLAT:
                out.append(line + ", flat.")
                continue
            facts = []
            shares = [c["cpu_share"] for c in cells]
            if min(shares) < 0.9:
                facts.append(f"the cells got {', '.join(f'{x:.2f}' for x in shares)} of their {threads} cores "
                             f"(CPU time over wall time x {threads}): other processes held the cores, so these "
                             f"figures carry the machine's load")
            single = [_one_thread_ns(c) for c in cells]
            single_cpu = [_one_thread_cpu_ns(c) for c in cells]
            cpu_figures = ", ".join(f"{x:.2f}" for x in single_cpu)
            single_shares = ", ".join(f"{c['one_thread_cpu_share']:.2f}" for c in cells)
            what = "the run" if kind == "run" else f"the sweep of the first {SUBSET} symbols"
            buffers = [c["symbol_buffers_mb"] for c in cells]
            if _spread(single_cpu) <= FLAT:
                facts.append(f"the kernel's own cost is flat: on one thread {what} takes {cpu_figures} ns of CPU "
                             f"time per bar-step (wall {', '.join(f'{x:.2f}' for x in single)} with "
                             f"{single_shares} of a core)")
                if min(shares) >= 0.9:
                    speedups = ", ".join(f"{runs[(c['symbols'], c['years'])]['parallel_speedup']:.2f}x"
                                         for c in cells)
                    calls = ", ".join(f"{runs[(c['symbols'], c['years'])]['call_overhead_us']:,.0f}" for c in cells)
                    facts.append(f"so the spread comes from running on {threads} threads: the run's speed-up is "
                                 f"{speedups}, the fixed cost of a {threads}-thread call {calls} us, and numba's "
                                 f"split leaves the busiest thread at most "
                                 f"{max(c['imbalance'] for c in cells):.2f} of the mean")
            elif axis == "years" and l2 and single_cpu[-1] > single_cpu[0] * FLAT and \
                    buffers[-1] * 2**20 > l2 >= buffers[0] * 2**20:
                facts.append(f"on one thread the CPU time per bar-step grows with the history ({what}: "
                             f"{cpu_figures} ns) while a symbol's kernel buffers grow from {buffers[0]:.2f} to "
                             f"{buffers[-1]:.2f} MB, past the {l2 / 2**20:g} MB L2 cache of a core (each set of a "
                             f"sweep passes over them again)")
            else:
                call = runs[(cells[0]["symbols"], cells[0]["years"])]["call_overhead_one_thread_us"]
                facts.append(f"on one thread the CPU time per bar-step moves too ({what}: {cpu_figures} ns); the "
                             f"fixed cost of a call ({call:,.0f} us) and the kernel buffers ({buffers[0]:.2f} to "
                             f"{buffers[-1]:.2f} MB) do not account for it")
            out.append(line + ", not flat: " + "; ".join(facts) + ".")
    return out


def merge_into_report(s: dict, path: Path) -> None:
    """Replace (or append) the scaling section of RESULTS.md; the rest stays as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    before, _, rest = text.partition("\n" + SECTION)
    after = ""
    if rest:
        # The section runs to the next "## " heading, if any.
        tail = rest.split("\n")
        for i, line in enumerate(tail[1:], 1):
            if line.startswith("## "):
                after = "\n".join(tail[i:])
                break
    body = before.rstrip("\n") + "\n\n" + "\n".join(report_lines(s)) + "\n"
    path.write_text(body + ("\n" + after.rstrip("\n") + "\n" if after else ""))


def merge_into_json(s: dict, path: Path) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data["scaling"] = s
    path.write_text(json.dumps(data, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Reduced scale (see QUICK).")
    parser.add_argument("--combos", type=int, help="Sets in each sweep cell (default 1,000; 64 with --quick).")
    parser.add_argument("--out", type=Path, default=HERE, help="Where RESULTS.md and results.json are.")
    parser.add_argument("--workdir", type=Path, default=WORK, help="Where the generated prices are cached.")
    parser.add_argument("--generate", nargs=3, metavar=("SYMBOLS", "YEARS", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--cell", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(int(args.generate[0]), float(args.generate[1]), Path(args.generate[2]))
        return
    if args.cell:
        print(json.dumps(measure_cell(args.cell[0], Path(args.cell[1]), args.combos or 1000, args.repeat)))
        return
    print("scaling...", flush=True)
    found = run_scaling(QUICK if args.quick else FULL, args.workdir, args.combos)
    args.out.mkdir(parents=True, exist_ok=True)
    merge_into_report(found, args.out / "RESULTS.md")
    merge_into_json(found, args.out / "results.json")
    print("\n".join(report_lines(found)))


if __name__ == "__main__":
    main()
