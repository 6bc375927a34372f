"""Bad input, fuzzing and security: no traceback reaches the user, nothing unsafe is stored or run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline import runs
from pipeline.cli import app
from pipeline.core.errors import InputError, PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.source.ohlcv import read_ohlcv_file
from pipeline.store.cache import ResultCache

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fuzz_lake(build_lake) -> Path:
    return build_lake(n_symbols=3, years=0.1)


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["rsi_period", "oversold_threshold", "bb_std", "fast_period", "bogus", ""]) | text,
       value=text | st.floats(allow_nan=True).map(str) | st.integers().map(str),
       strategy=st.sampled_from(["rsi", "bollinger", "ma_crossover", "macd", "buy_and_hold"]) | text,
       fee=st.floats(allow_nan=True, allow_infinity=True).map(str) | text,
       timerange=text)
@pytest.mark.slow
def test_fuzzed_cli_arguments_never_reach_the_user_as_a_traceback(fuzz_lake, tmp_path_factory, monkeypatch, name,
                                                                    value, strategy, fee, timerange):
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(fuzz_lake))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path_factory.getbasetemp() / "fuzz-results"))
    monkeypatch.setenv("REDIS_URL", "")
    result = CliRunner().invoke(app, ["backtest", strategy, "-p", f"{name}={value}", "--fee", fee,
                                      "--timerange", timerange, "--json"])
    assert "Traceback" not in result.output
    # 0: valid; 1: our one-line error; 2: click's usage error for an unparsable option.
    assert result.exit_code in (0, 1, 2), result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(st.lists(text | st.floats(allow_nan=True).map(str), min_size=0, max_size=7), max_size=6),
       header=st.sampled_from(["Date,Open,High,Low,Close,Volume", "date,open,high,low,close,volume",
                               "Date,Open,High,Low,Close", "x,y"]))
def test_fuzzed_csv_files_give_input_errors_or_valid_frames(tmp_path_factory, body, header):
    path = tmp_path_factory.mktemp("csv") / "FUZZ-1h.csv"
    path.write_text(header + "\n" + "\n".join(",".join(row) for row in body) + "\n")
    try:
        frame = read_ohlcv_file(path)
    except InputError as exc:
        assert "FUZZ-1h.csv" in str(exc)
        return
    assert (frame["low"] <= frame["high"]).all() and (frame["low"] > 0).all()


def test_no_module_unpickles_or_evals_anything():
    offenders = []
    for path in list((ROOT / "pipeline").rglob("*.py")) + list((ROOT / "flows").rglob("*.py")):
        source = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)|\beval\(|\bexec\(",
                     source, re.M):
            offenders.append(str(path))
    assert offenders == []


def test_no_secret_in_tracked_files_and_env_is_ignored():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked
    ignored = subprocess.run(["git", "check-ignore", ".env"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 0, ".env must be git-ignored"
    secret = re.compile(r"(postgres(ql)?://[^:/\s'\"]+:(?!\*\*\*|\$\{)[^@\s'\"]+@|PASSWORD\s*[:=]\s*(?!\$\{)\S{6,})")
    leaks = []
    for name in tracked:
        path = ROOT / name
        if name == ".env.example" or not path.is_file() or path.suffix in (".parquet", ".png"):
            continue
        for line in path.read_text(errors="ignore").splitlines():
            if secret.search(line) and "hunter2" not in line and "secret" not in line.lower():
                leaks.append(f"{name}: {line.strip()[:80]}")
    assert leaks == []


def test_every_cache_key_a_run_writes_is_under_its_prefix(fuzz_lake, tmp_path, redis_url, redis_prefix,
                                                          redis_client):
    from dataclasses import replace

    from pipeline.core.config import Settings

    before = {k for k in redis_client.scan_iter(count=1000) if not k.decode().startswith("cryptobt-test-")}
    settings = replace(Settings(), lake_root=fuzz_lake, results_root=tmp_path / "r", redis_url=redis_url,
                       cache_prefix=redis_prefix)
    cache = ResultCache.from_settings(settings)
    runs.backtest(settings, options.run_config(get_strategy("rsi"), {}), cache=cache)
    cache.invalidate_symbol("x'); DROP TABLE crypto_prices;--")
    after = {k for k in redis_client.scan_iter(count=1000) if not k.decode().startswith("cryptobt-test-")}
    assert after == before
    assert any(k.decode().startswith(redis_prefix) for k in redis_client.scan_iter(match=f"{redis_prefix}*"))


def test_a_sweep_too_large_for_memory_is_refused_with_the_size_it_needs():
    with pytest.raises(PipelineError, match=r"needs about [\d.]+ GiB .* but only [\d.]+ GiB is available"):
        engine.check_memory(n_symbols=5_000, n_time=400_000, n_combos=100_000)
