"""The export's read of PostgreSQL: each symbol's rows changed since a watermark, at its native
interval, in one consistent snapshot, over several connections (psql's binary COPY when it can be
given the connection's secrets, else psycopg's)."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pipeline.core import intervals as iv
from pipeline.core.config import SECRET_PARAMS, redact, redact_url
from pipeline.core.errors import ServiceUnavailable, disk_full
from pipeline.source.bar_rules import PRICE_COLUMNS
from pipeline.source.binary_copy import COPY_HEADER, COPY_TRAILER, decode_extract
from pipeline.source.postgres import connect, dsn_params, load_sql, symbol_states


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


@cache
def _libpq_env_vars() -> dict[str, str]:
    """libpq's connection parameter -> the environment variable it reads it from, where it has one."""
    return {d.keyword.decode(): d.envvar.decode() for d in psycopg.pq.Conninfo.get_defaults() if d.envvar}


def _psql_connection(url: str) -> tuple[str, dict[str, str]] | None:
    """(conninfo without secrets for psql's argv, the secrets as libpq environment variables), or None
    when a secret has no environment variable (sslpassword): then no subprocess may carry it."""
    params = dsn_params(url)
    env = {}
    for name in SECRET_PARAMS:
        if name in params:
            variable = _libpq_env_vars().get(name)
            if variable is None:
                return None
            env[variable] = str(params.pop(name))
    return make_conninfo(**params), env


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


def _copy_out_psql(url: str, snapshot_name: str, statement: str, spool: Path | None = None,
                   spool_bytes: int | None = None) -> bytes | mmap.mmap:
    """Run one COPY ... TO STDOUT in `psql`, in the exported snapshot: its bytes, or with `spool` (a file
    to create) the file psql wrote them to, mapped.

    psql hands the binary stream over in large blocks; psycopg's COPY delivers one
    Python object per row, which caps it near 1 M rows/s. Read through a pipe, the stream cost this process
    1.4-1.6 s of CPU per 684 MB (32 KB reads, then joined); written to a file and mapped, 0.1 s.
    """
    # Secrets go to psql through its environment, never its argv (which `ps` shows to everyone).
    connection = _psql_connection(url)
    if connection is None:
        raise RuntimeError("psql cannot be given this connection's secrets outside its argv")
    conninfo, secrets = connection
    env = {**os.environ, **secrets}
    command = [
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, *(("-o", str(spool)) if spool else ()),
        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "-c", f"SET TRANSACTION SNAPSHOT '{snapshot_name}'",
        "-c", statement,
        "-c", "COMMIT",
    ]
    done = subprocess.run(command, capture_output=True, check=False, env=env)
    if done.returncode != 0:
        message = redact(done.stderr.decode(errors="replace").strip())
        if spool is not None and "No space left on device" in message:
            raise disk_full(spool.parent.parent, spool_bytes, "CRYPTOBT_LAKE_ROOT")
        raise psycopg.OperationalError(f"psql COPY failed: {message}")
    if spool is None:
        return done.stdout
    with open(spool, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


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
    spool: Path | None = None,
) -> Extract:
    """Each symbol's rows at its native interval whose updated_at is after `since` (every row
    when None), plus every row of a symbol replaced since then, whose native interval is not
    the one in `natives_before` (the lake's symbols), that the lake lacks (new, or renamed in
    PostgreSQL), or named in `reread` (refused by the last export). A lake symbol that the source
    no longer has (deleted, renamed, no bars left) is in `whole` with no rows: it is gone.
    Prices whose crypto id has no symbol are skipped and counted (`orphans`). With `spool` (a folder that
    exists), a full read's psql streams go to files in a folder of their own there, mapped, and removed once
    decoded.

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
        with contextlib.ExitStack() as spooled:
            if use_psql and not in_process:
                # A full read's streams are spooled (the heap's size tells the disk it needs); a delta's, far
                # smaller, are piped.
                folder = (Path(spooled.enter_context(tempfile.TemporaryDirectory(dir=spool, prefix="copy-")))
                          if spool is not None and since is None else None)
                with ThreadPoolExecutor(max_workers=max(connections, 1)) as pool:
                    payloads = list(pool.map(
                        lambda k: _copy_out_psql(url, snapshot_name, statements[k],
                                                 folder / f"{k}.bin" if folder is not None else None,
                                                 int(pages) * 8192),
                        range(len(statements))))
                for payload in payloads:
                    if isinstance(payload, mmap.mmap):
                        spooled.callback(payload.close)
            else:
                payloads = [_copy_out_psycopg(conn, statement) for statement in statements]
            conn.commit()
            one = len(wanted) == 1
            raw = pl.concat([decode_extract(p, one) for p in payloads]) if payloads else decode_extract(
                COPY_HEADER + COPY_TRAILER)
            del payloads
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
