"""PostgreSQL, the source of truth: schema, binary COPY loads, upserts, incremental extract.

Every statement lives in `sql/` and is loaded from there. Values are always bound
parameters; the only SQL composed here goes through `psycopg.sql` literals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.core import intervals as iv
from pipeline.core.config import SECRET_PARAMS, SQL_DIR, redact, redact_url
from pipeline.core.errors import ConfigError, InputError, ServiceUnavailable

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# How a load meets a symbol's existing bars: `new` (it has none: straight COPY), `merge`
# (new bars are added, a differing bar is a conflict and nothing is written), `replace`
# (the load becomes the symbol's whole series).
LOAD_MODES = ("new", "merge", "replace")

# PostgreSQL's binary timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"

_PRICE_FIELDS = [(column, ">f8") for column in PRICE_COLUMNS]


def _copy_row_dtype(columns: list[tuple[str, str]]) -> np.dtype:
    """One binary COPY tuple: the field count, then (length, value) per column. Fixed width
    because every column is fixed width and NOT NULL, so numpy reads and writes it whole."""
    fields = [("nfields", ">i2")]
    for name, kind in columns:
        fields += [(f"len_{name}", ">i4"), (name, kind)]
    return np.dtype(fields)


@cache
def _load_row(interval: str) -> np.dtype:
    """A row as written by `load_prices`: interval_type is text, as long as the name ('15m' is 3 bytes)."""
    return _copy_row_dtype([("crypto_id", ">i4"), ("interval_type", f"S{len(interval.encode())}"),
                            ("datetime", ">i8"), *_PRICE_FIELDS])


# As produced by sql/queries/extract_prices*.sql.
_EXTRACT_ROW = _copy_row_dtype([("crypto_id", ">i4"), ("interval_index", ">i4"), ("datetime", ">i8"),
                                *_PRICE_FIELDS])
# The same without interval_index: a read of one interval (the usual lake) does not ask for it, which
# costs PostgreSQL a third less (1.45 M rows: 0.66-0.68 s against 0.96-1.19 s for array_position + ANY).
_EXTRACT_ROW_ONE = _copy_row_dtype([("crypto_id", ">i4"), ("datetime", ">i8"), *_PRICE_FIELDS])


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
    dbname = _dsn_params(url).get("dbname")
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


def _timestamps_us(ts: pl.Series) -> np.ndarray:
    return ts.dt.cast_time_unit("us").dt.replace_time_zone(None).cast(pl.Int64).to_numpy()


def encode_copy_rows(frame: pl.DataFrame, interval: str) -> np.ndarray:
    """Binary COPY tuples for a price frame (columns crypto_id, ts, open..volume)."""
    n = frame.height
    layout = _load_row(interval)
    rows = np.empty(n, dtype=layout)
    value_fields = [name for name in layout.names if name != "nfields" and not name.startswith("len_")]
    rows["nfields"] = len(value_fields)
    for name in value_fields:
        rows[f"len_{name}"] = layout.fields[name][0].itemsize
    rows["crypto_id"] = frame["crypto_id"].to_numpy()
    rows["interval_type"] = interval.encode()
    rows["datetime"] = _timestamps_us(frame["ts"]) - _PG_EPOCH_US
    for column in PRICE_COLUMNS:
        rows[column] = frame[column].to_numpy()
    return rows


def _copy_frames(
    cursor: psycopg.Cursor,
    target: str,
    frames: dict[str, pl.DataFrame],
    chunk_rows: int,
    progress: Callable[[int], None] | None,
) -> int:
    statement = sql.SQL(
        "COPY {} (crypto_id, interval_type, datetime, open_price, high_price, low_price,"
        " close_price, volume) FROM STDIN (FORMAT binary)"
    ).format(sql.Identifier(target))
    written = 0
    with cursor.copy(statement) as copy:
        copy.write(_COPY_HEADER)
        for interval, frame in frames.items():
            for offset in range(0, frame.height, chunk_rows):
                chunk = frame.slice(offset, chunk_rows)
                copy.write(encode_copy_rows(chunk, interval).tobytes())
                written += chunk.height
                if progress:
                    progress(chunk.height)
        copy.write(_COPY_TRAILER)
    return written


@dataclass(frozen=True)
class LoadCounts:
    """What a load did: rows sent, rows that changed (inserted, updated or deleted), and per
    crypto id the bars that differ from existing ones (a `merge` with conflicts writes nothing)."""

    sent: int = 0
    changed: int = 0
    conflicts: dict[int, tuple[int, datetime]] = field(default_factory=dict)  # id -> (differing, first at)

    def __add__(self, other: LoadCounts) -> LoadCounts:
        return LoadCounts(self.sent + other.sent, self.changed + other.changed,
                          {**self.conflicts, **other.conflicts})


class PriceLoad:
    """One load of price frames, written with binary COPY in the caller's transaction as they come
    (`add`, any number of times: memory holds one batch, not the load) and settled by `finish`.

    `mode` is one of LOAD_MODES: `new` copies straight into crypto_prices (a duplicate key fails
    the whole load); `merge` copies into a staging table, refuses (returns the conflicts, writes
    nothing) if any staged bar of a symbol's native interval (`natives`: crypto id -> interval,
    default 1h) differs from an existing one, else inserts new bars and updates derived ones; `replace`
    makes the staged bars the symbols' whole series. Identical bars are never rewritten, so a
    repeated load changes 0 rows. The caller rolls back when there are conflicts.
    """

    def __init__(self, conn: psycopg.Connection, *, mode: str, natives: dict[int, str] | None = None,
                 chunk_rows: int = 500_000, progress: Callable[[int], None] | None = None) -> None:
        if mode not in LOAD_MODES:
            raise ValueError(f"mode {mode!r} is not one of {LOAD_MODES}")
        self.conn, self.mode, self.natives = conn, mode, natives or {}
        self.chunk_rows, self.progress = chunk_rows, progress
        self.sent, self.ids = 0, set()
        if mode != "new":
            conn.execute(load_sql("create_staging_prices.sql"))

    def add(self, frames: dict[str, pl.DataFrame]) -> None:
        """Copy price frames (keyed by interval; columns crypto_id, ts, open..volume)."""
        for interval in frames:
            if interval not in iv.SECONDS:
                raise InputError(f"interval {interval!r} is not allowed; use one of {', '.join(iv.NAMES)}")
        target = "crypto_prices" if self.mode == "new" else "staging_prices"
        with self.conn.cursor() as cursor:
            self.sent += _copy_frames(cursor, target, frames, self.chunk_rows, self.progress)
        self.ids.update(int(i) for frame in frames.values() for i in frame["crypto_id"].unique().to_list())

    def finish(self) -> LoadCounts:
        if self.mode == "new":
            return LoadCounts(self.sent, self.sent)
        ids = sorted(self.ids)
        deleted = 0
        with self.conn.cursor() as cursor:
            if self.mode == "merge":
                pairs = {"ids": ids, "natives": [self.natives.get(i, "1h") for i in ids]}
                conflicts = {crypto_id: (int(n), first) for crypto_id, n, first in
                             cursor.execute(load_sql("conflicting_prices.sql"), pairs).fetchall()}
                if conflicts:
                    return LoadCounts(self.sent, 0, conflicts)
            else:
                deleted = int(cursor.execute(load_sql("replace_series.sql"), {"ids": ids}).fetchone()[0])
            cursor.execute(load_sql("merge_staging_prices.sql"))
            return LoadCounts(self.sent, deleted + max(cursor.rowcount, 0))


def load_prices(
    conn: psycopg.Connection,
    frames: dict[str, pl.DataFrame],
    *,
    mode: str,
    natives: dict[int, str] | None = None,
    chunk_rows: int = 500_000,
    progress: Callable[[int], None] | None = None,
) -> LoadCounts:
    """Write price frames (keyed by interval) in one `PriceLoad` (which says what each mode does)."""
    load = PriceLoad(conn, mode=mode, natives=natives, chunk_rows=chunk_rows, progress=progress)
    load.add(frames)
    return load.finish()


def load_prices_parallel(
    url: str,
    symbols: list[str],
    frames: dict[str, pl.DataFrame],
    *,
    mode: str,
    connections: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[LoadCounts, dict[str, int]]:
    """`load_prices` of `symbols` split over `connections` connections (one backend per core). `frames`
    (keyed by interval) identify a row's symbol by `symbol_index`, its position in `symbols`.

    Each connection registers its share of the symbols in the same transaction that copies their
    prices, so a symbol is never committed without them (a killed load leaves none behind), and
    commits only once all have copied without a conflict: a failure or a conflict in any of them
    rolls every one back. Returns the counts and every symbol's id.
    """
    connections = max(1, min(connections, len(symbols)))
    shards = [list(range(shard, len(symbols), connections)) for shard in range(connections)]

    def load_shard(conn: psycopg.Connection, indexes: list[int]) -> tuple[LoadCounts, dict[str, int]]:
        ids = register_symbols(conn, [symbols[i] for i in indexes])
        lookup = pl.DataFrame({"symbol_index": indexes, "crypto_id": [ids[symbols[i]] for i in indexes]},
                              schema={"symbol_index": pl.Int32, "crypto_id": pl.Int32})
        own = {interval: frame.join(lookup, on="symbol_index").drop("symbol_index") for interval, frame in frames.items()}
        return load_prices(conn, own, mode=mode, progress=progress), ids

    from concurrent.futures import ThreadPoolExecutor

    conns = [connect(url) for _ in range(connections)]
    try:
        with ThreadPoolExecutor(max_workers=connections) as pool:
            parts = list(pool.map(lambda pair: load_shard(*pair), zip(conns, shards, strict=True)))
        counts = sum((part for part, _ in parts), LoadCounts())
        for conn in conns:
            if counts.conflicts:
                conn.rollback()
            else:
                conn.commit()
    except BaseException:
        for conn in conns:
            conn.rollback()
        raise
    finally:
        for conn in conns:
            conn.close()
    return counts, {name: crypto_id for _, ids in parts for name, crypto_id in ids.items()}


@dataclass(frozen=True)
class Extract:
    """Rows changed since a watermark, read in one consistent PostgreSQL snapshot, named by symbol."""

    bars: pl.DataFrame  # symbol, ts, open..volume: each symbol's rows at its native interval only
    natives: dict[str, str]  # every symbol that has bars -> its native interval
    # Symbols whose rows in `bars` are their whole series (none: the symbol is gone from the source).
    whole: set[str]
    watermark: datetime  # pass to the next extract
    rows_read: int
    orphans: dict[int, int] = field(default_factory=dict)  # crypto id with prices but no symbol row -> rows
    # Sessions of this database whose transaction start pg_stat_activity hides from this role (the watermark
    # cannot wait for a writer among them).
    hidden_sessions: int = 0


def source_id(url: str) -> str:
    """Which database a lake snapshot came from: host, port and database of the URL or libpq key=value
    string, never the credentials (the same id for both forms of one database)."""
    params = _dsn_params(url)
    host = (params.get("host") or params.get("hostaddr") or "localhost").lower()
    return f"postgresql://{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _dsn_params(url: str) -> dict[str, Any]:
    """The parameters of a postgresql:// URL or a key=value connection string (libpq's parser)."""
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"DATABASE_URL {redact(url)!r} is not a PostgreSQL connection string "
                          f"({redact(str(exc).strip().splitlines()[0])}); use postgresql://user@host:5432/db "
                          "or host=... dbname=...") from None


