"""Users' strategy code, run in real processes: what it is (its import closure) and how it fails.

- Code identity: a strategy file importing a helper module from its folder; editing the helper
  changes the numbers at once, from the Redis cache and with --no-cache (Numba's on-disk cache of
  the old code is never served).
- Integer parameters are bounded before any kernel: a period of 1e29 is refused, never wrapped.
- Whatever the user's code raises (sys.exit at import or in CHECK, an exception in its Numba code,
  an index out of range under `strategies check`) is one line naming the file, no traceback, a
  non-zero exit; the API answers 400/422, never 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import strategies
from pipeline.engine.strategies import get_strategy
from pipeline.engine.strategies.api import INT_PARAM_LIMIT
from tests.api_server import serving

ROOT = Path(__file__).resolve().parents[1]
DONCHIAN = ROOT / "examples" / "strategies" / "donchian.py"

# The strategies here are users' files written out whole, boilerplate included (as a user writes them).
# A strategy whose rule lives in a helper module next to it (`_levels.py`: a file starting with `_`
# is not loaded as a strategy).
HELPED = '''
"""helped: enter on a rise above the helper's threshold, exit on a fall below it."""
from pipeline.engine.strategies.api import Param, njit
from _levels import threshold

NAME = "helped"
PARAMS = (Param("period", int, 1, "bars back", minimum=1),)
COLUMNS = ("close",)
INDICATORS = ()
INDICATOR_PARAMS = ()


@njit(cache=True)
def indicators(prices, params, ind):
    pass


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    close = prices[0]
    k = int(params[0])
    for t in range(close.shape[0]):
        change = close[t] / close[t - k] - 1.0 if t >= k else 0.0
        entries[t] = change > threshold()
        exits[t] = change < -threshold()
        sig_value[t] = change


@njit(cache=True)
def warmup(params):
    return int(params[0]) + 1
'''
LEVELS = '''
from pipeline.engine.strategies.api import njit


@njit(cache=True)
def threshold():
    return {value}
