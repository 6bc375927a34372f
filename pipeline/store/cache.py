"""Redis cache of result records, keyed so that a stale result can never be served.

Keys (``<prefix>`` is ``settings.cache_prefix``):

- ``<prefix>:bt:<sha256>``: one result record as JSON (never pickle), with a TTL. The hash
  is over the canonical JSON (sorted keys, no spaces, integral floats as ints) of
  ``engine_version, strategy, params, symbol, market, data_version`` and the run options marked
  ``in_cache_key`` in ``pipeline.core.run_options`` (interval, time range, fill, fee, initial cash,
  annualization, bar coverage, stops, size, slippage): a new export (data version), a code change
  (engine version) or another option value gives a new key.
- ``<prefix>:sym:<symbol>``: set of that symbol's ``bt`` keys, for ``invalidate_symbol``
  (a pattern cannot find a symbol inside a hash).
- ``<prefix>:stats:lookups`` / ``<prefix>:stats:unserved``: counters kept by ``get_many``: the keys asked
  for (sent in the MGET's own round trip, so a run served from the cache makes one) and those not served
  (sent only when there are some, when the run computes anyway). Hits are lookups - unserved, plus the
  ``stats:hits`` / ``stats:misses`` that versions before kept (read, no longer written).

Redis is an accelerator, never a dependency: when it is unreachable, too slow (socket
timeout) or refuses a command (e.g. OOM under ``maxmemory`` + ``noeviction``), reads
return misses, writes are dropped, and one warning per cache object says so. After a
connection failure or timeout the object stops trying, so a run pays the timeout once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.core.config import Settings, redact_url
from pipeline.core.run_options import KEY_DEFAULTS
from pipeline.core.versions import ENGINE_VERSION

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

START_HINT = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'

# A cached value must look like a result record, else it is a miss (and is deleted).
_REQUIRED_SHAPE: dict[str, type | tuple[type, ...]] = {
    "symbol": str,
    "strategy": str,
    "params": dict,
    "interval": str,
    "bars": int,
    "data_version": str,
    "engine_version": str,
}
_BATCH = 500  # keys per UNLINK when clearing

T = TypeVar("T")


def _redis() -> ModuleType:
    """The Redis client library, imported when a cache is configured: a run with the cache off never loads it
    (85 ms of a cold CLI process)."""
    import redis

    return redis


def _orjson() -> Any:
    import orjson

    return orjson


class CacheWarning(UserWarning):
    """The cache could not be used; the run continues without it."""


def cache_key(
    prefix: str,
    *,
    strategy: str,
    params: Mapping[str, Any],
    symbol: str,
    data_version: str,
    engine_version: str = ENGINE_VERSION,
    market: str = "spot",
    **run_options: Any,
) -> str:
    """The cache key of one backtest: ``<prefix>:bt:<sha256 of the canonical fields>``. `run_options` are
    the result fields of the run options in the key (``KEY_DEFAULTS``: fee_pct, sl_pct, ...); those
    not given take their defaults."""
    fields = _key_fields_of(strategy=strategy, params=params, symbol=symbol, data_version=data_version,
                            engine_version=engine_version, market=market, **run_options)
    return _hashed(prefix, _canonical_text(fields))


def key_function(prefix: str, varying: Sequence[str], **fields: Any) -> Callable[..., str]:
    """`cache_key` over many backtests that differ only in the fields named by `varying` (a run's symbols,
    their intervals and data versions): f(*values) is cache_key(prefix, **fields, **dict(zip(varying,
    values))), the same string. The canonical JSON of `fields` is made once and each call splices its
    values' JSON into it: a 211-symbol cache hit spent 4.4 of its 12 ms making every key whole."""
    slots = {name: f"\x00{name}" for name in varying}  # a NUL never reaches a key field's text
    text = _canonical_text(_key_fields_of(**fields, **slots))
    spelled = [json.dumps(slots[name]) for name in varying]  # each slot as the canonical JSON writes it
    found = sorted((text.find(spelling), index) for index, spelling in enumerate(spelled))
    if any(at < 0 or text.count(spelled[index]) != 1 for at, index in found):
        return lambda *values: cache_key(prefix, **fields, **dict(zip(varying, values, strict=True)))
    pieces, order, start = [], [], 0
    for at, index in found:
        pieces.append(text[start:at])
        order.append(index)
        start = at + len(spelled[index])
    pieces.append(text[start:])

    def key(*values: Any) -> str:
        parts = [pieces[0]]
        for piece, index in zip(pieces[1:], order, strict=True):
            parts.append(json.dumps(_canonical(values[index]), allow_nan=False))
            parts.append(piece)
        return _hashed(prefix, "".join(parts))

    return key