@cache
def _libpq_env_vars() -> dict[str, str]:
    """libpq's connection parameter -> the environment variable it reads it from, where it has one."""
    return {d.keyword.decode(): d.envvar.decode() for d in psycopg.pq.Conninfo.get_defaults() if d.envvar}


def _psql_connection(url: str) -> tuple[str, dict[str, str]] | None:
    """(conninfo without secrets for psql's argv, the secrets as libpq environment variables), or None
    when a secret has no environment variable (sslpassword): then no subprocess may carry it."""
    params = _dsn_params(url)
    env = {}
    for name in SECRET_PARAMS:
        if name in params:
            variable = _libpq_env_vars().get(name)
            if variable is None:
                return None
            env[variable] = str(params.pop(name))
    return make_conninfo(**params), env


def _decode_extract(payload: bytes, one_interval: bool = False) -> pl.DataFrame:
    layout = _EXTRACT_ROW_ONE if one_interval else _EXTRACT_ROW
    body = memoryview(payload)[len(_COPY_HEADER): len(payload) - len(_COPY_TRAILER)]
    if len(body) % layout.itemsize:
        raise RuntimeError("binary COPY payload has an unexpected row layout (NULLs in crypto_prices?)")
    rows = np.frombuffer(body, dtype=layout)
    since_2000 = rows["datetime"].astype(np.int64)
    # 'infinity' and '-infinity' are the int64 extremes: kept there (the export refuses them), not wrapped around.
    infinite = (since_2000 == np.iinfo(np.int64).max) | (since_2000 == np.iinfo(np.int64).min)
    return pl.DataFrame({
        "crypto_id": rows["crypto_id"].astype(np.int32),
        "interval_index": np.ones(len(rows), dtype=np.int32) if one_interval else rows["interval_index"].astype(np.int32),
        "ts": np.where(infinite, since_2000, since_2000 + _PG_EPOCH_US),
        **{column: rows[column].astype(np.float64) for column in PRICE_COLUMNS},
    }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def _interval_parts(wanted: list[str]) -> dict[str, sql.Composable]:
    """The extract's interval column and filter: none and `=` for one interval, else its position and ANY."""
    if len(wanted) == 1:
        return {"interval_index": sql.SQL(""), "interval_match": sql.SQL("interval_type = {}").format(
            sql.Literal(wanted[0]))}
    return {"interval_index": sql.SQL("array_position({}::text[], interval_type)::integer AS interval_index,").format(
        sql.Literal(wanted)), "interval_match": sql.SQL("interval_type = ANY({}::text[])").format(sql.Literal(wanted))}


def _extract_statement(conn: psycopg.Connection, wanted: list[str], watermark: datetime | None,
                       whole_ids: list[int], slice_from: int, slice_to: int) -> str:
    """COPY of one slice: pages [from, to) for a full read, crypto ids [from, to) for a delta."""
    if watermark is None:
        return sql.SQL(load_sql("extract_prices_full.sql")).format(
            **_interval_parts(wanted),
            ctid_from=sql.Literal(f"({slice_from},0)"),
            ctid_to=sql.Literal(f"({slice_to},0)"),
        ).as_string(conn)
    return sql.SQL(load_sql("extract_prices.sql")).format(
        **_interval_parts(wanted),
        watermark=sql.Literal(watermark),
        whole_ids=sql.Literal(whole_ids),
        id_from=sql.Literal(slice_from),
        id_to=sql.Literal(slice_to),
    ).as_string(conn)


def _copy_out_psql(url: str, snapshot_name: str, statement: str) -> bytes:
    """Run one COPY ... TO STDOUT in `psql`, in the exported snapshot.

    psql hands the binary stream over in large blocks; psycopg's COPY delivers one
    Python object per row, which caps it near 1 M rows/s.
    """
    # Secrets go to psql through its environment, never its argv (which `ps` shows to everyone).
    connection = _psql_connection(url)
    if connection is None:
        raise RuntimeError("psql cannot be given this connection's secrets outside its argv")
    conninfo, secrets = connection
    env = {**os.environ, **secrets}
    command = [
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "-c", f"SET TRANSACTION SNAPSHOT '{snapshot_name}'",
        "-c", statement,
        "-c", "COMMIT",
    ]
    done = subprocess.run(command, capture_output=True, check=False, env=env)
    if done.returncode != 0:
        message = redact(done.stderr.decode(errors="replace").strip())
        raise psycopg.OperationalError(f"psql COPY failed: {message}")
    return done.stdout


def _copy_out_psycopg(conn: psycopg.Connection, statement: str) -> bytes:
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def extract_changed(url: str, since: datetime | None, **kwargs: Any) -> Extract:
    """`_extract_changed`, with a server that goes away mid-read told as one line (the flow retries it)."""
    try:
        return _extract_changed(url, since, **kwargs)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"lost PostgreSQL at {redact_url(url)} during the export's read "
            f"({str(exc).strip().splitlines()[0]}); nothing was committed; start it and run the export again"
        ) from exc


