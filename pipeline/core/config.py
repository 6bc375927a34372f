"""Settings from the environment, in one place.

Every setting has a default that works on a developer machine; see `.env.example`
and the README's configuration table.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pipeline.core import intervals
from pipeline.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = PROJECT_ROOT / "sql"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/cryptobt"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _number_env(name: str, default: float, minimum: float, kind: type = int, maximum: float = 1e12) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}") from None
    # float() takes 'nan' and 'inf': a timeout or a retention of NaN would compare false everywhere.
    if not math.isfinite(value) or not raw.strip().isascii():
        raise ConfigError(f"{name}={raw!r} is not {what} (a finite number in ASCII digits)")
    if value < minimum or value > maximum:
        raise ConfigError(f"{name}={value} is out of range: from {minimum} to {maximum}")
    return value


def _directory_env(name: str, path: Path | str) -> Path:
    """A root folder setting: refused when it names an existing file (every read would trace back). An
    ``s3://bucket/prefix`` is a location on object storage (pipeline.core.objects)."""
    from pipeline.core import objects

    if objects.is_object_url(path):
        return objects.ObjectPath(str(path))  # type: ignore[return-value] - quacks as the lake's Path
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={str(path)!r} is a file, not a folder; point it at a folder (it is created "
                          "if missing)")
    return path


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url_env() -> str:
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if url and not url.startswith(REDIS_SCHEMES):
        raise ConfigError(f"REDIS_URL={redact_url(url)!r} is not a Redis URL: use {', '.join(REDIS_SCHEMES)} "
                          "(e.g. redis://127.0.0.1:6379/0), or set it empty to run without the cache")
    return url


DEFAULT_API_HOSTS = ("localhost", "127.0.0.1", "::1")
_HOST_NAME = re.compile(r"\*|(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?", re.ASCII)


