"""Shared fixtures: real services only (no mocks, no fakeredis)."""

import pytest

# --- redis fixtures ---
# Self-contained apart from `pytest` (imports inside the fixtures), so other blocks of
# fixtures can sit around it without import-order conflicts.


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL (or 127.0.0.1:6379); fails, never skips, when Redis does not answer."""
    import os

    import redis

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    problem = None
    try:
        client.ping()
    except redis.RedisError as exc:
        problem = exc
    finally:
        client.close()
    if problem is not None:  # failed outside the except block: no chained tracebacks
        pytest.fail(
            f"Redis at {url} is not reachable ({problem}). Tests need a real Redis; start one"
            ' with:\n  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""'
            " --appendonly no",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def redis_client(redis_url: str):
    """A raw client for assertions; deletes every key of the session's prefix at the end."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    batch = []
    for key in client.scan_iter(match=f"{_REDIS_SESSION_PREFIX}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()


def _new_redis_session_prefix() -> str:
    import uuid

    return f"cryptobt-test-{uuid.uuid4().hex[:12]}"


_REDIS_SESSION_PREFIX = _new_redis_session_prefix()


@pytest.fixture
def redis_prefix(redis_client) -> str:
    """A key prefix unique to this test, under the session's prefix (cleaned at session end)."""
    import uuid

    return f"{_REDIS_SESSION_PREFIX}:{uuid.uuid4().hex[:8]}"


# --- end redis fixtures ---


# --- postgres fixtures ---
# The project's own real-market sample (never ../shared, which a user's clone lacks).
BINANCE_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-5m"


def _admin_url() -> str:
    import os

    return os.environ.get("TEST_DATABASE_ADMIN_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The maintenance database; fails, never skips, when PostgreSQL does not answer."""
    import psycopg

    url = _admin_url()
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {url} is not reachable ({exc}). Tests need a real server; start it with:\n"
            "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "or point TEST_DATABASE_ADMIN_URL at one (trust or password auth, CREATEDB rights).",
            pytrace=False,
        )
    return url


@pytest.fixture
def make_database(pg_admin_url: str):
    """Factory: a fresh, empty database URL per call; every one dropped after the test."""
    import uuid

    import psycopg
    from psycopg import sql

    created: list[str] = []

    def make() -> str:
        name = f"cryptobt_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return pg_admin_url.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(make_database) -> str:
    """A fresh database with the schema applied."""
    from pipeline.source import postgres as source

    url = make_database()
    source.apply_schema(url)
    return url


@pytest.fixture
def binance_files(tmp_path):
    """Copies of the real Binance 5m sample files (the tracked sample is never written to)."""
    import shutil

    if not BINANCE_DIR.exists():
        pytest.fail(f"the project's real-market sample is missing: {BINANCE_DIR} (see data/sample/README.md)")
    target = tmp_path / "binance-5m"
    shutil.copytree(BINANCE_DIR, target)
    return sorted(target.glob("*.feather"))


# --- end postgres fixtures ---


@pytest.fixture(scope="session")
def build_lake(tmp_path_factory):
    """Factory: the root of a new lake of demo.build_sample_lake(n_symbols, years, sample) (sample None:
    synthetic symbols only), in a folder of its own; a test module keeps one in a module fixture."""
    from pipeline import demo

    def build(n_symbols: int, years: float, sample=None, futures_sample=None):
        root = tmp_path_factory.mktemp("lake") / "lake"
        demo.build_sample_lake(root, n_symbols=n_symbols, years=years, sample=sample, futures_sample=futures_sample)
        return root

    return build


# --- prefect fixtures ---


@pytest.fixture(scope="session")
def _migrated_prefect_home(tmp_path_factory):
    """A PREFECT_HOME whose SQLite database Prefect's own `prefect server database upgrade` has
    migrated, once per session and shared by its xdist workers (under a lock): migrating an empty
    one is half of a Prefect server's start (quiet machine: 12 s on an empty home, 6 s on a
    migrated one; the upgrade takes 8.4 s), paid by every test that starts one."""
    import fcntl
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # A worker's basetemp is <session's basetemp>/popen-gwN: the parent is this session's alone.
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    home = root / "prefect-home-migrated"
    with open(root / "prefect-home-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "prefect.db").is_file():
            staging = root / f"prefect-home-migrating-{worker or 'main'}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(staging), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            done = subprocess.run(
                [str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"prefect server database upgrade failed:\n{done.stdout}\n{done.stderr}"
            staging.rename(home)
    return home


@pytest.fixture
def prefect_home(_migrated_prefect_home, tmp_path):
    """A PREFECT_HOME of this test's own: a copy of the migrated one (Prefect writes to it, so no
    two tests share one). A server's first start on an empty database is still run: by test_flows'
    prefect_test_harness and the kill test in test_integrity."""
    import shutil

    target = tmp_path / "prefect-home"
    shutil.copytree(_migrated_prefect_home, target)
    return target


# --- end prefect fixtures ---


@pytest.fixture(autouse=True, scope="module")
def _user_strategies_stay_in_their_module():
    """A test module that loads user strategy files (a deliberately peeking one, say) must not leave
    them registered for the next module: the registry is process-wide, as it is in a notebook."""
    from pipeline.engine import strategies

    registered, loaded = dict(strategies._REGISTRY), set(strategies._loaded_paths)
    yield
    strategies._REGISTRY.clear()
    strategies._REGISTRY.update(registered)
    strategies._loaded_paths.clear()
    strategies._loaded_paths.update(loaded)


# --- object storage fixtures ---
# A real S3 server: moto's, started as a process on a free port (not moto's in-process mock), one per
# xdist worker; a bucket per test.


@pytest.fixture(scope="session")
def s3_server() -> str:
    """The endpoint URL of a moto S3 server this test session started (stopped after)."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.api_server import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"moto's S3 server did not start on {url}") from None
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, tmp_path) -> str:
    """A new bucket on the session's S3 server, with this process's AWS variables pointing at it (and
    this machine's cache of object lakes in the test's folder): its name."""
    import secrets

    import boto3

    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "CRYPTOBT_LOCAL_CACHE": str(tmp_path / "local-cache")
                        }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    bucket = f"lake-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


# --- markers ---
# `make test-fast` runs `-m "not services and not slow"`: the unit tests an edit-run loop can afford.
# A test that asks for one of these fixtures (itself or through another fixture) reaches a server:
# the shared PostgreSQL, Redis or Prefect of the fixtures above, or one its module starts of its own.
# A test that reaches a server without such a fixture carries @pytest.mark.services itself.
SERVER_FIXTURES = frozenset({
    "redis_url", "redis_client", "redis_prefix",
    "pg_admin_url", "make_database", "database_url",
    "_migrated_prefect_home", "prefect_home",
    # Started by the module that defines the fixture:
    "prefect_harness",  # test_flows: Prefect's test server
    "docs_server",  # test_api_docs: uvicorn
    "tiny_redis",  # test_cache: a redis-server with 1 MB of memory
    "own_postgres", "own_redis",  # test_servers_dying: servers the test kills
    "browser",  # test_dashboard_browser: chromium
    "s3_server", "s3_bucket",  # moto's S3 server (above)
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


# --- end markers ---
