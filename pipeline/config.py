"""Settings from the environment, in one place.

Every setting has a default that works on a developer machine; see `.env.example`
and the README's configuration table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = PROJECT_ROOT / "sql"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/cryptobt"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _number_env(name: str, default: float, minimum: float, kind: type = int) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with `Settings.from_env()`."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    # Empty REDIS_URL disables the cache on purpose (no warning).
    cache_enabled: bool = True
    lake_root: Path = field(default_factory=lambda: Path("data/lake"))
    results_root: Path = field(default_factory=lambda: Path("data/results"))
    workers: int = 0  # numba threads; 0 = all cores
    export_connections: int = 2
    cache_prefix: str = "cryptobt"
    cache_ttl_seconds: int = 86_400
    redis_timeout_seconds: float = 0.5
    snapshot_keep: int = 5
    snapshot_keep_hours: float = 24.0

    @classmethod
    def from_env(cls) -> Settings:
        lake_root = Path(os.environ.get("CRYPTOBT_LAKE_ROOT") or "data/lake")
        # Results sit next to the price lake so `read_parquet('data/results/run_date=*/strategy=*/*.parquet')`
        # works with the defaults.
        results_root = Path(os.environ.get("CRYPTOBT_RESULTS_ROOT") or lake_root.parent / "results")
        redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        return cls(
            database_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=redis_url,
            cache_enabled=redis_url != "",
            lake_root=lake_root,
            results_root=results_root,
            workers=_number_env("CRYPTOBT_WORKERS", 0, 0),
            export_connections=_number_env("CRYPTOBT_EXPORT_CONNECTIONS", 2, 1),
            cache_prefix=os.environ.get("CRYPTOBT_CACHE_PREFIX") or "cryptobt",
            cache_ttl_seconds=_number_env("CRYPTOBT_CACHE_TTL", 86_400, 1),
            redis_timeout_seconds=_number_env("CRYPTOBT_REDIS_TIMEOUT", 0.5, 0.0, float),
            snapshot_keep=_number_env("CRYPTOBT_SNAPSHOT_KEEP", 5, 1),
            snapshot_keep_hours=_number_env("CRYPTOBT_SNAPSHOT_KEEP_HOURS", 24.0, 0.0, float),
        )


def redact_url(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