'''

# Broken in the ways a user's code breaks. Each is a copy of the template with one change.
TEMPLATE = DONCHIAN.read_text()


def _line(source: str, marker: str) -> int:
    """The line of `source` holding `marker` (the line a message must name)."""
    return next(i for i, text in enumerate(source.splitlines(), start=1) if marker in text)


def _variant(name: str, old: str, new: str) -> str:
    assert old in TEMPLATE
    return TEMPLATE.replace('NAME = "donchian"', f'NAME = "{name}"').replace(old, new, 1)


EXIT_AT_IMPORT = _variant("exit_at_import", "import numpy as np\n", "import sys\n\nimport numpy as np\n\nsys.exit(0)\n")
EXIT_IN_CHECK = _variant("exit_in_check", 'SIGNAL_VALUE = "upper"', 'SIGNAL_VALUE = "upper"\n\n\ndef CHECK(p):\n'
                         '    import sys\n    sys.exit(0)\n')
# Raises only on series longer than the 64-bar compile probe: the failure comes from the batch kernel.
RAISES = _variant("raises", "    first = max(int(params[0]), int(params[1]))\n",
                  "    first = max(int(params[0]), int(params[1]))\n    if close.shape[0] > 100:\n"
                  "        raise ValueError(\"no trading on long series\")\n")
OUT_OF_RANGE = _variant("out_of_range", "        sig_value[t] = ind[0, t]\n",
                        "        sig_value[t] = ind[0, t]\n    for t in range(close.shape[0], close.shape[0] + 100000):\n"
                        "        sig_value[t] = 0.0\n")


@pytest.fixture(scope="module")
def lake(build_lake) -> Path:
    return build_lake(n_symbols=2, years=0.1)


def _env(lake: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake), "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results"),
           "CRYPTOBT_KERNEL_CACHE": str(tmp_path / "kernels"), "REDIS_URL": "", "PYTHONPATH": str(ROOT)}
    env.pop("CRYPTOBT_STRATEGY_PATH", None)
    env.pop("CRYPTOBT_DEBUG", None)
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The run failed with exit 1 (not a signal) and said why in one line of stderr, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# --- code identity ------------------------------------------------------------------------------


def test_editing_a_helper_module_changes_the_numbers_with_and_without_the_cache(lake, tmp_path, redis_url,
                                                                                redis_prefix):
    folder = _folder(tmp_path, {"helped.py": HELPED, "_levels.py": LEVELS.format(value=0.001)})
    env = _env(lake, tmp_path, REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix)

    def run(*extra: str) -> list[tuple]:
        done = _cli(["backtest", "helped", "--strategy-path", str(folder), "--all", "--json", *extra], env, tmp_path)
        assert done.returncode == 0, done.stderr
        return [(r["symbol"], r["num_trades"], r["final_value"], r["from_cache"], r["engine_version"])
                for r in json.loads(done.stdout)["results"]]

    first = run()
    assert not any(row[3] for row in first) and sum(row[1] for row in first) > 0
    assert all(row[3] for row in run())  # unchanged code: served from Redis
    (folder / "_levels.py").write_text(LEVELS.format(value=0.02))
    edited = run()
    assert not any(row[3] for row in edited), "an edited helper was served from the Redis cache"
    assert [row[1:3] for row in edited] != [row[1:3] for row in first]
    assert edited[0][4] != first[0][4]  # the code version names the new code
    fresh = run("--no-cache")
    assert [row[1:3] for row in fresh] == [row[1:3] for row in edited], "Numba served the old helper's code"
    # And back: the first helper's numbers again (its kernel is still cached under its own version).
    (folder / "_levels.py").write_text(LEVELS.format(value=0.001))
    assert [row[1:3] for row in run("--no-cache")] == [row[1:3] for row in first]


def test_the_code_version_covers_the_helpers_a_strategy_imports(tmp_path):
    folder = _folder(tmp_path, {"helped.py": HELPED, "_levels.py": LEVELS.format(value=0.001)})
    strategy = strategies.load_strategy_file(folder / "helped.py")
    assert strategy.code_files == (str(folder / "helped.py"), str(folder / "_levels.py"))
    assert strategy.cache_problem is None
    (folder / "_levels.py").write_text(LEVELS.format(value=0.5))
    assert strategies.load_strategy_file(folder / "helped.py").code_version != strategy.code_version


def test_a_strategy_whose_code_cannot_be_hashed_is_run_but_never_cached(lake, tmp_path, redis_url, redis_prefix,
                                                                        redis_client):
    # The rule comes from a module made at run time: no file, so no hash of it.
    dynamic = HELPED.replace('NAME = "helped"', 'NAME = "made_up"').replace(
        "from _levels import threshold\n",
        "import sys, types\n_made = types.ModuleType('_made_up_levels')\n"
        "exec('from numba import njit\\n@njit\\ndef threshold():\\n    return 0.001\\n', _made.__dict__)\n"
        "sys.modules['_made_up_levels'] = _made\nthreshold = _made.threshold\n")
    folder = _folder(tmp_path, {"made_up.py": dynamic})
    env = _env(lake, tmp_path, REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix)
    for _ in range(2):
        done = _cli(["backtest", "made_up", "--strategy-path", str(folder), "--all", "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert not any(r["from_cache"] for r in json.loads(done.stdout)["results"])
        assert "not cached" in done.stderr and "_made_up_levels" in done.stderr, done.stderr
    assert not list(redis_client.scan_iter(match=f"{redis_prefix}:bt:*"))


# --- integer bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "named"), [
    (["backtest", "rsi", "-p", "rsi_period=1e29", "--all"], "rsi_period="),
    (["backtest", "donchian", "--strategy-path", "{examples}", "-p", "entry_period=1e29", "--all"], "entry_period="),
    (["backtest", "donchian", "--strategy-path", "{examples}", "-p", "exit_period=2147483648", "--all"],
     "exit_period=2147483648"),
    (["sweep", "ma_crossover", "-g", "slow_period=30,1e29", "--all"], "slow_period="),
])
@pytest.mark.slow
def test_an_integer_parameter_past_int32_is_refused_in_one_line(lake, tmp_path, args, named):
    args = [a.replace("{examples}", str(DONCHIAN.parent)) for a in args]
    line = _one_line_error(_cli(args, _env(lake, tmp_path), tmp_path))
    assert named in line and f"<= {INT_PARAM_LIMIT}" in line, line


def test_every_integer_parameter_is_bounded_whatever_it_declares(tmp_path):
    strategy = strategies.load_strategy_file(DONCHIAN)
    entry = strategy.param("entry_period")
    assert entry.maximum == INT_PARAM_LIMIT and entry.allowed() == f"an integer >= 1 and <= {INT_PARAM_LIMIT}"
    assert strategies.resolve_params(get_strategy("donchian"), {"entry_period": INT_PARAM_LIMIT})["entry_period"] == INT_PARAM_LIMIT
    for value in (INT_PARAM_LIMIT + 1, 1e29, "1e29"):
        with pytest.raises(PipelineError, match="out of range"):
            strategies.resolve_params(get_strategy("donchian"), {"entry_period": value})
    # A default past the bound is refused when the file loads.
    (tmp_path / "huge.py").write_text(TEMPLATE.replace('NAME = "donchian"', 'NAME = "huge"').replace(
        'Param("entry_period", int, 20,', 'Param("entry_period", int, 10**29,'))
    with pytest.raises(PipelineError, match=r"huge\.py: .*entry_period.*out of range"):
        strategies.load_strategy_file(tmp_path / "huge.py")


# --- the user's code failing --------------------------------------------------------------------


EXIT_AT_IMPORT_LINE = f"exit_at_import.py:{_line(EXIT_AT_IMPORT, 'sys.exit(0)')}"
EXIT_IN_CHECK_LINE = f"exit_in_check.py:{_line(EXIT_IN_CHECK, 'sys.exit(0)')}"
RAISES_LINE = f"raises.py:{_line(RAISES, 'raise ValueError')}"


@pytest.mark.parametrize(("file", "source", "args", "expected"), [
    ("exit_at_import.py", EXIT_AT_IMPORT, ["backtest", "exit_at_import", "--all"],
     f"{EXIT_AT_IMPORT_LINE}: importing the strategy failed: it called sys.exit(0)"),
    ("exit_in_check.py", EXIT_IN_CHECK, ["backtest", "exit_in_check", "--all"],
     f"{EXIT_IN_CHECK_LINE}: its CHECK failed: it called sys.exit(0)"),
    ("raises.py", RAISES, ["backtest", "raises", "--all"],
     f"{RAISES_LINE}: strategy 'raises' failed: ValueError: no trading on long series"),
    ("raises.py", RAISES, ["sweep", "raises", "-g", "entry_period=5:20:5", "--all"],
     f"{RAISES_LINE}: strategy 'raises' failed: ValueError: no trading on long series"),
])
@pytest.mark.slow
def test_a_failure_in_the_users_code_is_one_line_naming_file_and_line(lake, tmp_path, file, source, args,
                                                                      expected):
    folder = _folder(tmp_path, {file: source})
    line = _one_line_error(_cli([*args, "--strategy-path", str(folder)], _env(lake, tmp_path), tmp_path))
    assert line.endswith(expected) and str(folder) in line, line


@pytest.mark.slow
def test_strategies_check_runs_the_users_code_with_bounds_checks(lake, tmp_path):
    folder = _folder(tmp_path, {"out_of_range.py": OUT_OF_RANGE})
    done = _cli(["strategies", "check", "out_of_range", "--strategy-path", str(folder)], _env(lake, tmp_path),
                tmp_path)
    line = _one_line_error(done)
    assert str(folder / "out_of_range.py") in line and "IndexError" in line and "out of bounds" in line, line


def test_the_api_answers_a_bad_integer_or_a_failing_strategy_with_4xx(lake, tmp_path, redis_url, redis_prefix):
    folder = _folder(tmp_path, {"exit_in_check.py": EXIT_IN_CHECK, "raises.py": RAISES})
    strategies.add_strategy_paths([folder])
    settings = Settings(redis_url=redis_url, lake_root=lake, results_root=tmp_path / "results",
                        cache_prefix=redis_prefix, api_workers=1, api_queue=4)
    with serving(settings) as (base, _), httpx.Client(base_url=base, timeout=120) as client:
        huge = client.post("/api/backtest", json={"strategy": "rsi", "params": {"rsi_period": 1e29}})
        assert huge.status_code == 422 and "rsi_period" in huge.json()["error"], huge.text
        exits = client.post("/api/backtest", json={"strategy": "exit_in_check"})
        assert exits.status_code == 422 and EXIT_IN_CHECK_LINE in exits.json()["error"], exits.text
        raises = client.post("/api/backtest", json={"strategy": "raises", "no_cache": True})
        assert raises.status_code == 400 and RAISES_LINE in raises.json()["error"], raises.text
        alive = client.post("/api/backtest", json={"strategy": "rsi", "no_cache": True})
        assert alive.status_code == 200, alive.text


@pytest.mark.slow
def test_the_api_refuses_a_strategy_path_whose_file_exits_at_import(lake, tmp_path):
    folder = _folder(tmp_path, {"exit_at_import.py": EXIT_AT_IMPORT})
    port = __import__("tests.api_server", fromlist=["free_port"]).free_port()
    env = _env(lake, tmp_path, CRYPTOBT_STRATEGY_PATH=str(folder))
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "api", "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(600):
                try:
                    answer = client.get("/api/strategies")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, server.communicate()
                    __import__("time").sleep(0.1)
            else:
                pytest.fail("the API did not start")
            assert answer.status_code == 400, answer.text
            assert f"{EXIT_AT_IMPORT_LINE}: importing the strategy failed" in answer.json()["error"]
            assert server.poll() is None  # the server is still serving
            assert client.get("/healthz").status_code in (200, 503)
    finally:
        server.terminate()
        server.wait(timeout=30)
