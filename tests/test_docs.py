"""Every code block of README.md and docs/*.md runs, as printed, in a test (issue 26).

A page's blocks run in order as one terminal session would run them: one bash script, in a fresh
folder that holds what a fresh clone holds (data/sample, examples, the .venv the two commands
made), against a fresh PostgreSQL database, Redis key prefix and lake. `python` blocks run in that
session as `python - <<EOF`, `sql` blocks that read Parquet run in DuckDB. Blocks tagged `text`
are output, not code; an untagged block fails here (tag it). A block that needs servers a test
cannot start in a script (a Prefect server in three shells, a Docker engine) names, in an HTML
comment right above it, the test that runs what it shows: `<!-- runs in tests/FILE.py::TEST -->`;
that test must exist.

Two substitutions, both stated here: `make demo` is `cryptobt demo` on a smaller synthetic market
(the suite already has the .venv that make builds; `make test` is this suite, not run inside
itself), and the API pages' `localhost:8000` is the port of the server the test started.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*runs in (?P<runner>[^>]+?)\s*-->\s*\n)?^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```\s*$",
                   re.S | re.M)
MAKE = {"make demo": ".venv/bin/cryptobt demo --symbols 8 --years 0.5", "make test": ": the suite itself",
        "make test-fast": ": a part of the suite"}
# What a page assumes before its first block, as its text says ("after make demo").
AFTER_DEMO = ". .venv/bin/activate\ncryptobt demo --symbols 8 --years 0.5 >/dev/null\n"
PRELUDE = {"README.md": "", "cli.md": ". .venv/bin/activate\n", "contract.md": "", "benchmarks.md": "",
           "operations.md": "", "api.md": AFTER_DEMO, "portfolio.md": AFTER_DEMO, "strategies.md": AFTER_DEMO,
           "sweeps.md": AFTER_DEMO, "statistics.md": AFTER_DEMO, "scale-out.md": AFTER_DEMO}


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, body, the test named to run it or None) of every fenced block, in order."""
    return [(m["lang"].strip(), m["body"], m["runner"]) for m in FENCE.finditer(page.read_text())]


def shown_file(body: str) -> Path | None:
    """A block that shows a file of the repository whole (its first line `# path/in/repo.py`): the page's
    other blocks run it; this one must equal it."""
    first = body.splitlines()[0] if body else ""
    path = ROOT / first[2:].strip() if first.startswith("# ") and first.endswith(".py") else None
    return path if path is not None and path.is_file() else None


def script(page: Path, port: int | None = None) -> str:
    """The page's blocks as one bash session."""
    lines = ["set -euo pipefail", PRELUDE[page.name]]
    for lang, body, runner in blocks(page):
        if runner is not None or lang == "text":
            continue
        if lang == "bash":
            for make, instead in MAKE.items():
                body = re.sub(rf"^{make}(?=\s|$)", instead, body, flags=re.M)
            if port is not None:
                body = body.replace("localhost:8000", f"localhost:{port}")
            lines.append(body)
        elif lang == "python" and shown_file(body) is None:
            lines.append(f"python - <<'CRYPTOBT_PYTHON'\n{body}CRYPTOBT_PYTHON")
        elif lang == "sql":
            lines.append("python - <<'CRYPTOBT_PYTHON'\nimport re\nimport duckdb\ncon = duckdb.connect()\n"
                         f"for statement in re.sub(r'--[^\\n]*', '', {body!r}).split(';'):\n"
                         "    if statement.strip():\n"
                         "        print(con.sql(statement).fetchall()[:3])\nCRYPTOBT_PYTHON")
    return "\n".join(lines) + "\n"


def test_every_block_is_tagged_and_every_named_runner_exists():
    for page in PAGES:
        for lang, body, runner in blocks(page):
            where = f"{page.relative_to(ROOT)}: block starting {body.splitlines()[0][:60]!r}"
            assert lang in ("bash", "python", "sql", "text"), f"{where}: tag it bash, python, sql or text"
            shown = shown_file(body) if lang == "python" else None
            if shown is not None:
                assert body.split("\n", 1)[1] == shown.read_text(), f"{where}: differs from {shown.name}"
            if runner is not None:
                file, _, name = runner.partition("::")
                assert (ROOT / file).is_file() and re.search(rf"^def {re.escape(name)}\(", (ROOT / file).read_text(),
                                                             re.M), f"{where}: no test {runner}"