def _extract_changed(
    url: str,
    since: datetime | None,
    *,
    connections: int = 2,
    natives_before: dict[str, str] | None = None,
    reread: set[str] | frozenset[str] = frozenset(),
) -> Extract:
    """Each symbol's rows at its native interval whose updated_at is after `since` (every row
    when None), plus every row of a symbol replaced since then, whose native interval is not
    the one in `natives_before` (the lake's symbols), that the lake lacks (new, or renamed in
    PostgreSQL), or named in `reread` (refused by the last export). A lake symbol that the source
    no longer has (deleted, renamed, no bars left) is in `whole` with no rows: it is gone.
    Prices whose crypto id has no symbol are skipped and counted (`orphans`).

    The next watermark is the start of the oldest transaction open in this database just before
    the export's snapshot (now() if none): a writer open then, even one that has only read so far,
    commits rows stamped no earlier. One REPEATABLE READ transaction then exports its snapshot;
    the COPY streams run in that same snapshot over `connections` connections, each on
    a slice, so the result is consistent whatever commits meanwhile.
    """
    # psql only when every secret of the connection can travel in its environment.
    use_psql = shutil.which("psql") is not None and _psql_connection(url) is not None
    natives_before = natives_before or {}
    with connect(url) as conn:
        if since is not None:
            summarize_new_rows(conn)
        # Before the snapshot, in a transaction of its own: a transaction still open may commit rows the
        # snapshot cannot see, stamped as early as its start (see the SQL file).
        watermark, hidden = conn.execute(load_sql("export_watermark.sql")).fetchone()
        conn.commit()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        id_end, pages, snapshot_name = conn.execute(load_sql("export_snapshot.sql")).fetchone()
        states = [state for state in symbol_states(conn) if state.native]
        orphans = dict(conn.execute(load_sql("orphan_prices.sql")).fetchall())
        names = {state.id: state.symbol for state in states}
        natives = {state.symbol: state.native for state in states}
        whole_ids = [] if since is None else [
            state.id for state in states
            if (state.replaced_at is not None and state.replaced_at > since)
            or natives_before.get(state.symbol) != state.native
            or state.symbol in reread
        ]
        wanted = [name for name in iv.NAMES if name in set(natives.values())]
        # A delta that reads no symbol whole is a few rows (the hours since the last export): one COPY
        # on this connection, in this transaction, costs less than starting psql processes (~0.15 s).
        in_process = since is not None and not whole_ids
        # A full read splits the heap's pages; a delta splits crypto ids (it reads few rows
        # through the updated_at index, wherever they are).
        low, high = (0, int(pages) + 1) if since is None else (1, max(int(id_end), 2))
        bounds = np.linspace(low, high, num=max(connections, 1) + 1).astype(int)
        slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        statements = [_extract_statement(conn, wanted, since, whole_ids, a, b) for a, b in slices] if wanted else []
        if in_process and wanted:
            conn.execute(load_sql("delta_read_plan.sql"))
            statements = [sql.SQL(load_sql("extract_prices_delta.sql")).format(
                **_interval_parts(wanted), watermark=sql.Literal(since)).as_string(conn)]
        if use_psql and not in_process:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=max(connections, 1)) as pool:
                payloads = list(pool.map(lambda s: _copy_out_psql(url, snapshot_name, s), statements))
        else:
            payloads = [_copy_out_psycopg(conn, statement) for statement in statements]
        conn.commit()
    one = len(wanted) == 1
    raw = pl.concat([_decode_extract(p, one) for p in payloads]) if payloads else _decode_extract(
        _COPY_HEADER + _COPY_TRAILER)
    bars = _named_native_rows(raw, names, natives, wanted)
    gone = set(natives_before) - set(natives) if since is not None else set()
    return Extract(bars=bars, natives=natives, whole={names[i] for i in whole_ids} | gone, watermark=watermark,
                   rows_read=raw.height, orphans=orphans, hidden_sessions=int(hidden))


