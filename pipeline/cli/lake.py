"""`cryptobt export` and `cryptobt lake`: write a lake snapshot from PostgreSQL, list, verify and vacuum them."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, err_console, print_findings, warn
from pipeline.core import tables
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import options

app = typer.Typer(help="The Parquet lake: snapshots and retention.", no_args_is_help=True)
# `export`, listed among the root's commands.
commands = typer.Typer()


@commands.command("export")
@user_errors
def export_command(
    full: Annotated[bool, typer.Option("--full", help="Re-read everything (also drops rows deleted in PostgreSQL).")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another export's lock.")] = 0.0,
    prefect: Annotated[bool | None, typer.Option(
        "--prefect/--no-prefect", help="Run as a Prefect flow (tracked in its UI, artifacts). Default: when a "
                                       "Prefect server is configured (PREFECT_API_URL); without one the same steps "
                                       "run in-process with the same retries. --prefect without a server starts a "
                                       "temporary one (~10 s); --no-prefect runs in-process, one attempt.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to commit changed symbols with data findings "
                                                           "(gaps, jumps, stale or zero prices...).")] = False,
) -> None:
    """Export PostgreSQL into a new lake snapshot (incremental unless --full).

    A lake holds one source's data, by symbol name: when the current snapshot came from
    another source (the demo's sample, another database), the export reads everything and its
    snapshot replaces that source's symbols (older snapshots keep them until vacuumed).
    Data health of the changed symbols is checked and printed at the end.

    Examples: cryptobt export | cryptobt export --full --no-prefect
    """
    import json

    from pipeline.core.errors import SnapshotDamaged
    from pipeline.lake import snapshots as lake
    from pipeline.source import postgres as source

    wait = options.check_number("--wait", wait, 0, 86_400)
    settings = Settings.from_env()
    try:
        current = lake.current_snapshot(settings.lake_root)
    except SnapshotDamaged:
        current = None  # the export says what to do (a full export heals)
    here = source.source_id(settings.database_url)
    if current is not None and current.manifest.get("source") != here:
        err_console.print(f"the current snapshot {current.id} came from {current.manifest.get('source')}; reading "
                          f"{here} whole: its snapshot replaces those symbols", highlight=False, soft_wrap=True)
    from flows.launch import export as run_export

    summary = run_export(full=full, wait_seconds=wait, strict=strict, prefect=prefect,
                         log=lambda m: err_console.print(m, highlight=False, markup=False, soft_wrap=True))
    if not summary.pop("prefect"):
        for line in summary["warnings"]:  # the flow logs its own (a scheduled run has no console)
            warn(line)
    if as_json:
        print(json.dumps(summary))
        return
    state = "new snapshot" if summary["created"] else "unchanged, snapshot stands"
    console.print(f"{state}: {summary['snapshot_id']} ({summary['rows_read']:,} rows read, "
                  f"{len(summary['changed_symbols'])} symbols changed)")
    committed = lake.current_snapshot(settings.lake_root)
    if committed is not None and summary["created"]:
        print_findings({n: committed.symbols[n]["health"] for n in summary["changed_symbols"]
                         if committed.symbols.get(n, {}).get("health")})


@app.command("snapshots")
@user_errors
def lake_snapshots(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the lake's snapshots, oldest first; * marks the current one.

    Example: cryptobt lake snapshots
    """
    import json

    from pipeline.lake import snapshots as lake

    settings = Settings.from_env()
    current = lake.current_snapshot(settings.lake_root)
    rows = [{"snapshot_id": s.id, "created_at": s.manifest["created_at"], "source": s.manifest["source"],
             "symbols": len(s.symbols), "changed": len(s.manifest["changed_symbols"]),
             "rows_read": s.manifest["rows_read"], "current": current is not None and s.id == current.id}
            for s in lake.list_snapshots(settings.lake_root)]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print(f"no snapshots under {settings.lake_root}")
        return
    # The snapshot id is what a user copies (--snapshot): never cut; other columns go first.
    columns = [tables.Column("", required=True), tables.Column("snapshot", required=True, right=False),
               tables.Column("created (UTC)", drop_rank=2, right=False), tables.Column("source", drop_rank=1, right=False),
               tables.Column("symbols", drop_rank=3), tables.Column("changed", drop_rank=4),
               tables.Column("rows read", drop_rank=5)]
    tables.print_table(console, columns, [["*" if r["current"] else "", r["snapshot_id"], r["created_at"][:19],
                                           r["source"], *(tables.formatted(r[k], "count") for k in
                                                          ("symbols", "changed", "rows_read"))] for r in rows],
                       "snapshots, oldest first (* = current)")


@app.command("verify")
@user_errors
def lake_verify(
    all_: Annotated[bool, typer.Option("--all", help="Every snapshot, not only the current one.")] = False,
) -> None:
    """Check a snapshot against the checksums its manifest recorded at commit: manifest, state, every file,
    and its kept price grids.

    Prints one line per problem (damaged, missing or stray file) and exits 1 if there is any.
    Example: cryptobt lake verify --all
    """
    from pipeline.lake import snapshots as lake
    from pipeline.lake import verify

    settings = Settings.from_env()
    root = settings.lake_root
    if all_:
        folder = root / "snapshots"
        paths = sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
    else:
        paths = [lake.require_snapshot(root).path]
    problems = [problem for path in paths for problem in verify.problems(path)]
    for problem in problems:
        console.print(problem, highlight=False, soft_wrap=True)
    if problems:
        raise PipelineError(f"{len(problems)} problem(s) in {len(paths)} snapshot(s); "
                            "`cryptobt export --full` writes a good snapshot")
    console.print(f"{len(paths)} snapshot(s) verified: every file matches its recorded checksum")


@app.command("vacuum")
@user_errors
def lake_vacuum(
    keep: Annotated[int | None, typer.Option(help="Snapshots to keep (default CRYPTOBT_SNAPSHOT_KEEP).")] = None,
    keep_hours: Annotated[float | None, typer.Option(help="Keep any younger than this.")] = None,
) -> None:
    """Remove snapshots past the retention (never the current one).

    Example: cryptobt lake vacuum --keep 3 --keep-hours 0
    """
    from pipeline.lake import retention
    from pipeline.lake import snapshots as lake

    if keep is not None and keep < 1:
        raise PipelineError(f"--keep {keep} must be >= 1")
    if keep_hours is not None:
        keep_hours = options.check_number("--keep-hours", keep_hours, 0, options.MAX_HOURS)
    settings = Settings.from_env()
    with lake.export_lock(settings.lake_root, wait_seconds=30):
        removed = retention.vacuum(settings.lake_root, keep=keep or settings.snapshot_keep,
                                   keep_hours=settings.snapshot_keep_hours if keep_hours is None else keep_hours)
    console.print(f"removed {len(removed)} snapshot(s)" + (": " + ", ".join(removed) if removed else ""))