def _key_fields_of(*, strategy: Any, params: Mapping[str, Any], symbol: Any, data_version: Any,
                   engine_version: str = ENGINE_VERSION, market: Any = "spot", **run_options: Any) -> dict[str, Any]:
    unknown = sorted(set(run_options) - set(KEY_DEFAULTS))
    if unknown:
        raise TypeError(f"cache_key() got fields that are not in the cache key: {', '.join(unknown)}")
    return {
        "engine_version": engine_version,
        "strategy": strategy,
        "params": dict(params),
        "symbol": symbol,
        **KEY_DEFAULTS,
        **run_options,
        "market": market,
        "data_version": data_version,
    }


def _canonical_text(fields: Mapping[str, Any]) -> str:
    return json.dumps(_canonical(fields), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _hashed(prefix: str, canonical: str) -> str:
    return f"{prefix}:bt:{hashlib.sha256(canonical.encode()).hexdigest()}"


class ResultCache:
    """Batch get/put of result records in Redis; every failure degrades to a miss."""

    def __init__(
        self,
        url: str | None,
        prefix: str = "cryptobt",
        ttl_seconds: int = 86_400,
        timeout_seconds: float = 0.5,
        *,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("cache prefix must not be empty (clear() would hit every key)")
        self.url = url or ""
        self.prefix = prefix
        self.ttl_seconds = int(ttl_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self._on_warning = on_warning
        self._warned = False
        self._down = False
        # Per-object tallies of get_many, for the run's metrics.
        self.hits = 0
        self.misses = 0
        self._client: redis.Redis | None = None
        if self.url:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = _redis().Redis.from_url(
                self.url,
                socket_timeout=self.timeout_seconds,
                socket_connect_timeout=self.timeout_seconds,
                # No retries: an unreachable or stalled server costs one timeout, not four.
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, on_warning: Callable[[str], None] | None = None
    ) -> ResultCache:
        """The cache the settings describe; disabled (a no-op) when REDIS_URL is empty."""
        return cls(
            settings.redis_url if settings.cache_enabled else None,
            settings.cache_prefix,
            settings.cache_ttl_seconds,
            settings.redis_timeout_seconds,
            on_warning=on_warning,
        )

    @property
    def enabled(self) -> bool:
        """False when configured off (empty URL)."""
        return self._client is not None

    @property
    def available(self) -> bool:
        """Enabled and not given up on after a connection failure."""
        return self._client is not None and not self._down

    @property
    def warned(self) -> bool:
        """Whether this object has reported a problem."""
        return self._warned

    def key(self, **fields: Any) -> str:
        """The key of one backtest under this cache's prefix; `fields` are `cache_key`'s keywords."""
        return cache_key(self.prefix, **fields)

    def key_function(self, varying: Sequence[str], **fields: Any) -> Callable[..., str]:
        """`key_function` under this cache's prefix: the keys of backtests that differ in `varying` alone."""
        return key_function(self.prefix, varying, **fields)

    def key_for_record(self, record: Mapping[str, Any]) -> str:
        """The key of the backtest that produced ``record`` (fields it lacks take `cache_key`'s defaults)."""
        return self.key(**{name: record[name] for name in _KEY_FIELDS if name in record})

    def get_many(
        self,
        keys: Sequence[str],
        expected: Mapping[str, Mapping[str, Any]] | None = None,
        schema_problem: Callable[[Mapping[str, Any]], str | None] | None = None,
        usable: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The cached records among ``keys`` (one MGET), each with ``from_cache=True``; the hit counters
        count them (the lookups in the MGET's round trip, the keys not served in a second one when there
        are some).

        A record is trusted only if it is what its key promises: with ``expected`` (key -> the
        `cache_key` keywords it was built from) every key field of the record must equal the
        key's, and ``schema_problem`` (a record -> why it is malformed, or None) must find
        nothing. Anything else is a miss, is deleted, and one warning says so. A sound record that
        ``usable`` refuses (a run that asks for trades, a record stored without them) is a miss and stays.
        """
        keys = list(keys)
        if not keys:
            return {}
        asked = len(set(keys))
        raw = self._guard("get", lambda client: self._counted_mget(client, keys, asked), None)
        found: dict[str, dict[str, Any]] = {}
        bad: list[str] = []
        if raw is not None:
            first_problem = None
            for key, value in zip(keys, raw, strict=True):
                if value is None:
                    continue
                record = _decode(value)
                problem = "not a JSON result record" if record is None else None
                if problem is None and expected is not None and key in expected:
                    problem = _key_mismatch(record, expected[key])
                if problem is None and schema_problem is not None:
                    problem = schema_problem(record)
                if problem is not None:
                    bad.append(key)
                    first_problem = first_problem or problem
                    continue
                if usable is None or usable(record):
                    record["from_cache"] = True
                    found[key] = record
            if bad:
                self._report(f"dropped {len(bad)} cached record(s) that did not match their key or the results "
                             f"schema (e.g. {first_problem}); they are recomputed")
            if bad or asked > len(found):
                self._guard("hit count", lambda client: self._settle(client, bad, asked - len(found)), None)
        self.hits += len(found)
        self.misses += asked - len(found)
        return found

    def put_many(
        self, items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]
    ) -> int:
        """Store records under their keys in one pipeline; returns how many were sent."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        if not pairs or not self.available:
            return 0
        encoded = [(key, _encode(record), str(record["symbol"])) for key, record in pairs]

        def run(client: redis.Redis) -> int:
            pipe = client.pipeline(transaction=False)
            for key, payload, symbol in encoded:
                pipe.set(key, payload, ex=self.ttl_seconds)
                pipe.sadd(self._symbol_key(symbol), key)
            # The index outlives every key it lists: each put pushes its expiry out.
            for symbol in {symbol for _, _, symbol in encoded}:
                pipe.expire(self._symbol_key(symbol), self.ttl_seconds)
            pipe.execute()
            return len(encoded)

        return self._guard("put", run, 0)

    def invalidate_symbol(self, symbol: str) -> int:
        """Delete every cached result of ``symbol``; returns how many were deleted."""
        index = self._symbol_key(symbol)
        # Renaming first makes the snapshot atomic: a put racing with us lands in a fresh
        # index instead of being dropped from the old one unseen.
        doomed = f"{self.prefix}:invalidating:{uuid.uuid4().hex}"

        def run(client: redis.Redis) -> int:
            try:
                client.rename(index, doomed)
            except _redis().ResponseError:  # no such key: nothing cached for the symbol
                return 0
            deleted = _unlink_all(client, client.sscan_iter(doomed, count=_BATCH))
            client.unlink(doomed)
            return deleted

        return self._guard("invalidate", run, 0)

    def clear(self) -> int:
        """Delete every key under the prefix (SCAN + UNLINK in batches); returns the count."""

        def run(client: redis.Redis) -> int:
            return _unlink_all(client, client.scan_iter(match=self._pattern("*"), count=1000))

        return self._guard("clear", run, 0)

    def stats(self) -> dict[str, Any]:
        """Entries under the prefix, hit/miss counters, hit rate and Redis memory use."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "available": False,
            "url": redact_url(self.url),
            "prefix": self.prefix,
            "ttl_seconds": self.ttl_seconds,
            "keys": None,
            "hits": None,
            "misses": None,
            "hit_rate": None,
            "used_memory": None,
            "used_memory_human": None,
        }

        def run(client: redis.Redis) -> dict[str, Any]:
            keys = sum(1 for _ in client.scan_iter(match=self._pattern("bt:*"), count=1000))
            counters = dict(zip(_COUNTERS, client.mget([self._stat_key(name) for name in _COUNTERS]), strict=True))
            counts = {name: self._counter(name, raw) for name, raw in counters.items()}
            served = max(counts["lookups"] - counts["unserved"], 0)  # a counter reset alone can leave fewer
            hits, misses = counts["hits"] + served, counts["misses"] + counts["unserved"]
            memory: dict[str, Any] = {}
            try:
                memory = client.info("memory")
            except _redis().ResponseError:  # INFO renamed or forbidden on some managed servers
                pass
            return {
                "available": True,
                "keys": keys,
                "hits": hits,
                "misses": misses,
                "hit_rate": hits / (hits + misses) if hits + misses else None,
                "used_memory": memory.get("used_memory"),
                "used_memory_human": memory.get("used_memory_human"),
            }

        out.update(self._guard("stats", run, {}))
        return out

    def ping(self) -> bool:
        """Whether Redis answers now (for health checks); False when the cache is off or down."""
        return self._guard("ping", lambda client: bool(client.ping()), False)

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()

    # --- internals ----------------------------------------------------------------------

    def _counted_mget(self, client: redis.Redis, keys: list[str], asked: int) -> list[bytes | None]:
        """MGET `keys` and count the lookups in the same round trip. A refused count (a write, so OOM under
        noeviction) warns once and the values still count."""
        pipe = client.pipeline(transaction=False)
        pipe.mget(keys)
        pipe.incrby(self._stat_key("lookups"), asked)
        values, counted = pipe.execute(raise_on_error=False)
        if isinstance(values, Exception):
            raise values
        if isinstance(counted, Exception):
            self._warn("hit count", counted)
        return values

    def _settle(self, client: redis.Redis, bad: list[str], unserved: int) -> None:
        """Delete the records that were not what their keys promise and count the keys not served."""
        pipe = client.pipeline(transaction=False)
        if bad:
            pipe.unlink(*bad)
        if unserved:
            pipe.incrby(self._stat_key("unserved"), unserved)
        pipe.execute()

    def _symbol_key(self, symbol: str) -> str:
        return f"{self.prefix}:sym:{symbol}"

    def _stat_key(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"

    def _pattern(self, suffix: str) -> str:
        # The prefix is literal: escape glob characters so SCAN MATCH stays inside it.
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}:{suffix}"

    def _guard(self, operation: str, call: Callable[[redis.Redis], T], default: T) -> T:
        if self._client is None or self._down:
            return default
        try:
            return call(self._client)
        except (_redis().RedisError, OSError) as exc:
            if isinstance(exc, (_redis().ConnectionError, _redis().TimeoutError, OSError)):
                self._down = True
            self._warn(operation, exc)
            return default

    def _counter(self, name: str, raw: bytes | None) -> int:
        """A hit/miss counter; one that is not a count (written by something else) is reset to 0."""
        try:
            value = int(raw or 0)
            if value >= 0:
                return value
        except ValueError:
            pass
        self._report(f"the cache counter {self._stat_key(name)} held {raw!r:.40}, not a count; it was reset to 0")
        self._guard("reset counter", lambda client: client.delete(self._stat_key(name)), None)
        return 0

    def _report(self, message: str) -> None:
        """One warning (through `on_warning`, else Python's warnings) that does not disable the cache."""
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            warnings.warn(message, CacheWarning, stacklevel=4)

    def _warn(self, operation: str, exc: BaseException) -> None:
        log.debug("redis %s failed", operation, exc_info=exc)
        if self._warned:
            return
        self._warned = True
        where = redact_url(self.url)
        # Pipeline errors quote the failing command, payload included, before the error
        # itself: keep the head and the tail.
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > 300:
            reason = f"{reason[:100]} ... {reason[-200:]}"
        if self._down:
            message = (
                f"Redis cache at {where} is unavailable ({reason}); "
                f"running without the cache. Start it with: {START_HINT}"
            )
        else:
            message = (
                f"Redis cache at {where} refused a {operation} ({reason}); "
                "results that could not be cached are recomputed next time"
            )
        self._report(message)


# A record's fields that its key is made of (`market` is left out: records cached before it was
# kept lack it, and spot is all there is).
_KEY_FIELDS = ("strategy", "params", "symbol", *KEY_DEFAULTS, "data_version", "engine_version")
# The hit counters: lookups and unserved, and hits and misses as versions before kept them.
_COUNTERS = ("lookups", "unserved", "hits", "misses")


def _key_mismatch(record: Mapping[str, Any], fields: Mapping[str, Any]) -> str | None:
    """Which key field of `record` differs from the key's `fields` (None: it is the key's record)."""
    wanted = {"engine_version": ENGINE_VERSION, **fields}
    for name in _KEY_FIELDS:
        if name not in wanted:
            continue
        found, want = record.get(name), wanted[name]
        # Equal values have equal canonical forms (14 == 14.0, dicts of such): only others need the spelling.
        if found == want and type(found) is type(want):
            continue
        if _canonical(found) != _canonical(want):
            return f"{name} {record.get(name)!r:.60} under a key for {wanted[name]!r:.60}"
    return None


def _canonical(value: Any) -> Any:
    """Key fields in one spelling: 14 == 14.0, datetimes as UTC ISO strings."""
    kind = type(value)  # the plain types first, by identity (an ABC's isinstance costs ten times as much)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.isoformat()
    if hasattr(value, "item"):  # NumPy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # NumPy scalar
        return value.item()
    if hasattr(value, "tolist"):  # NumPy array
        return value.tolist()
    raise TypeError(f"cannot cache a value of type {type(value).__name__}")


def _encode(record: Mapping[str, Any]) -> bytes:
    # from_cache describes how a record was obtained, not the record: never stored.
    body = {k: v for k, v in record.items() if k != "from_cache"}
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()


def _decode(raw: bytes) -> dict[str, Any] | None:
    """The record in ``raw``, or None for anything that is not a JSON result record."""
    # json.loads only ever builds dicts, lists and scalars: a pickle (or any other
    # payload) fails to parse here and is never executed. orjson (in the tree with Prefect) parses the same
    # JSON into the same values three times as fast; what it refuses (a NaN token json.dumps may write) goes
    # to json.loads.
    try:
        value = _orjson().loads(raw)
    except ValueError:
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
    except RecursionError:
        return None
    if not isinstance(value, dict):
        return None
    for name, kind in _REQUIRED_SHAPE.items():
        if not isinstance(value.get(name), kind):
            return None
    return value


def _unlink_all(client: redis.Redis, keys: Iterable[bytes]) -> int:
    """UNLINK `keys` in batches of _BATCH (one round trip each, never one huge command); the count deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= _BATCH:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted
