"""A cold `cryptobt backtest` process imports what it uses and nothing else (issue 17).

Each package below costs a cold run 50-200 ms and tens of MB without being used to print a
leaderboard; a library that starts importing one again (or a module of ours that does) fails
here. Times are never asserted: the modules a fresh process holds at the end of a run are.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.lake import grids

# The cold process must never hold these; `redis.asyncio.client` is what running redis.asyncio's code loads.
NEVER = ("pandas", "scipy", "polars", "prefect", "fastapi", "uvicorn", "redis.asyncio.client")

RUN_AND_LIST_MODULES = """
import json, sys
from pipeline.cli import app
sys.argv = ["cryptobt", "backtest", "rsi", "--all"]
try:
    app(prog_name="cryptobt")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def small_lake(build_lake):
    return build_lake(n_symbols=4, years=0.3)


def _cold_backtest(lake_root, results_root, redis_url: str, prefix: str = "cryptobt") -> tuple[str, set[str]]:
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(results_root),
           "REDIS_URL": redis_url, "CRYPTOBT_CACHE_PREFIX": prefix}
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES], env=env, cwd=results_root.parent,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["exit"] in (0, None), done.stderr[-2000:]
    return done.stdout, set(report["modules"])


def _held(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


@pytest.mark.slow
def test_a_cold_backtest_without_the_cache_imports_no_pandas_scipy_redis_or_servers(small_lake, tmp_path):
    shutil.rmtree(small_lake / grids.FOLDER, ignore_errors=True)
    printed, modules = _cold_backtest(small_lake, tmp_path / "results", redis_url="")
    assert "rsi on 4 symbols" in printed
    assert _held(modules, (*NEVER, "redis")) == []
    assert {"numba", "duckdb", "pyarrow"} <= modules  # it did run the kernels, read and write
    # The next process maps the grid that read kept (pipeline.lake.grids): no DuckDB at all, the same board.
    again, modules = _cold_backtest(small_lake, tmp_path / "results", redis_url="")
    board = [line for line in printed.splitlines() if " ms (" not in line]  # the timing line differs
    assert [line for line in again.splitlines() if " ms (" not in line] == board and len(board) > 5
    assert _held(modules, (*NEVER, "redis", "duckdb")) == [] and {"numba", "pyarrow"} <= modules


def test_a_cold_backtest_with_the_cache_loads_the_sync_redis_client_only(small_lake, tmp_path, redis_url,
                                                                         redis_prefix):
    printed, modules = _cold_backtest(small_lake, tmp_path / "results", redis_url, redis_prefix)
    assert "computed" in printed  # the cache was used
    assert _held(modules, NEVER) == []
    assert "redis.client" in modules


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_pandas_imported_after_pyarrow_is_recognised_by_pyarrow_as_usual():
    # pipeline.core.import_guard lets pyarrow's first conversion find no pandas; pandas imported later must be seen.
    printed = _run_python(
        "import sys, math\n"
        "import pipeline, pyarrow as pa\n"
        "pa.array([1.0, math.nan], type=pa.float64(), from_pandas=True)\n"
        "assert 'pandas' not in sys.modules\n"
        "import pandas as pd\n"
        "print(pa.array(pd.Series([1.0, math.nan])).null_count, pa.Table.from_pandas(pd.DataFrame({'a': [1]})).num_rows)\n")
    assert printed == "1 1"  # a pandas NaN is null, as pyarrow does when pandas comes first


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None,
                    reason="SciPy is not installed (the test extra does not need it): numba has no BLAS to keep")
def test_numba_without_scipy_at_load_still_compiles_blas_calls():
    # numba loads with SciPy out of reach; np.dot and np.convolve still compile and use BLAS as before.
    printed = _run_python(
        "import sys\n"
        "import pipeline, numpy as np, numba\n"
        "import numba.np.arraymath as arraymath\n"
        "assert 'scipy' not in sys.modules and arraymath._HAVE_BLAS\n"
        "f = numba.njit(lambda a, b: (np.dot(a, b), np.convolve(a, b)[2]))\n"
        "a = np.arange(3.0)\n"
        "print(f(a, a), 'scipy.linalg' in sys.modules)\n")
    assert printed == "(5.0, 1.0) True"
