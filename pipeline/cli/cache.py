"""`cryptobt cache`: the Redis result cache's statistics, clearing and invalidation."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, warn
from pipeline.core.config import Settings

app = typer.Typer(help="The Redis result cache.", no_args_is_help=True)


def _cache() -> Any:
    from pipeline.store.cache import ResultCache

    return ResultCache.from_settings(Settings.from_env(),
                                     on_warning=warn)


@app.command("stats")
@user_errors
def cache_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Keys, hits, misses, hit rate and memory of the cache.

    Example: cryptobt cache stats
    """
    import json

    stats = _cache().stats()
    if as_json:
        print(json.dumps(stats, default=str))
        return
    for key, value in stats.items():
        console.print(f"{key}: {value}")


@app.command("clear")
@user_errors
def cache_clear() -> None:
    """Delete every cached result (only keys under the cache prefix).

    Example: cryptobt cache clear
    """
    cache = _cache()
    console.print(f"deleted {cache.clear()} key(s) under the prefix {cache.prefix!r} (results, indexes, counters)")


@app.command("invalidate")
@user_errors
def cache_invalidate(symbol: Annotated[str, typer.Option(help="Symbol whose results to drop.")]) -> None:
    """Drop one symbol's cached results.

    Example: cryptobt cache invalidate --symbol SYN001
    """
    console.print(f"deleted {_cache().invalidate_symbol(symbol)} key(s) of {symbol}")
