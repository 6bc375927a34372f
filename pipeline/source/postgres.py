"""PostgreSQL, the source of truth: connections, schema, symbols. Loading prices is
pipeline.source.price_load, the export's read pipeline.source.extract, both over binary COPY
(pipeline.source.binary_copy).

Every statement lives in `sql/` and is loaded from there. Values are always bound
parameters; the only SQL composed here goes through `psycopg.sql` literals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.core import intervals as iv
from pipeline.core.config import SQL_DIR, redact, redact_url
from pipeline.core.errors import ConfigError, ServiceUnavailable


@cache
def load_sql(name: str) -> str:
    """The text of `sql/<name>` (schema files) or `sql/queries/<name>`."""
    path = SQL_DIR / name
    if not path.exists():
        path = SQL_DIR / "queries" / name
    return path.read_text()


def schema_files() -> list[Path]:
    """The schema files, applied in name order."""
    return sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def _unreachable(url: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot connect to PostgreSQL at {redact_url(url)} ({str(exc).strip().splitlines()[0]}); "
        "start it (pg_ctlcluster 15 main start, or docker compose up -d postgres) "
        "or set DATABASE_URL to a reachable server"
    )


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    """A connection, or a ServiceUnavailable that names the URL and how to fix it."""
    try:
        return psycopg.connect(url, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        raise _unreachable(url, exc) from exc


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist. True if it was created."""
    dbname = dsn_params(url).get("dbname")
    if not dbname:
        return False
    try:
        with psycopg.connect(url, connect_timeout=5):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise _unreachable(url, exc) from exc
    admin_url = make_conninfo(url, dbname="postgres")
    with connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return True


def apply_schema(url: str) -> list[str]:
    """Apply every schema file (idempotent). Returns the file names applied."""
    ensure_database(url)
    applied = []
    with connect(url) as conn:
        conn.execute(load_sql("schema_lock.sql"))
        for path in schema_files():
            conn.execute(path.read_text())
            applied.append(path.name)
    return applied


def write_strategies(url: str, defaults: dict[str, dict[str, object]]) -> None:
    """Upsert each strategy's default parameters into crypto_strategies (for SQL users)."""
    import json

    names = sorted(defaults)
    with connect(url) as conn:
        conn.execute(load_sql("upsert_strategies.sql"),
                     {"names": names, "defaults": [json.dumps(defaults[n], sort_keys=True) for n in names]})


def symbol_ids(conn: psycopg.Connection, symbols: list[str]) -> dict[str, int]:
    """Ids of those of `symbols` that exist."""
    rows = conn.execute(load_sql("symbol_ids.sql"), {"symbols": symbols}).fetchall()
    return {symbol: crypto_id for crypto_id, symbol in rows}


def register_symbols(conn: psycopg.Connection, symbols: list[str]) -> dict[str, int]:
    """Ids for `symbols`, creating the missing ones (in the caller's transaction: commit them with
    their prices, so that a failed or killed load leaves no symbol without prices)."""
    conn.execute(load_sql("upsert_symbols.sql"), {"symbols": symbols})
    return symbol_ids(conn, symbols)


def read_futures(url: str) -> pl.DataFrame:
    """Every perpetual's funding rates and mark bars (pipeline.lake.futures_table's rows), whole."""
    with connect(url) as conn:
        rows = conn.execute(load_sql("extract_futures.sql")).fetchall()
    frame = pl.DataFrame(rows, schema=["symbol", "kind", "interval", "datetime", "open", "high", "low", "close"],
                         orient="row")
    return frame.with_columns(pl.col("datetime").dt.convert_time_zone("UTC").dt.cast_time_unit("us")) if rows else frame


def symbol_names(conn: psycopg.Connection) -> dict[int, str]:
    """Every crypto id with its symbol."""
    return dict(conn.execute(load_sql("all_symbols.sql")).fetchall())


@dataclass(frozen=True)
class SymbolState:
    id: int
    symbol: str
    native: str | None  # the finest interval it has bars of; None = no bars
    replaced_at: datetime | None


def symbol_states(conn: psycopg.Connection, ids: list[int] | None = None) -> list[SymbolState]:
    """Native interval and last replacement of `ids` (None = every symbol), by primary-key probes."""
    rows = conn.execute(load_sql("symbol_natives.sql"), {"ids": ids, "intervals": list(iv.NAMES)}).fetchall()
    return [SymbolState(i, symbol, native, replaced_at) for i, symbol, replaced_at, native in rows]


def source_id(url: str) -> str:
    """Which database a lake snapshot came from: host, port and database of the URL or libpq key=value
    string, never the credentials (the same id for both forms of one database)."""
    params = dsn_params(url)
    host = (params.get("host") or params.get("hostaddr") or "localhost").lower()
    return f"postgresql://{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def dsn_params(url: str) -> dict[str, Any]:
    """The parameters of a postgresql:// URL or a key=value connection string (libpq's parser)."""
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"DATABASE_URL {redact(url)!r} is not a PostgreSQL connection string "
                          f"({redact(str(exc).strip().splitlines()[0])}); use postgresql://user@host:5432/db "
                          "or host=... dbname=...") from None


def table_sizes(url: str) -> dict[str, int]:
    """Bytes on disk of each table with its indexes (pg_total_relation_size)."""
    with connect(url) as conn:
        rows = conn.execute(
            load_sql("table_sizes.sql"),
            {"tables": ["cryptocurrencies", "crypto_prices", "crypto_strategies"]},
        ).fetchall()
    return dict(rows)


def has_prices(conn: psycopg.Connection, crypto_ids: list[int] | None = None) -> bool:
    """Whether crypto_prices holds any row (of `crypto_ids`, when given)."""
    if crypto_ids is None:
        return not conn.execute(load_sql("prices_empty.sql")).fetchone()[0]
    return bool(conn.execute(load_sql("symbols_have_prices.sql"), {"ids": crypto_ids}).fetchone()[0])