def _is_host(text: str) -> bool:
    """A host name, an IPv4 or IPv6 address (bracketed or not), `*.domain` or `*`: never a port."""
    if ":" not in text:
        return bool(_HOST_NAME.fullmatch(text))
    try:
        ipaddress.IPv6Address(text.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        return False


def _hosts_env(name: str) -> tuple[str, ...]:
    """The default Host names plus the comma-separated ones in `name`: names, IP addresses, `*.domain`
    (its subdomains) or `*` (any Host: only behind a proxy that checks it)."""
    raw = os.environ.get(name) or ""
    extra = [part.strip().lower() for part in raw.split(",") if part.strip()]
    bad = [part for part in extra if not _is_host(part)]
    if bad:
        raise ConfigError(f"{name}: {bad[0]!r} is not a host name; use names or addresses without a port "
                          "(backtest.lan, 192.168.1.20), *.example.com for its subdomains, or * for any")
    return tuple(dict.fromkeys((*DEFAULT_API_HOSTS, *extra)))


def _intervals_env(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return intervals.parse_list(raw, name)


@dataclass(frozen=True)
class BarWindow:
    """The times a bar may have: from `earliest` to `ahead` past now. An import refuses a file with a
    bar outside it; an export refuses a symbol with such a row in PostgreSQL (a BC or year-9019 row
    would break every later export)."""

    earliest: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    ahead: timedelta = timedelta(days=1)

    def describe(self) -> str:
        days = self.ahead / timedelta(days=1)
        return (f"{self.earliest:%Y-%m-%d} .. now + {days:g} day{'' if days == 1 else 's'} "
                "(CRYPTOBT_EARLIEST_BAR, CRYPTOBT_MAX_DAYS_AHEAD)")


# The earliest CRYPTOBT_EARLIEST_BAR: older than any market data, and safe for every date library.
_EARLIEST_ALLOWED = date(1900, 1, 1)


def _bar_window_env() -> BarWindow:
    raw = os.environ.get("CRYPTOBT_EARLIEST_BAR", "").strip()
    earliest = BarWindow.earliest
    if raw:
        try:
            parsed = datetime.fromisoformat(raw) if raw.isascii() else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ConfigError(f"CRYPTOBT_EARLIEST_BAR={raw!r} is not a date; use YYYY-MM-DD (UTC)")
        earliest = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if not _EARLIEST_ALLOWED <= earliest.date() <= datetime.now(UTC).date():
            raise ConfigError(f"CRYPTOBT_EARLIEST_BAR={raw!r} is out of range: from {_EARLIEST_ALLOWED} to today")
    ahead = _number_env("CRYPTOBT_MAX_DAYS_AHEAD", 1.0, 0.0, float, 3650.0)
    return BarWindow(earliest, timedelta(days=ahead))


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with `Settings.from_env()`."""

    # Connection strings may hold passwords: out of repr (logs, tracebacks); print them through redact().
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
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
    # HTTP API: runs at once (0 = the core count), requests that may wait, and the bearer token of
    # the admin endpoints (empty = admin endpoints off). The token is never echoed anywhere.
    api_workers: int = 0
    api_queue: int = 32
    admin_token: str = field(default="", repr=False)
    # Host headers the API answers (others get 400: DNS rebinding); `cryptobt api` adds its --host.
    api_allowed_hosts: tuple[str, ...] = DEFAULT_API_HOSTS
    # Coarser intervals a load derives from a file's native one (and the lake stores); others
    # are aggregated when read.
    derived_intervals: tuple[str, ...] = ("1h", "1d")
    # Data health (`cryptobt data check`): a close-to-close move beyond this factor is a jump,
    # this many equal closes in a row a stale stretch.
    jump_ratio: float = 10.0
    stale_bars: int = 24
    # The times a bar may have, at import and export.
    bar_window: BarWindow = field(default_factory=BarWindow)

    @classmethod
    def from_env(cls) -> Settings:
        lake_root = _directory_env("CRYPTOBT_LAKE_ROOT", os.environ.get("CRYPTOBT_LAKE_ROOT") or "data/lake")
        # Results sit next to the price lake so `read_parquet('data/results/run_date=*/strategy=*/*.parquet')`
        # works with the defaults.
        results_root = _directory_env("CRYPTOBT_RESULTS_ROOT",
                                      os.environ.get("CRYPTOBT_RESULTS_ROOT") or str(lake_root.parent / "results"))
        redis_url = _redis_url_env()
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
            redis_timeout_seconds=_number_env("CRYPTOBT_REDIS_TIMEOUT", 0.5, 0.0, float, 3600.0),
            snapshot_keep=_number_env("CRYPTOBT_SNAPSHOT_KEEP", 5, 1),
            snapshot_keep_hours=_number_env("CRYPTOBT_SNAPSHOT_KEEP_HOURS", 24.0, 0.0, float, 876_000.0),
            api_workers=_number_env("CRYPTOBT_API_WORKERS", 0, 0),
            api_queue=_number_env("CRYPTOBT_API_QUEUE", 32, 0),
            admin_token=os.environ.get("CRYPTOBT_ADMIN_TOKEN", ""),
            api_allowed_hosts=_hosts_env("CRYPTOBT_API_ALLOWED_HOSTS"),
            derived_intervals=_intervals_env("CRYPTOBT_DERIVED_INTERVALS", ("1h", "1d")),
            jump_ratio=_number_env("CRYPTOBT_JUMP_RATIO", 10.0, 1.0, float),
            stale_bars=_number_env("CRYPTOBT_STALE_BARS", 24, 2),
            bar_window=_bar_window_env(),
        )


def kernel_cache_dir() -> Path:
    """Where each strategy's generated batch kernel (and Numba's machine code of it) is kept.

    `CRYPTOBT_KERNEL_CACHE`, else `$XDG_CACHE_HOME/cryptobt/kernels` (`~/.cache/cryptobt/kernels`).
    """
    explicit = os.environ.get("CRYPTOBT_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cryptobt" / "kernels"


def strategy_path_env() -> list[Path]:
    """Folders of user strategies from `CRYPTOBT_STRATEGY_PATH` (os.pathsep-separated)."""
    raw = os.environ.get("CRYPTOBT_STRATEGY_PATH") or ""
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


# The connection parameters that are secrets (libpq's names). They are never stored, printed or put
# on a child process's argv (`ps` shows it to every user): `redact` hides them in any text,
# `source.source_id` keeps none, and psql gets them through its environment.
SECRET_PARAMS = ("password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key")
_SECRET_NAMES = "|".join(("pass", "pwd", "passfile", *SECRET_PARAMS))
# Every spelling of a secret in a connection string: `scheme://user:secret@host`, a URL's
# `?password=secret` / `&password=secret`, and libpq's key=value `password=secret` (quoted or not).
_SECRETS = (
    (re.compile(r"(://[^/\s:@]*:)[^\s/]*@"), r"\1***@"),
    (re.compile(rf"([?&;](?:{_SECRET_NAMES})=)[^&\s]*", re.IGNORECASE), r"\1***"),
    (re.compile(rf"(\b(?:{_SECRET_NAMES})\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE),
     r"\1***"),
)


def redact(text: str) -> str:
    """`text` with every password in any connection-string form replaced by ***, for messages and logs."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """The URL (or key=value connection string) with any password replaced, for error messages and logs."""
    return redact(url)


def check_writable_folder(path: Path, setting: str) -> None:
    """Fail before any work if `path` (created if missing) cannot be written; the message names `setting`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Unique per call: two API threads probing at once must not delete each other's probe.
        probe = path / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{path} is not writable ({exc.strerror}); set {setting} to a writable folder") from None
