"""`cryptobt results compact`: past days' files merged into one per folder, the same rows, swapped in whole."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from pipeline.core.errors import PipelineError
from pipeline.store import compact, queries
from pipeline.store import files as table_files
from pipeline.store import results as rt
from tests.cli_env import cli_environment
from tests.records import make_result

TOMORROW = datetime.now(UTC).date() + timedelta(days=1)
DAY = datetime(2026, 10, 1, 9, tzinfo=UTC)


def table_rows(root: Path) -> list[tuple]:
    """Every row of a table as plain DuckDB reads it (hive columns included), in one order."""
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true, "
                          "union_by_name = true)")
    return sorted(relation.fetchall(), key=repr)


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def lake(build_lake):
    from pipeline import demo

    return build_lake(n_symbols=6, years=0.3, sample=demo.DEFAULT_SAMPLE)  # real market data


def test_real_runs_answer_every_query_the_same_after_compaction(lake, tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = cli_environment(lake, results)
    runs = [("sweep", "rsi", "-g", "rsi_period=7:21:7", "-g", "oversold_threshold=25:35:5", "--all", "--yes"),
            ("backtest", "ma_crossover", "--all", "--trades"),
            ("backtest", "rsi", "--all", "--trades", "--sl", "3"),
            ("backtest", "rsi", "--all", "--trades", "--sl", "6"),
            ("sweep", "bollinger", "-g", "bb_period=10:30:10", "--symbol", "ETH_BTC", "--symbol", "LTC_BTC", "--yes")]
    for args in runs:
        done = cli(env, *args, "--json")
        assert done.returncode == 0, done.stderr
    ids = [row[0] for row in queries.run_history(results, 10)[1]]
    assert len(ids) == 5
    tables = (results, rt.trades_root(results), rt.runs_root(results))
    before = {t: table_rows(t) for t in tables}
    files_before = {t: len(parquet_files(t)) for t in tables}
    answers = lambda: (queries.top(results, n=30), queries.run_history(results, 10),  # noqa: E731
                       [queries.show(results, r, n=500) for r in ids],
                       [queries.round_trips(results, r) for r in ids[1:4]],
                       [queries.sweep_sets(results, r) for r in ids])
    asked = answers()

    merged = compact.compact(results, before=TOMORROW)

    assert {m.table for m in merged} == {"results", "trades", "runs"}
    for t in tables:
        assert table_rows(t) == before[t], t
        assert len(parquet_files(t)) < files_before[t]
        folders = [p.parent for p in parquet_files(t)]
        assert len(folders) == len(set(folders))  # a file a folder: merged, or alone there already
    rsi_rows = sum(1 for row in before[results] if "rsi" in row)
    assert [(m.folder.partition("/")[2], m.files, m.rows) for m in merged if m.table == "results"] == [
        ("strategy=rsi", 3, rsi_rows)]
    # (Equal returns, a stop never hit, rank in one order whatever order the files are read in: before, the
    # sweep's row and the --sl 6 row of a symbol swapped places here.)
    assert answers() == asked
    # Nothing is left beside the tables, and a second compaction has nothing to merge.
    assert not (tmp_path / ".compacting").exists()
    assert compact.compact(results, before=TOMORROW) == []
    # A run after the compaction lands in its own file beside the compacted one, and is found alone.
    done = cli(env, "backtest", "macd", "--all", "--json")
    assert done.returncode == 0, done.stderr
    newest = queries.latest_run_id(results)
    assert newest not in ids and queries.show(results, newest)["run"]["results"] == 10
    assert queries.show(results, ids[0], n=500) == asked[2][0]


def _history(root: Path, days: int, runs_a_day: int, rows: int = 3) -> int:
    for d in range(days):
        for r in range(runs_a_day):
            records = [make_result(f"S{d}-{r}-{i}", total_return_pct=float(d * 100 + r * 10 + i)) for i in range(rows)]
            rt.append_results(root, f"run-{d:02d}-{r:02d}", records, created_at=DAY + timedelta(days=d, minutes=r))
    return days * runs_a_day * rows


def test_a_reader_during_compaction_never_sees_a_row_twice_or_misses_one(tmp_path: Path) -> None:
    """Each folder is swapped in one step: a reader counting the rows while 30 folders are swapped gets the
    total every time (publishing the merged file beside the old ones, then removing them, would not). Our
    queries hold the tables' publish lock shared and never fail; plain DuckDB may fail on a file it listed
    before a swap (and is asked again), but never counts wrong."""
    root = tmp_path / "results"
    total = _history(root, days=30, runs_a_day=6)
    counts: list[int] = []
    plain: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            counts.append(queries.query(root, "SELECT count(*) FROM results")[1][0][0])
            with contextlib.suppress(duckdb.IOException):
                plain.append(len(table_rows(root)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        merged = compact.compact(root, before=TOMORROW)
    finally:
        stop.set()
        reader.join()
    assert len(merged) == 30 and len(counts) >= 2
    assert set(counts) == {total} and set(plain) <= {total}


def test_a_folder_a_run_is_writing_in_is_left_alone_and_its_file_lands_whole(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _history(root, days=2, runs_a_day=3)
    busy = root / f"run_date={DAY.date()}" / "strategy=rsi"
    with table_files.writing(busy / "run-late.parquet") as handle:  # a run still writing its file
        handle.write((busy / "run-00-00.parquet").read_bytes())
        merged = compact.compact(root, before=TOMORROW)
        assert [m.folder for m in merged] == [f"run_date={DAY.date() + timedelta(days=1)}/strategy=rsi"]
        assert len(parquet_files(busy)) == 3
    assert (busy / "run-late.parquet").exists()
    assert queries.query(root, "SELECT count(*) FROM results")[1][0][0] == 2 * 3 * 3 + 3


def test_a_writer_waits_while_its_folder_is_swapped(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _history(root, days=1, runs_a_day=2)
    landed = threading.Event()

    def write() -> None:
        rt.append_results(root, "run-new", [make_result("NEW")], created_at=DAY)
        landed.set()

    with table_files.publishing(root, exclusive=True):  # what compaction holds while it swaps
        writer = threading.Thread(target=write)
        writer.start()
        assert not landed.wait(0.5)
    writer.join(10)
    assert landed.is_set()
    assert ("NEW",) in queries.query(root, "SELECT symbol FROM results")[1]


def test_a_compaction_that_fails_before_the_swap_leaves_the_table_as_it_was(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "results"
    _history(root, days=2, runs_a_day=2)
    before, files = table_rows(root), parquet_files(root)

    def broken(a: Path, b: Path) -> None:
        raise PipelineError("the disk went away")

    monkeypatch.setattr(compact, "_exchange", broken)
    with pytest.raises(PipelineError, match="the disk went away"):
        compact.compact(root, before=TOMORROW)
    assert parquet_files(root) == files and table_rows(root) == before
    assert list((tmp_path / ".compacting" / "results").iterdir()) == []
    # What a killed compaction leaves beside the table goes with the next one.
    leftover = tmp_path / ".compacting" / "results" / "run_date=x.strategy=rsi"
    leftover.mkdir()
    (leftover / "compacted-dead.parquet").write_bytes(b"half")
    monkeypatch.undo()
    assert len(compact.compact(root, before=TOMORROW)) == 2
    assert not (tmp_path / ".compacting").exists() and table_rows(root) == before


def test_a_compacted_results_file_holds_its_rows_best_return_first(tmp_path: Path) -> None:
    """`results top` reads the first row groups of each compacted file and skips the rest by their statistics;
    the rows in run id order (as before) put the best anywhere. NULL returns (a symbol with too few bars) last;
    equal returns in run, symbol and parameters order."""
    import pyarrow.parquet as pq

    root = tmp_path / "results"
    for r, returns in enumerate(([3.0, None, -1.0, 7.5], [9.0, 3.0, None, 0.5], [-4.0, 3.0, 12.0, 7.5])):
        records = [make_result(f"S{i}", total_return_pct=value, **({"reason": "too few bars"} if value is None else {}))
                   for i, value in enumerate(returns)]
        rt.append_results(root, f"run-{r:02d}", records, created_at=DAY + timedelta(minutes=r))
    expected = queries.top(root, n=12)

    compact.compact(root, before=TOMORROW)

    [merged] = parquet_files(root)
    table = pq.read_table(merged, columns=["total_return_pct", "run_id", "symbol"])
    returns = table.column("total_return_pct").to_pylist()
    assert returns == [12.0, 9.0, 7.5, 7.5, 3.0, 3.0, 3.0, 0.5, -1.0, -4.0, None, None]
    assert list(zip(table.column("run_id").to_pylist(), table.column("symbol").to_pylist(), strict=True))[4:7] == [
        ("run-00", "S0"), ("run-01", "S1"), ("run-02", "S1")]
    assert queries.top(root, n=12) == expected


def test_files_written_before_a_column_was_added_merge_with_it_as_null(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _history(root, days=1, runs_a_day=2)
    folder = root / f"run_date={DAY.date()}" / "strategy=rsi"
    old = folder / "run-00-00.parquet"
    duckdb.sql(f"COPY (SELECT * EXCLUDE (sharpe, market) FROM read_parquet('{old}')) TO '{folder / 'old.parquet'}'")
    old.unlink()
    (folder / "old.parquet").rename(old)
    expected = queries.query(root, "SELECT run_id, symbol, sharpe, market FROM results ORDER BY ALL")[1]
    assert [r[2] for r in expected].count(None) == 3

    compact.compact(root, before=TOMORROW)

    assert queries.query(root, "SELECT run_id, symbol, sharpe, market FROM results ORDER BY ALL")[1] == expected


def test_only_days_before_the_cut_are_merged_by_default_the_day_before_yesterday(tmp_path: Path) -> None:
    root = tmp_path / "results"
    today = datetime.now(UTC).replace(hour=0, minute=5)
    for days_ago in (0, 1, 2, 3):
        for r in range(2):
            rt.append_results(root, f"run-{days_ago}-{r}", [make_result("BTC")],
                              created_at=today - timedelta(days=days_ago))
    merged = compact.compact(root)
    assert sorted(m.folder for m in merged) == [
        f"run_date={(today - timedelta(days=d)).date()}/strategy=rsi" for d in (3, 2)]


def test_the_cli_compacts_and_names_a_bad_date(tmp_path: Path, lake) -> None:
    results = tmp_path / "results"
    _history(results, days=2, runs_a_day=2)
    env = cli_environment(lake, results)
    done = cli(env, "results", "compact", "--before", "2026-13-01")
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        "error: --before '2026-13-01' is not a date: use YYYY-MM-DD, e.g. 2026-11-30"]
    assert len(parquet_files(results)) == 4
    done = cli(env, "results", "compact", "--json")
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert [(m["table"], m["files"], m["rows"]) for m in merged] == [("results", 2, 6), ("results", 2, 6)]
    done = cli(env, "results", "compact")
    assert done.returncode == 0 and "nothing to merge" in done.stdout
    assert date.fromisoformat(merged[0]["folder"][9:19]) == DAY.date()


def test_for_any_history_compaction_keeps_every_row_and_every_answer(tmp_path_factory) -> None:
    """Any runs over any past days and strategies, compacted, then more runs and compacted again: the tables'
    rows, each run's rows, `top` and the run list are what they were before each compaction."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    run = st.tuples(st.integers(2, 6), st.sampled_from(["rsi", "macd"]), st.integers(1, 4),
                    st.sampled_from([None, -3.5, 0.0, 1.25, 7.0]))

    def answers(root: Path, ids: list[str]) -> tuple:
        return (table_rows(root), [queries.run_rows(root, r) for r in ids], queries.top(root, n=7),
                queries.run_history(root, 50))

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(run, min_size=1, max_size=8), st.lists(run, min_size=1, max_size=4))
    def check(first: list[tuple], later: list[tuple]) -> None:
        root = tmp_path_factory.mktemp("any") / "results"
        today = datetime.now(UTC)
        ids: list[str] = []
        for batch in (first, later):
            for days_ago, strategy, rows, total_return in batch:
                run_id = rt.new_run_id()
                records = [make_result(f"S{i}", strategy, total_return_pct=total_return, num_trades=i)
                           for i in range(rows)]
                rt.append_results(root, run_id, records, created_at=today - timedelta(days=days_ago))
                ids.append(run_id)
            before = answers(root, ids)
            compact.compact(root)
            assert answers(root, ids) == before
            folders = [p.parent for p in parquet_files(root)]
            assert len(folders) == len(set(folders))  # every past day's folder holds one file

    check()
