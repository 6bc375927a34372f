"""`cryptobt serve`, `cryptobt api` and `cryptobt demo`: the scheduled flows, the HTTP API and the sample tour."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, err_console
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError

app = typer.Typer()


@app.command("serve")
@user_errors
def serve_command(
    export_cron: Annotated[str, typer.Option(help="Cron for the export flow.")] = "0 * * * *",
    backtest_cron: Annotated[str, typer.Option(help="Cron for the backtest flow.")] = "30 2 * * *",
) -> None:
    """Serve the export (hourly) and backtest (nightly) flows on schedules with Prefect.

    Example: cryptobt serve --export-cron "5 * * * *" --backtest-cron "0 3 * * *"
    """
    from prefect import serve
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    for option, text in (("--export-cron", export_cron), ("--backtest-cron", backtest_cron)):
        try:
            CronSchedule(cron=text)
        except ValidationError:
            raise PipelineError(f"{option} {text!r} is not a cron expression (five fields, e.g. '0 * * * *')") from None
    if not os.environ.get("PREFECT_API_URL"):
        err_console.print(
            "PREFECT_API_URL is not set: Prefect starts a temporary server for this process; its deployments "
            "vanish when it stops and other shells cannot reach them. For a lasting server run "
            "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api first.",
            highlight=False, soft_wrap=True)

    from flows.backtest import backtest_flow
    from flows.export import export_flow
    from flows.temporary_server import tie_to_this_process

    tie_to_this_process()
    serve(
        export_flow.to_deployment(name="export-hourly", cron=export_cron),
        backtest_flow.to_deployment(name="backtest-nightly", cron=backtest_cron),
    )


@app.command("api")
@user_errors
def api_command(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 = every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the dashboard (/) with uvicorn.

    Runs go through the same path as `cryptobt backtest`; CRYPTOBT_API_WORKERS runs at once,
    CRYPTOBT_API_QUEUE more wait; admin endpoints need CRYPTOBT_ADMIN_TOKEN. Only requests whose Host
    is localhost, 127.0.0.1, ::1, the --host address or in CRYPTOBT_API_ALLOWED_HOSTS are served.
    Example: cryptobt api --host 127.0.0.1 --port 8000
    """
    import gc

    from pipeline.api.app import create_app, serve

    if not 1 <= port <= 65535:
        raise PipelineError(f"--port {port} is out of range: an integer from 1 to 65535")
    settings = Settings.from_env()
    err_console.print(f"cryptobt api on http://{host}:{port}/ (OpenAPI at /docs; lake {settings.lake_root}; "
                      f"admin endpoints {'on' if settings.admin_token else 'off: CRYPTOBT_ADMIN_TOKEN is unset'})",
                      highlight=False, soft_wrap=True)
    served = create_app(settings, host=host)
    # What start-up built lives as long as the server: full garbage collections, which stop every thread
    # (the event loop too), need not walk it again. Measured: the checks of a million-point grid paused
    # all threads up to 1.76 s per collection without this, 0.32 s with it.
    gc.freeze()
    serve(served, host, port)


@app.command("demo")
@user_errors
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the sample lake, results and pictures go.")] = Path("data"),
    sample: Annotated[Path | None, typer.Option(help="Folder of real OHLCV files to include.")] = None,
    symbols: Annotated[int, typer.Option(help="Synthetic symbols in the sample lake.")] = 60,
    years: Annotated[float, typer.Option(help="Years of synthetic history.")] = 2.0,
) -> None:
    """Build a sample lake (or use PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set), run a
    backtest of every symbol and a small sweep, write results and pictures.

    Example: cryptobt demo --workdir /tmp/cryptobt-demo
    """
    from pipeline import demo

    demo.run_demo(workdir, sample, symbols, years, console=console, err_console=err_console)
