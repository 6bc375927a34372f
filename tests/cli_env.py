"""The environment of a `python -m pipeline` child that a test starts."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_environment(lake_root: Path, results_root: Path, **settings: str) -> dict[str, str]:
    """This process's environment less its CRYPTOBT_ and PREFECT_API settings, with the given lake and
    results folder, no Redis, this work tree importable and 80 columns; `settings` add or replace."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOBT_", "PREFECT_API"))}
    environment.update(CRYPTOBT_LAKE_ROOT=str(lake_root), CRYPTOBT_RESULTS_ROOT=str(results_root), REDIS_URL="",
                       PYTHONPATH=str(ROOT), COLUMNS="80")
    environment.update(settings)
    return environment
