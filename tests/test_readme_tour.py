"""The README's CLI tour is executable documentation: every command runs as printed, in order.

The commands are read from the block between `<!-- tour:begin -->` and `<!-- tour:end -->` in
README.md (a command added there is tested from then on), and run with bash against a fresh
PostgreSQL database, a fresh Redis key prefix and a temporary lake, in a folder that holds the
project's `data/sample` as a fresh clone does. Each must exit 0 without a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tour:begin -->", "<!-- tour:end -->"


def tour_commands(readme: str) -> list[str]:
    """The tour's command lines, comments stripped, in order."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise AssertionError(f"README.md must hold exactly one {BEGIN} ... {END} block")
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    fenced = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    commands = []
    for body in fenced:
        for line in body.splitlines():
            # A comment starts at ' # ' outside quotes; the tour keeps '#' out of its quoted arguments.
            command = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_tour_block_is_found_and_names_only_cryptobt_commands():
    commands = tour_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 10
    assert all(c.startswith("cryptobt ") for c in commands), commands
    assert not any("|" in c.split('"')[0] for c in commands), "no shell pipes between commands"


@pytest.mark.slow
def test_every_tour_command_runs_as_printed_in_order(database_url, redis_url, redis_prefix, prefect_home,
                                                     tmp_path):
    work = tmp_path / "clone"
    (work / "data").mkdir(parents=True)
    (work / "data" / "sample").symlink_to(ROOT / "data" / "sample")
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("CRYPTOBT_", "PREFECT_API", "PREFECT_HOME"))}
    environment.update(
        DATABASE_URL=database_url, REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix,
        CRYPTOBT_LAKE_ROOT=str(work / "data" / "lake"), CRYPTOBT_RESULTS_ROOT=str(work / "data" / "results"),
        PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", COLUMNS="100",
    )
    commands = tour_commands((ROOT / "README.md").read_text())
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=work, env=environment, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"$ {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr + result.stdout, f"$ {command}\n{result.stderr[-2000:]}"
