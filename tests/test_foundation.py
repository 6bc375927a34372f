"""Schema, seed and importer against the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pyarrow.feather as feather
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import InputError
from pipeline.source import loaders
from pipeline.source import postgres as source

INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"


def _count(url: str, where: str = "TRUE") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM crypto_prices WHERE {where}").fetchone()[0]  # noqa: S608


def test_schema_applies_twice_without_change(make_database, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.engine import strategies as registry

    url = make_database()
    monkeypatch.setenv("DATABASE_URL", url)
    assert CliRunner().invoke(app, ["db", "init"]).exit_code == 0
    with psycopg.connect(url) as conn:
        before = conn.execute(INDEXES).fetchall()
        strategies = conn.execute("SELECT name, strategy_type FROM crypto_strategies ORDER BY 1").fetchall()
    assert CliRunner().invoke(app, ["db", "init"]).exit_code == 0
    with psycopg.connect(url) as conn:
        after = conn.execute(INDEXES).fetchall()
        # crypto_strategies mirrors the registry, defaults included: one source of truth.
        rows = conn.execute("SELECT name, default_parameters FROM crypto_strategies ORDER BY 1").fetchall()
        assert rows == [(n, registry.get_strategy(n).defaults) for n in sorted(registry.strategy_names())]
    assert before == after
    names = {name for name, _ in before}
    assert {"crypto_prices_pkey", "idx_crypto_prices_daily", "idx_crypto_prices_updated_at",
            "idx_crypto_strategies_type", "cryptocurrencies_symbol_key"} <= names
    pkey = dict(before)["crypto_prices_pkey"]
    assert "(crypto_id, interval_type, datetime) INCLUDE (open_price, high_price, low_price, close_price, volume)" in pkey
    assert "WHERE (interval_type = '1d'::text)" in dict(before)["idx_crypto_prices_daily"]
    assert {t for _, t in strategies} == {"rsi", "ma_crossover", "bollinger", "macd", "buy_and_hold"}


def test_seed_writes_consistent_positive_bars_with_differing_histories(database_url):
    report = loaders.seed_database(database_url, n_symbols=12, years=0.5, seed=3)
    assert _count(database_url, "interval_type = '1h'") == report.rows["1h"]
    assert _count(database_url, "interval_type = '1d'") == report.rows["1d"]
    with psycopg.connect(database_url) as conn:
        bad = conn.execute(
            "SELECT count(*) FROM crypto_prices WHERE NOT (low_price <= open_price AND open_price <= high_price"
            " AND low_price <= close_price AND close_price <= high_price AND low_price > 0 AND volume >= 0)"
        ).fetchone()[0]
        per_symbol = conn.execute(
            "SELECT crypto_id, min(datetime), count(*),"
            " max(datetime) - min(datetime) + interval '1 hour' AS span"
            " FROM crypto_prices WHERE interval_type = '1h' GROUP BY crypto_id"
        ).fetchall()
        daily_check = conn.execute(
            "SELECT d.volume, sum(h.volume) FROM crypto_prices d JOIN crypto_prices h"
            " ON h.crypto_id = d.crypto_id AND h.interval_type = '1h'"
            " AND h.datetime >= d.datetime AND h.datetime < d.datetime + interval '1 day'"
            " WHERE d.interval_type = '1d' GROUP BY d.crypto_id, d.datetime, d.volume LIMIT 200"
        ).fetchall()
    assert bad == 0
    assert len(per_symbol) == 12
    assert len({first for _, first, _, _ in per_symbol}) > 1, "listing dates should differ"
    gaps = sum(1 for _, _, n, span in per_symbol if n < span.total_seconds() / 3600)
    assert gaps > 0, "some histories should have exchange outages (missing hours)"
    for daily_volume, hourly_sum in daily_check:
        assert daily_volume == pytest.approx(hourly_sum, rel=1e-12)


def test_same_seed_gives_the_same_market(database_url, make_database):
    other = make_database()
    source.apply_schema(other)
    loaders.seed_database(database_url, 3, 0.1, seed=11)
    loaders.seed_database(other, 3, 0.1, seed=11)
    # By symbol, the identity: the two seed connections register their own symbols, so which ids a
    # symbol gets depends on which connection commits first.
    query = ("SELECT c.symbol, p.interval_type, p.datetime, p.open_price, p.close_price FROM crypto_prices p "
             "JOIN cryptocurrencies c ON c.id = p.crypto_id ORDER BY 1, 2, 3")
    with psycopg.connect(database_url) as a, psycopg.connect(other) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def _hand_aggregate(path, day_start: datetime):
    table = feather.read_table(path)
    ts = table["date"].to_numpy().astype("datetime64[us]").astype(np.int64)
    start = int(day_start.timestamp() * 1_000_000)
    rows = [i for i in range(len(ts)) if start <= ts[i] < start + 86_400_000_000]
    o, h, lo, c, v = (table[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    return (o[rows[0]], max(h[i] for i in rows), min(lo[i] for i in rows), c[rows[-1]],
            sum(v[i] for i in rows))


def test_import_real_binance_files_keeps_gaps_and_aggregates_like_by_hand(database_url, binance_files):
    report = loaders.import_files(database_url, binance_files)
    assert report.symbols == 4
    eth = next(p for p in binance_files if p.name.startswith("ETH_BTC"))
    ada = next(p for p in binance_files if p.name.startswith("ADA_BTC"))  # misses two whole hours
    table = feather.read_table(ada)
    ts = table["date"].to_numpy().astype("datetime64[us]").astype(np.int64)
    expected_hours = np.unique(ts // 3_600_000_000)
    with psycopg.connect(database_url) as conn:
        hours = conn.execute(
            "SELECT extract(epoch FROM datetime)::bigint / 3600 FROM crypto_prices p"
            " JOIN cryptocurrencies c ON c.id = p.crypto_id"
            " WHERE c.symbol = 'ADA_BTC' AND interval_type = '1h' ORDER BY 1"
        ).fetchall()
        day = conn.execute(
            "SELECT open_price, high_price, low_price, close_price, volume FROM crypto_prices p"
            " JOIN cryptocurrencies c ON c.id = p.crypto_id"
            " WHERE c.symbol = 'ETH_BTC' AND interval_type = '1d' AND datetime = '2018-01-15T00:00:00Z'"
        ).fetchone()
    got = np.array([h for (h,) in hours])
    np.testing.assert_array_equal(got, expected_hours)
    full_range = np.arange(expected_hours[0], expected_hours[-1] + 1)
    assert len(full_range) > len(expected_hours), "the real files have gaps; they must stay gaps"
    hand = _hand_aggregate(eth, datetime(2018, 1, 15, tzinfo=UTC))
    assert day[:4] == pytest.approx(hand[:4], rel=0, abs=0)
    assert day[4] == pytest.approx(hand[4], rel=1e-12)


def test_reimporting_the_same_file_changes_nothing(database_url, binance_files):
    loaders.import_files(database_url, binance_files[:2])
    query = "SELECT count(*), max(updated_at), sum(xmin::text::bigint) FROM crypto_prices"
    with psycopg.connect(database_url) as conn:
        before = conn.execute(query).fetchone()
    loaders.import_files(database_url, binance_files[:2])
    with psycopg.connect(database_url) as conn:
        after = conn.execute(query).fetchone()
    assert before == after


def _write_csv(path, rows: list[str], header: str = "Date,Open,High,Low,Close,Volume") -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


GOOD = ["2024-01-01 00:00:00,10,11,9,10.5,100", "2024-01-01 01:00:00,10.5,12,10,11,120"]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["2024-01-01 00:00:00,10,11,9,100"], "Date,Open,High,Low,Volume", "missing column(s) close"),
        (["2024-01-01 00:00:00,10,11,9,10.5,100", "yesterday,10,11,9,10,1"], None, "line 3: cannot parse date 'yesterday'"),
        (["2024-01-01 00:00:00,10,11,9,10.5,100", "2024-01-01 01:00:00,-1,11,-2,10,1"], None, "line 3: prices must be > 0"),
        (["2024-01-01 00:00:00,10,11,9,10.5,100", "2024-01-01 01:00:00,10,9,11,10,1"], None, "line 3: high is below low"),
        (["2024-01-01 00:00:00,10,11,9,10.5,100", "2024-01-01 00:00:00,10,11,9,10.7,100"], None,
         "line 3: timestamp 2024-01-01T00:00:00+00:00 appears again with different values"),
        (["2024-01-01 00:00:00,10,11,9,NaN,100"], None, "line 2: a price or volume is NaN"),
    ],
    ids=["missing-column", "bad-date", "negative-price", "high-below-low", "duplicate-ts", "nan-price"],
)
def test_bad_file_is_rejected_naming_file_and_row_and_nothing_is_written(database_url, tmp_path, rows, header, message):
    good = tmp_path / "GOOD-1h.csv"
    _write_csv(good, GOOD)
    bad = tmp_path / "BAD-1h.csv"
    _write_csv(bad, rows, header or "Date,Open,High,Low,Close,Volume")
    with pytest.raises(InputError) as excinfo:
        loaders.import_files(database_url, [good, bad])
    assert "BAD-1h.csv" in str(excinfo.value)
    assert message in str(excinfo.value)
    assert _count(database_url) == 0


def test_csv_headers_in_any_case_and_naive_times_read_as_utc(database_url, tmp_path):
    path = tmp_path / "abc.csv"
    _write_csv(path, ["2024-03-01T00:00:00,1,2,0.5,1.5,10", "2024-03-01T02:00:00+01:00,1.5,2,1,1.2,5"],
               header="DATE,open,HIGH,low,Close,VOLUME")
    loaders.import_files(database_url, [path], symbol="ABC")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT datetime, close_price FROM crypto_prices WHERE interval_type = '1h' ORDER BY 1"
        ).fetchall()
    # The naive time is UTC; 02:00+01:00 is 01:00 UTC.
    assert rows == [(datetime(2024, 3, 1, tzinfo=UTC), 1.5), (datetime(2024, 3, 1, 1, tzinfo=UTC), 1.2)]


def test_cli_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "export", "lake", "backtest", "sweep", "results", "cache", "stats", "demo"):
        assert command in result.output


def test_cli_reports_unreachable_database_in_one_line(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:secret@127.0.0.1:1/none")
    result = CliRunner().invoke(app, ["db", "init"])
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at postgresql://nobody:***@127.0.0.1:1/none" in result.output
    assert "secret" not in result.output
    assert "Traceback" not in result.output