def summarize_new_rows(conn: psycopg.Connection) -> None:
    """Let the updated_at BRIN index find the rows added since the last VACUUM (see the SQL file).
    A role that does not own the table (a read-only exporter) cannot: the read is then still
    right, only slower."""
    try:
        conn.execute(load_sql("summarize_updated_at.sql"))
        conn.commit()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable, psycopg.errors.ReadOnlySqlTransaction):
        conn.rollback()


def _named_native_rows(raw: pl.DataFrame, names: dict[int, str], natives: dict[str, str],
                       wanted: list[str]) -> pl.DataFrame:
    """Each symbol's rows at its native interval, named (symbol, ts, open..volume); rows of a crypto id
    without a symbol are dropped. The symbol is an Enum of the source's names: looked up by array
    index, not joined by string, and cheap to group, sort and carry (a few M rows per export)."""
    if not names:
        return pl.DataFrame(schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"),
                                    **dict.fromkeys(PRICE_COLUMNS, pl.Float64)})
    ordered = sorted(names.values())
    position = {name: i for i, name in enumerate(ordered)}
    size = max(names) + 1
    code_of = np.full(size, -1, dtype=np.int64)
    native_of = np.zeros(size, dtype=np.int32)  # array_position counts from 1: 0 matches no row
    for crypto_id, name in names.items():
        code_of[crypto_id] = position[name]
        native_of[crypto_id] = wanted.index(natives[name]) + 1
    crypto = raw["crypto_id"].to_numpy()
    known = (crypto >= 0) & (crypto < size)
    at = np.where(known, crypto, 0)
    keep = known & (code_of[at] >= 0) & (raw["interval_index"].to_numpy() == native_of[at])
    symbol = pl.Series("symbol", ordered, dtype=pl.Enum(ordered)).gather(code_of[at[keep]])
    return raw.filter(pl.Series(keep)).select("ts", *PRICE_COLUMNS).insert_column(0, symbol)


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
