"""The append-only results, trades and runs tables, read back with plain DuckDB."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline.core.errors import InputError, PipelineError
from pipeline.store import results as rt
from tests.records import make_result

CREATED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)




def read_plain(root: Path, select: str = "*") -> list[dict[str, Any]]:
    """What a user gets from plain DuckDB, with no help from our code."""
    sql = f"SELECT {select} FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)"  # noqa: S608
    relation = duckdb.sql(sql)
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def test_appended_results_read_back_by_plain_duckdb_equal_the_input(tmp_path: Path) -> None:
    root = tmp_path / "results"
    records = [
        make_result("BTC", "rsi"),
        make_result("ETH", "bollinger", sharpe=float("nan"), exposure_pct=None, from_cache=True),
        make_result(
            "SOL", "buy_and_hold", start=None, end=None, bars=3, reason="too few bars (3 < 15)"
        ),
    ]

    paths = rt.append_results(root, "run-1", records, created_at=CREATED)

    assert sorted(p.relative_to(root).as_posix() for p in paths) == [
        "run_date=2024-05-06/strategy=bollinger/run-1.parquet",
        "run_date=2024-05-06/strategy=buy_and_hold/run-1.parquet",
        "run_date=2024-05-06/strategy=rsi/run-1.parquet",
    ]
    rows = {row["symbol"]: row for row in read_plain(root)}
    assert set(rows) == {"BTC", "ETH", "SOL"}
    for record in records:
        row = rows[record["symbol"]]
        assert row["run_id"] == "run-1"
        assert row["created_at"] == CREATED
        assert row["run_date"] == date(2024, 5, 6)
        assert json.loads(row["params_json"]) == record["params"]
        assert row["params_json"] == json.dumps(
            record["params"], sort_keys=True, separators=(",", ":")
        )
        for name in rt.PARAM_COLUMNS:
            assert row[name] == record["params"].get(name)
        for name in ("start", "end", "timerange_start", "timerange_end"):
            assert row[name] == ts(record[name]), name
        for name, value in record.items():
            if name not in ("params", "start", "end", "timerange_start", "timerange_end"):
                # An undefined metric (NaN) is stored as NULL.
                expected = None if isinstance(value, float) and math.isnan(value) else value
                assert row[name] == expected, name
    # The documented column set is exactly what lands on disk (plus the hive column).
    assert list(read_plain(root)[0]) == [*rt.RESULT_SCHEMA.names, "run_date"]


def test_one_query_spans_strategies_and_runs_with_null_parameters(tmp_path: Path) -> None:
    root = tmp_path / "results"
    rt.append_results(root, "run-a", [make_result("BTC", "rsi")], created_at=CREATED)
    rt.append_results(
        root,
        "run-b",
        [make_result("BTC", "macd"), make_result("BTC", "bollinger")],
        created_at=CREATED + timedelta(days=1),
    )

    rows = read_plain(
        root, "run_id, strategy, rsi_period, fast_period, signal_period, bb_std, run_date"
    )

    assert sorted(tuple(r.values()) for r in rows) == [
        ("run-a", "rsi", 14.0, None, None, None, date(2024, 5, 6)),
        ("run-b", "bollinger", None, None, None, 2.5, date(2024, 5, 7)),
        ("run-b", "macd", None, 12.0, 9.0, None, date(2024, 5, 7)),
    ]


def test_existing_result_file_is_never_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (path,) = rt.append_results(root, "run-1", [make_result("BTC")], created_at=CREATED)
    before = path.read_bytes()

    with pytest.raises(PipelineError, match="append-only"):
        rt.append_results(root, "run-1", [make_result("ETH")], created_at=CREATED)

    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["run-1.parquet"]  # no temp left


def test_invalid_records_and_unsafe_names_are_rejected_before_anything_is_written(
    tmp_path: Path,
) -> None:
    root = tmp_path / "results"
    good = make_result("BTC")
    no_symbol = {k: v for k, v in good.items() if k != "symbol"}

    with pytest.raises(InputError, match="symbol"):
        rt.append_results(root, "run-1", [good, no_symbol])
    with pytest.raises(InputError, match="strategy"):
        rt.append_results(
            root, "run-1", [make_result("BTC", strategy="rsi") | {"strategy": "../x"}]
        )
    with pytest.raises(InputError, match="run_id"):
        rt.append_results(root, "../escape", [good])
    with pytest.raises(InputError, match="start"):
        rt.append_results(root, "run-1", [make_result("BTC", start="yesterday")])

    assert not root.exists()


def test_no_results_write_no_file(tmp_path: Path) -> None:
    assert rt.append_results(tmp_path / "results", "run-1", []) == []
    assert rt.append_trades(tmp_path / "results", "run-1", [make_result()]) == []
    assert not (tmp_path / "results").exists() and not (tmp_path / "trades").exists()


def test_trades_land_in_the_sibling_table_and_join_their_results(tmp_path: Path) -> None:
    root = tmp_path / "results"
    trades = [
        {
            "time": "2024-01-03T05:00:00+00:00",
            "action": "buy",
            "price": 100.0,
            "units": 9.99,
            "value": 999.0,
            "fee": 1.0,
            "indicator": 28.4,
        },
        {
            "time": "2024-01-09T11:00:00+00:00",
            "action": "sell",
            "price": 110.0,
            "units": 9.99,
            "value": 1098.9,
            "fee": 1.1,
            "indicator": 71.2,
        },
    ]
    records = [make_result("BTC", trades=trades), make_result("ETH", trades=[])]
    rt.append_results(root, "run-1", records, created_at=CREATED)

    (path,) = rt.append_trades(root, "run-1", records, created_at=CREATED)

    assert path == tmp_path / "trades/run_date=2024-05-06/strategy=rsi/run-1.parquet"
    assert rt.trades_root(root) == tmp_path / "trades"
    plain = read_plain(tmp_path / "trades", "trade_no, time, action, price, indicator")
    assert plain == [
        {
            "trade_no": 0,
            "time": ts(trades[0]["time"]),
            "action": "buy",
            "price": 100.0,
            "indicator": 28.4,
        },
        {
            "trade_no": 1,
            "time": ts(trades[1]["time"]),
            "action": "sell",
            "price": 110.0,
            "indicator": 71.2,
        },
    ]
    columns, rows = rt.query(
        root,
        "SELECT r.symbol, count(*) FROM results r JOIN trades t "
        "USING (run_id, symbol, strategy, interval, params_json) GROUP BY r.symbol",
    )
    assert (columns, rows) == (["symbol", "count_star()"], [("BTC", 2)])


def test_empty_tables_can_be_queried_with_their_full_schema(tmp_path: Path) -> None:
    root = tmp_path / "nothing-yet" / "results"

    for table, schema in (
        ("results", rt.RESULT_SCHEMA),
        ("trades", rt.TRADE_SCHEMA),
        ("runs", rt.RUN_SCHEMA),
    ):
        columns, rows = rt.query(root, f"SELECT * FROM {table}")  # noqa: S608
        assert (columns, rows) == ([*schema.names, "run_date"], [])
    columns, rows = rt.top(root)
    assert "total_return_pct" in columns and rows == []
    stats = rt.run_stats(root)
    assert stats["runs"] == 0 and stats["duration_p50_s"] is None and stats["hit_rate"] is None


def test_query_reports_sql_errors_as_pipeline_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no_such_column"):
        rt.query(tmp_path / "results", "SELECT no_such_column FROM results")


def test_top_ranks_by_return_filters_by_strategy_and_counts_a_rerun_once(
    tmp_path: Path,
) -> None:
    root = tmp_path / "results"
    rt.append_results(
        root,
        "run-1",
        [
            make_result("BTC", "rsi", total_return_pct=10.0),
            make_result("ETH", "rsi", total_return_pct=30.0),
            make_result("SOL", "macd", total_return_pct=50.0),
            make_result("ADA", "rsi", total_return_pct=float("nan")),
        ],
        created_at=CREATED,
    )
    # The same BTC backtest again, later: it replaces, not duplicates, the first row.
    rt.append_results(
        root,
        "run-2",
        [make_result("BTC", "rsi", total_return_pct=10.0)],
        created_at=CREATED + timedelta(hours=1),
    )

    columns, rows = rt.top(root, n=10)
    best = [(r[columns.index("symbol")], r[columns.index("run_id")]) for r in rows]
    assert best == [("SOL", "run-1"), ("ETH", "run-1"), ("BTC", "run-2")]

    _, rows = rt.top(root, strategy="rsi", n=1)
    assert [r[columns.index("symbol")] for r in rows] == ["ETH"]
    _, rows = rt.top(root, run_id="run-2")
    assert [r[columns.index("symbol")] for r in rows] == ["BTC"]


def test_run_stats_percentiles_on_known_durations(tmp_path: Path) -> None:
    root = tmp_path / "results"
    now = datetime(2024, 5, 6, 12, tzinfo=UTC)
    for i, duration in enumerate(range(1, 21)):
        rt.append_run_metrics(
            root,
            f"run-{i:02d}",
            started_at=now - timedelta(minutes=30 + i),
            duration_s=float(duration),
            strategy="rsi",
            n_symbols=2,
            n_results=10,
            bars=1000 * duration,
            cache_hits=3,
            cache_misses=1,
            snapshot_id="snap-1",
            command="cryptobt backtest --strategy rsi",
        )
    # Outside the 24 h window: must not count.
    rt.append_run_metrics(
        root,
        "run-old",
        started_at=now - timedelta(hours=25),
        duration_s=999.0,
        strategy="rsi",
        n_symbols=1,
        n_results=1,
        bars=1,
        cache_hits=0,
        cache_misses=100,
    )

    stats = rt.run_stats(root, hours=24, now=now)

    # Linear interpolation over 1..20: p = 1 + q * 19.
    assert stats["runs"] == 20
    assert stats["duration_p50_s"] == pytest.approx(10.5)
    assert stats["duration_mean_s"] == pytest.approx(sum(range(1, 21)) / 20)  # 10.5 as well: 1..20 is symmetric
    assert stats["duration_p95_s"] == pytest.approx(19.05)
    assert stats["duration_p99_s"] == pytest.approx(19.81)
    assert stats["hit_rate"] == pytest.approx(0.75)
    assert stats["bar_steps"] == 1000 * 210
    assert stats["throughput_bar_steps_per_s"] == pytest.approx(1000.0)
    assert stats["results"] == 200
    _, rows = rt.query(root, "SELECT hit_ratio, throughput FROM runs WHERE run_id = 'run-04'")
    assert rows == [(0.75, 1000.0)]


def test_new_run_ids_sort_by_creation_time_and_are_unique() -> None:
    early = datetime(2024, 1, 1, tzinfo=UTC)
    ids = [rt.new_run_id(early + timedelta(microseconds=i)) for i in range(0, 2000, 7)]

    assert ids == sorted(ids)
    assert len({rt.new_run_id(early) for _ in range(200)}) == 200
    assert rt.new_run_id(early).startswith("20240101T000000000000Z-")


def _append_many(root: str, worker: int, runs: int, rows: int, start: Any) -> None:
    start.wait()
    for run in range(runs):
        records = [make_result(f"W{worker}-R{run}-S{i}") for i in range(rows)]
        rt.append_results(root, rt.new_run_id(), records)


@pytest.mark.slow
def test_two_processes_appending_concurrently_lose_and_duplicate_no_rows(
    tmp_path: Path,
) -> None:
    root = tmp_path / "results"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_append_many, args=(str(root), w, 15, 40, start)) for w in (1, 2)
    ]
    for process in workers:
        process.start()
    start.set()
    for process in workers:
        process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]

    rows = read_plain(root, "symbol, run_id")

    assert len(rows) == 2 * 15 * 40
    assert len({r["symbol"] for r in rows}) == 2 * 15 * 40
    assert len({r["run_id"] for r in rows}) == 2 * 15
    assert list(root.rglob("*.tmp")) == []


def _killed_while_publishing(root: str) -> None:
    # Dies like SIGKILL between writing the temp file and publishing it: no cleanup runs.
    rt.os.link = lambda *_: os._exit(9)  # type: ignore[assignment]
    rt.append_results(root, "run-killed", [make_result("ETH")], created_at=CREATED)


@pytest.mark.slow
def test_temp_file_left_behind_by_a_killed_writer_is_not_matched_by_the_glob(
    tmp_path: Path,
) -> None:
    root = tmp_path / "results"
    rt.append_results(root, "run-ok", [make_result("BTC")], created_at=CREATED)
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_while_publishing, args=(str(root),)
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 9

    (leftover,) = root.rglob("*.tmp")
    # Named after its writer (pid), whose flock on it died with it.
    assert leftover.name.startswith(f".run-killed.parquet.{process.pid}-") and leftover.stat().st_size > 0
    assert [r["symbol"] for r in read_plain(root, "symbol")] == ["BTC"]
    # The next reader sweeps it up and records the killed run, interrupted and without results.
    assert rt.query(root, "SELECT symbol FROM results")[1] == [("BTC",)]
    assert list(root.rglob("*.tmp")) == []
    assert rt.query(root, "SELECT run_id, interrupted, n_results FROM runs")[1] == [("run-killed", True, 0)]
    # The run can be retried under the same id: the leftover blocks nothing.
    rt.append_results(root, "run-killed", [make_result("ETH")], created_at=CREATED)
    assert sorted(r["symbol"] for r in read_plain(root, "symbol")) == ["BTC", "ETH"]


def _full_ranking(root: Path, strategy: str | None, n: int, min_trades: int | None) -> list[tuple]:
    """`results top` as it was before the cut: every row ranked (the dedup window over the whole table)."""
    from pipeline.store import queries

    return queries.query(root, queries._TOP_SQL, [strategy, None, n, min_trades, None])[1]


def test_top_through_the_cut_equals_ranking_every_row(tmp_path_factory) -> None:
    """For any history (backtests re-run many times, ties, strategies, trade counts), `top` ranking only the
    rows above its cut answers what ranking every row answers: the same rows, in the same order."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    backtest = st.tuples(st.sampled_from(["BTC", "ETH", "SOL", "ADA"]), st.sampled_from(["rsi", "macd"]),
                         st.sampled_from([7, 14, 21]), st.sampled_from([-5.0, 0.0, 1.5, 1.5, 8.0, 20.0]),
                         st.integers(0, 4), st.integers(1, 12))

    # Three backtests re-run 12 times each: the first cut (8 x 3 rows) holds two of them, so it goes deeper.
    deeper = [("BTC", "rsi", 7, 20.0, 3, 12), ("ETH", "rsi", 7, 8.0, 3, 12), ("SOL", "rsi", 7, 1.5, 3, 12)]

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(backtest, min_size=1, max_size=10), st.integers(1, 6), st.sampled_from([None, "rsi"]),
           st.sampled_from([None, 2]))
    @example(deeper, 3, None, None)
    def check(backtests, n, strategy, min_trades):
        root = tmp_path_factory.mktemp("history") / "results"
        runs: dict[int, list[dict]] = {}
        numbers: dict[tuple, tuple] = {}  # one backtest (its data, code and parameters) has one set of numbers
        for symbol, name, period, total_return, trades, copies in backtests:
            total_return, trades = numbers.setdefault((symbol, name, period), (total_return, trades))
            params = {"rsi_period": period} if name == "rsi" else {"fast_period": period}
            record = make_result(symbol, name, total_return_pct=total_return, num_trades=trades)
            record["params"] = {**record["params"], **params}
            for copy in range(copies):  # the same backtest re-run: the same numbers, a later run
                runs.setdefault(copy, []).append(record)
        for copy, records in sorted(runs.items()):
            rt.append_results(root, f"run-{copy:02d}", records, created_at=CREATED + timedelta(hours=copy))
        assert rt.top(root, strategy=strategy, n=n, min_trades=min_trades)[1] == \
            _full_ranking(root, strategy, n, min_trades)

    check()