def test_the_table_of_metrics_in_the_docs_is_the_one_in_the_code():
    """docs/cli.md's table of metrics is pipeline/core/metrics.py's, as `markdown_table` writes it."""
    from pipeline.core import metrics

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    shown = re.search(r"<!-- metrics:[^>]*-->\n(?P<table>.*?)\n<!-- /metrics -->", page, re.S)
    assert shown is not None, "docs/cli.md lost its <!-- metrics: ... --> block"
    assert shown["table"] == metrics.markdown_table(), (
        "docs/cli.md's table of metrics differs from pipeline/core/metrics.py; paste the output of "
        "python -c 'from pipeline.core import metrics; print(metrics.markdown_table())'")


def test_the_readme_is_what_a_newcomer_reads_first():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert readme.index("make demo") < 1000 and "Python 3.11" in readme and ". .venv/bin/activate" in readme
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README links every page: {page.name}"
    assert "SPEC" not in readme  # the contract is docs/contract.md, in the repository


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clone(tmp_path) -> Path:
    """A folder as a fresh clone has it after `make`: the sample, the examples, the .venv."""
    work = tmp_path / "clone"
    (work / "data").mkdir(parents=True)
    (work / "data" / "sample").symlink_to(ROOT / "data" / "sample")
    (work / "examples").symlink_to(ROOT / "examples")
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "home").mkdir()
    return work


def _environment(clone: Path, database_url: str, redis_url: str, redis_prefix: str, prefect_home: Path) -> dict:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOBT_", "PREFECT_", "VIRTUAL_ENV"))}
    # Not on PATH until a page activates the .venv, as in a new shell.
    path = ":".join(p for p in keep["PATH"].split(":") if Path(p).resolve() != Path(sys.executable).parent.resolve())
    kernels = Path(os.environ.get("CRYPTOBT_KERNEL_CACHE") or Path.home() / ".cache" / "cryptobt" / "kernels")
    return {**keep, "PATH": path, "HOME": str(clone / "home"), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "CRYPTOBT_CACHE_PREFIX": redis_prefix, "PREFECT_HOME": str(prefect_home), "COLUMNS": "100",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CRYPTOBT_KERNEL_CACHE": str(kernels),
            "CRYPTOBT_ADMIN_TOKEN": "docs-test-token", "PYTHONPATH": str(ROOT)}


def _run(page: Path, work: Path, env: dict, port: int | None = None) -> None:
    done = subprocess.run(["bash", "-x", "-c", script(page, port)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=1200)
    tail = f"{page.name}: exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-4000:]}"
    assert done.returncode == 0, tail
    assert "Traceback" not in done.stdout + done.stderr, tail


RUNNABLE = [p for p in PAGES if any(lang != "text" and runner is None for lang, _, runner in blocks(p))
            and p.name != "api.md"]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_every_block_of_the_page_runs_as_printed(page, clone, database_url, redis_url, redis_prefix, prefect_home):
    _run(page, clone, _environment(clone, database_url, redis_url, redis_prefix, prefect_home))


@pytest.mark.slow
def test_every_block_of_the_api_page_runs_against_a_served_api(clone, database_url, redis_url, redis_prefix,
                                                               prefect_home):
    page = ROOT / "docs" / "api.md"
    env = _environment(clone, database_url, redis_url, redis_prefix, prefect_home)
    port = _free_port()
    setup = subprocess.run(["bash", "-c", AFTER_DEMO], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stderr
    server = subprocess.Popen([str(clone / ".venv" / "bin" / "cryptobt"), "api", "--port", str(port)], cwd=clone,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.3)
        _run(page, clone, env, port)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.services  # a PostgreSQL server of its own (OwnPostgres), no fixture
def test_bulk_load_settings_apply_to_a_postgresql_server(tmp_path):
    """docs/operations.md's ALTER SYSTEM advice, run on a server of the test's own (it changes the server's
    configuration, so never on the shared one)."""
    import psycopg

    from tests.test_servers_dying import OwnPostgres

    page = (ROOT / "docs" / "operations.md").read_text()
    sql = next(body for lang, body, runner in blocks(ROOT / "docs" / "operations.md")
               if lang == "sql" and "ALTER SYSTEM" in body)
    assert "test_bulk_load_settings_apply_to_a_postgresql_server" in page
    server = OwnPostgres(tmp_path / "pg")
    try:
        url = server.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in re.sub(r"--[^\n]*", "", sql).split(";"):
                if statement.strip():
                    conn.execute(statement)
        # pg_reload_conf() signals the server and returns: a new session sees the settings once it has.
        deadline, seen = time.monotonic() + 30, None
        while seen != ("4GB", "15min") and time.monotonic() < deadline:
            with psycopg.connect(url) as conn:
                seen = (conn.execute("SHOW max_wal_size").fetchone()[0],
                        conn.execute("SHOW checkpoint_timeout").fetchone()[0])
            time.sleep(0.2)
        assert seen == ("4GB", "15min")
    finally:
        server.stop()
