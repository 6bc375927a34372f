"""The grid cache beside the lake (pipeline.lake.grids) is checked on every read and never pulled from under a
reader (issue 25): a damaged grid is rebuilt with one warning, `lake verify` names it, and `lake vacuum`
leaves the temporaries of live writers alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import demo
from pipeline.lake import grids

STATS = ("symbol", "bars", "final_value", "total_return_pct", "num_trades", "max_drawdown_pct", "sharpe")


@pytest.fixture
def small_lake(tmp_path) -> Path:
    root = tmp_path / "lake"
    demo.build_sample_lake(root, n_symbols=4, years=0.3, sample=None)
    return root


def _cli(lake_root: Path, *args: str, redis_url: str = "", prefix: str = "cryptobt") -> subprocess.CompletedProcess:
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(lake_root.parent / "results"),
           "REDIS_URL": redis_url, "CRYPTOBT_CACHE_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _numbers(done: subprocess.CompletedProcess) -> list[tuple]:
    assert done.returncode == 0, done.stderr
    return [tuple(row[k] for k in STATS) for row in json.loads(done.stdout)["results"]]


def _warnings(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("warning:")]


def _flip_a_price_byte(grid_file: Path) -> None:
    """XOR the exponent byte of a cell holding a price (a NaN cell would stay NaN): same size, one byte."""
    values = np.load(grid_file, mmap_mode="r")
    cell = int(np.flatnonzero(np.isfinite(values.reshape(-1)))[values.size // 3])
    offset = grid_file.stat().st_size - values.nbytes + cell * values.itemsize + values.itemsize - 2
    del values
    with open(grid_file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x40]))


def test_a_flipped_byte_in_a_grid_is_rebuilt_with_one_warning_and_named_by_lake_verify(small_lake, redis_url,
                                                                                       redis_prefix):
    clean = _numbers(_cli(small_lake, "backtest", "rsi", "--all", "--json"))  # builds the grid
    [grid_file] = small_lake.glob(f"{grids.FOLDER}/*/*/close.npy")
    _flip_a_price_byte(grid_file)

    verified = _cli(small_lake, "lake", "verify")
    assert verified.returncode == 1 and str(grid_file) in verified.stdout, verified.stdout + verified.stderr

    # Through the Redis cache too: what a damaged grid gave would be served from there afterwards.
    damaged = _cli(small_lake, "backtest", "rsi", "--all", "--json", redis_url=redis_url, prefix=redis_prefix)
    assert _numbers(damaged) == clean
    [warning] = _warnings(damaged)
    assert str(grid_file.parent) in warning and "rebuilt" in warning, damaged.stderr
    cached = _cli(small_lake, "backtest", "rsi", "--all", "--json", redis_url=redis_url, prefix=redis_prefix)
    assert _numbers(cached) == clean

    again = _cli(small_lake, "backtest", "rsi", "--all", "--json")  # the rebuilt grid, read without a word
    assert _numbers(again) == clean and _warnings(again) == []
    assert _cli(small_lake, "lake", "verify").returncode == 0


# A writer of a grid that stops halfway (its `close` array waits for a file): a live process with a temporary.
PAUSED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from pipeline.lake import grids
from pipeline.lake import snapshots as lake
from pipeline.lake import reader

root, wait_for = Path(sys.argv[1]), Path(sys.argv[2])
batch = reader.read_prices(root, None, "1d", columns=("close",), min_coverage=0.5)  # kept as a grid ...
snapshot = lake.require_snapshot(root)

class Paused:
    def __array__(self, dtype=None, copy=None):
        print("writing", flush=True)
        while not wait_for.exists():
            time.sleep(0.02)
        if sys.argv[3] == "die":
            import os
            os._exit(137)  # killed halfway: its temporary stays behind
        return batch.columns["close"]

# ... and the same grid stored again under another key, paused halfway through.
grids.store(root, snapshot, "1d", batch.symbols, ("close",), 0.25 if sys.argv[3] == "finish" else 0.125,
            snapshot.files("1d"),
            {"times": batch.times, "bars": batch.bars, "close": Paused(), "coverage": batch.coverage})
print("stored", flush=True)
"""


def _paused_writer(lake_root: Path, go: Path, fate: str) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(lake_root), str(go), fate],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
    return writer


