"""Values of the results tables: run ids, canonical parameter JSON, names that become paths, UTC
timestamps and plain Python scalars."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from pipeline.core.errors import InputError

# Path components come from run ids and strategy names: no separators, no leading dot.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by creation time: ``YYYYMMDDTHHMMSSffffffZ-<8 hex>``."""
    now = utc_now() if now is None else as_utc(now, "now")
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def params_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of a parameter set: sorted keys, no spaces."""
    return json.dumps(plain(dict(params)), sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=65_536)
def _params_json_cached(items: tuple) -> str:
    # A sweep repeats each parameter set across every symbol: encode each once.
    return params_json({name: value for name, _, value in items})


def canonical_params(params: Mapping[str, Any]) -> str:
    # The type is part of the key: 14 == 14.0 as dict keys, but their JSON differs.
    return _params_json_cached(tuple(sorted((k, type(v), v) for k, v in params.items())))


def check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise InputError(f"{what}={value!r} must match {SAFE_NAME.pattern} (it names a path)")


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InputError(f"{what}={value!r} is not a datetime")
    # Naive timestamps are UTC throughout the project.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_ts(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value, what)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parsed = parse_iso(value)
        if parsed is None:
            raise InputError(f"{what}={value!r} is not an ISO-8601 timestamp")
        return parsed
    raise InputError(f"{what}={value!r} is not a timestamp")


@lru_cache(maxsize=65_536)
def parse_iso(value: str) -> datetime | None:
    # A sweep repeats each symbol's start/end across every parameter set: parse each once.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def plain(value: Any) -> Any:
    """NumPy scalars to Python ones (JSON and Arrow both want them)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
