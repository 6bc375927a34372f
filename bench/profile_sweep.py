"""Where a sweep's time goes end to end: `cryptobt sweep` under py-spy, summarised into bench/PROFILE.md.

    python -m bench.profile_sweep [--lake LAKE]    # default: the lake `make bench` built

The 1,000-set RSI sweep of bench/RESULTS.md ("sweep end to end as `cryptobt sweep` runs it") in its own
process, sampled by py-spy (100 Hz, Python stacks; a call into a Numba kernel is the Python frame that
called it). The report lists our functions by inclusive share of the samples (the time spent in them and
in what they call) and the leaf frames by own share: what to optimise first, measured, not guessed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRID = ("rsi_period=5:50:5", "oversold_threshold=15:42:3", "overbought_threshold=60:87:3")
TOP = 20
EVERY_SAMPLE = 0.97  # a frame in this share of the samples is the call chain down to the work, not the work


def _frame_name(frame: str) -> str:
    """`function (path/to/file.py:LINE)` as `file.py:function` (the line dropped: one row per function)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    marker = "/pipeline/"
    if path.startswith("pipeline/"):
        short = path
    elif marker in path:
        short = "pipeline/" + path.split(marker, 1)[1]
    else:
        short = Path(path).name
    return f"{short}:{name}"


def summarise(raw: str) -> tuple[int, Counter, Counter]:
    """(samples, inclusive count of each of our functions, own count of each leaf frame) of py-spy's raw
    (collapsed) output: one `frame;frame;... COUNT` line per distinct stack."""
    total, inclusive, leaf = 0, Counter(), Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        total += count
        for name in set(frames):
            if name.startswith("pipeline/"):
                inclusive[name] += count
        if frames:
            leaf[frames[-1]] += count
    return total, inclusive, leaf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=HERE / ".work" / "lake-cryptobt_bench")
    parser.add_argument("--out", type=Path, default=HERE / "PROFILE.md")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("error: py-spy is not installed; pip install py-spy")
    if not (args.lake / "snapshots").is_dir():
        sys.exit(f"error: no lake at {args.lake}; run make bench first or pass --lake")
    with tempfile.TemporaryDirectory(prefix="profile-sweep-") as work:
        raw_path = Path(work) / "sweep.txt"
        env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(args.lake), "CRYPTOBT_RESULTS_ROOT": str(Path(work) / "results"),
               "REDIS_URL": "", "PYTHONPATH": str(HERE.parent)}
        command = [sys.executable, "-m", "pipeline", "sweep", "rsi", *(a for g in GRID for a in ("-g", g)), "--all", "--yes"]
        warm = subprocess.run(command, env=env, capture_output=True, text=True)  # kernels compiled and cached first
        if warm.returncode:
            sys.exit(f"error: the sweep failed: {(warm.stderr or warm.stdout).strip().splitlines()[-1:]}")
        started = time.perf_counter()
        subprocess.run([spy, "record", "-r", "100", "-f", "raw", "-o", str(raw_path), "--", *command], env=env,
                       check=True, capture_output=True)
        wall = time.perf_counter() - started
        total, inclusive, leaf = summarise(raw_path.read_text())
    lines = [
        "# Profile: the 1,000-set RSI sweep end to end",
        "",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')} · machine: {platform.platform()}, "
        f"{os.cpu_count()} cores · `python -m bench.profile_sweep` (py-spy, 100 Hz).",
        "",
        f"`cryptobt sweep rsi {' '.join('-g ' + g for g in GRID)} --all --yes` on the bench lake ({args.lake.name}), "
        f"kernels cached, Redis off: {wall:.1f} s under the profiler, {total:,} samples of the main thread. A "
        "call into a Numba kernel counts at the Python frame that made it (its threads run native code).",
        "",
        f"Our functions by inclusive share (the function and what it calls; top {TOP}; the command's call chain, "
        f"in {EVERY_SAMPLE:.0%} of the samples or more, left out):",
        "",
        "| share | function |",
        "|---:|---|",
        *(f"| {100 * n / total:.1f} % | `{name}` |" for name, n in
          [(name, n) for name, n in inclusive.most_common() if n < EVERY_SAMPLE * total][:TOP]),
        "",
        "Leaf frames by own share (where the samples were taken; top 10):",
        "",
        "| share | frame |",
        "|---:|---|",
        *(f"| {100 * n / total:.1f} % | `{name}` |" for name, n in leaf.most_common(10)),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
