"""docker-compose.yml is valid for Debian's docker-compose and keeps the rules it was fixed for.

No container engine runs here: `docker-compose config` (which parses, interpolates and validates
the file as `up` would) is the check, run in a folder that holds the file, the build context and a
`.env` made from `.env.example`, as a user's checkout does after `cp .env.example .env`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed "
                                   "(apt-get install docker-compose)")


def _checkout(tmp_path: Path, env: str | None) -> Path:
    for name in ("docker-compose.yml", "Dockerfile", "sql", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    if env is not None:
        (tmp_path / ".env").write_text(env)
    return tmp_path


def _config(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([COMPOSE, "config"], cwd=folder, capture_output=True, text=True, timeout=60)


@needs_compose
def test_compose_config_passes_and_keeps_its_rules(tmp_path):
    # A made-up password that would break a URL: it must reach the services unchanged and never sit in a URL.
    key, url_breaker = "POSTGRES_PASSWORD", "p@ss:w/rd"
    env = re.sub(rf"(?m)^{key}=.*$", f"{key}={url_breaker}", (ROOT / ".env.example").read_text())
    done = _config(_checkout(tmp_path, env))
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"postgres", "redis", "prefect", "worker", "scheduler", "dask-worker"} <= set(services)

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert any(v.endswith(":/docker-entrypoint-initdb.d:ro") for v in postgres["volumes"])
    assert " -h " in postgres["healthcheck"]["test"][-1]
    prefect = services["prefect"]
    assert prefect["healthcheck"]["test"] and any(v.endswith(":/prefect:rw") for v in prefect["volumes"])
    for name in ("worker", "scheduler", "dask-worker"):
        service = services[name]
        assert "build" in service and service["restart"] == "unless-stopped", name
        assert service["environment"]["PGPASSWORD"] == url_breaker
        assert url_breaker not in service["environment"]["DATABASE_URL"]
        command = " ".join(service["command"])
        assert "apt-get" not in command and "pip install" not in command, name
        assert all(not v.startswith(str(tmp_path)) for v in service.get("volumes", [])), "nothing in the checkout"
    assert "tcp://scheduler:8786" in " ".join(services["dask-worker"]["command"])
    assert all(s.get("restart") == "unless-stopped" for s in services.values())
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


@needs_compose
def test_compose_config_without_env_names_what_is_missing(tmp_path):
    done = _config(_checkout(tmp_path, None))
    assert done.returncode != 0
    assert ".env" in done.stderr
