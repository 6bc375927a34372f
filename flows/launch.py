"""How a surface (the CLI, the demo) runs a flow's work: as the Prefect flow when a Prefect server
is configured, else the same steps in-process with the same retries.

Without a server, a flow run makes Prefect start a temporary API server first: ~11 s before a
~1 s export (issue 26). Importing Prefect alone costs most of a second, so this module does not
import it unless the flow runs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def prefect_server_configured() -> bool:
    """Whether Prefect would talk to a lasting server: PREFECT_API_URL in the environment or in the
    active profile of PREFECT_HOME's profiles.toml (`prefect config set PREFECT_API_URL=...`)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def export(full: bool = False, wait_seconds: float = 0.0, strict: bool = False, prefect: bool | None = None,
           log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The export as `cryptobt export` and the demo run it: the Prefect flow (tracked, artifacts) when
    a server is configured or `prefect` is True (a temporary server is started when none is), else
    `export.run_export` in-process, which retries the extract exactly as the flow's task does. The
    same summary either way; `prefect` in it says which ran."""
    if prefect or (prefect is None and prefect_server_configured()):
        from flows.export import export_flow
        from flows.temporary_server import tie_to_this_process

        tie_to_this_process()  # a killed export must not leave Prefect's temporary server listening
        summary = export_flow(full=full, wait_seconds=wait_seconds, strict=strict)
        return {**summary, "prefect": True}
    from pipeline.core.config import Settings
    from pipeline.lake.export import EXTRACT_RETRY_DELAYS, run_export

    # The flow's retries when it stands in for the flow; `--no-prefect` asks for one attempt (cron's own
    # schedule is its retry), as it always did.
    report = run_export(Settings.from_env(), full=full, wait_seconds=wait_seconds, strict=strict, log=log,
                        retries=EXTRACT_RETRY_DELAYS if prefect is None else ())
    return {"snapshot_id": report.snapshot_id, "created": report.created, "rows_read": report.rows_read,
            "changed_symbols": report.changed_symbols, "removed_snapshots": report.removed_snapshots,
            "seconds": round(report.seconds, 3), "warnings": report.warnings, "prefect": False}