def _temporaries(lake_root: Path) -> list[Path]:
    return [p for p in lake_root.glob(f"{grids.FOLDER}/*/.*") if p.is_dir()]


@pytest.mark.slow
def test_vacuum_leaves_a_live_writers_temporary_grid_and_removes_a_dead_ones(small_lake, tmp_path):
    go = tmp_path / "go"
    writer = _paused_writer(small_lake, go, "finish")
    assert len(_temporaries(small_lake)) == 1
    vacuumed = _cli(small_lake, "lake", "vacuum", "--keep", "1", "--keep-hours", "0")
    assert vacuumed.returncode == 0, vacuumed.stderr
    go.touch()
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and out.strip() == "stored", err
    kept = _cli(small_lake, "lake", "verify")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert len(list(small_lake.glob(f"{grids.FOLDER}/*/[!.]*"))) == 2 and _temporaries(small_lake) == []

    go.unlink()
    dead = _paused_writer(small_lake, go, "die")
    go.touch()
    dead.wait(timeout=120)
    assert dead.returncode == 137 and _temporaries(small_lake)
    assert _cli(small_lake, "lake", "vacuum", "--keep", "1", "--keep-hours", "0").returncode == 0
    assert _temporaries(small_lake) == [] and list(small_lake.glob(f"{grids.FOLDER}/*/.*")) == []


# A reader in a loop: every read builds a new grid (another coverage rule, another key), stores it,
# and reads it back mapped.
READER_LOOP = """
import sys
from pathlib import Path
import numpy as np
from pipeline.lake import reader

root, stop = Path(sys.argv[1]), Path(sys.argv[2])
reads = 0
while not stop.exists() or reads < 5:
    coverage = reads / 1e6
    built = reader.read_prices(root, None, "1h", columns=("close", "volume"), min_coverage=coverage)
    kept = reader.read_prices(root, None, "1h", columns=("close", "volume"), min_coverage=coverage)
    assert isinstance(kept.columns["close"], np.memmap), f"read {reads}: the grid it stored is gone"
    for name in ("close", "volume"):
        np.testing.assert_array_equal(kept.columns[name], built.columns[name])
    reads += 1
print(reads)
"""


@pytest.mark.slow
def test_a_reader_in_a_loop_survives_concurrent_vacuums(tmp_path):
    root = tmp_path / "lake"
    demo.build_sample_lake(root, n_symbols=30, years=2, sample=None)
    stop = tmp_path / "stop"
    loop = subprocess.Popen([sys.executable, "-c", READER_LOOP, str(root), str(stop)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(12):
            vacuumed = _cli(root, "lake", "vacuum", "--keep", "1", "--keep-hours", "0")
            assert vacuumed.returncode == 0, vacuumed.stderr
            assert loop.poll() is None, loop.stderr.read()
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=300)
    assert loop.returncode == 0, err[-3000:]
    assert int(out) >= 5


def test_every_symbol_of_one_market_is_kept_as_a_grid_on_a_lake_of_both_markets(tmp_path):
    """Before: only a read of every symbol of the lake was kept, so `--all` on a lake holding spot pairs and a
    perpetual (the demo's) scanned the lake on every run. Each market's whole read is kept now, and mapped
    back equal; a read of part of a market is not kept."""
    from pipeline.lake import reader
    from pipeline.lake import snapshots as lake

    root = tmp_path / "lake"
    demo.build_sample_lake(root, n_symbols=3, years=0.2, sample=None, futures_sample=demo.DEFAULT_FUTURES)
    snapshot = lake.require_snapshot(root)
    spot = [n for n in snapshot.symbols if not n.endswith(":futures")]
    perpetuals = [n for n in snapshot.symbols if n.endswith(":futures")]
    assert len(spot) == 3 and len(perpetuals) == 1
    for names in (spot, perpetuals):
        built = reader.read_prices(root, names, "1h", columns=("close",))
        assert not isinstance(built.columns["close"], np.memmap)
        kept = reader.read_prices(root, names, "1h", columns=("close",))
        assert isinstance(kept.columns["close"], np.memmap), names
        np.testing.assert_array_equal(kept.columns["close"], built.columns["close"])
        np.testing.assert_array_equal(kept.times, built.times)
    part = spot[:2]
    reader.read_prices(root, part, "1h", columns=("close",))
    assert not isinstance(reader.read_prices(root, part, "1h", columns=("close",)).columns["close"], np.memmap)
