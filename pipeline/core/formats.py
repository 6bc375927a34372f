"""Format versions of the files cryptobt writes and later reads back: lake manifests, export state, grids.

Each carries ``format_version``. A file without one was written before versions existed and reads
as version 1, so lakes written before keep working. A version this build does not read (a newer
cryptobt wrote the file, or something else did) is refused with one line naming the file, its
version and the versions this build reads, before anything in the file is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UnsupportedFormat

FIELD = "format_version"


@dataclass(frozen=True)
class Format:
    """One kind of file: the version this build writes and the versions it reads."""

    name: str
    writes: int
    reads: tuple[int, ...]
    remedy: str = "a newer cryptobt wrote it: upgrade cryptobt to read it"

    def stamped(self, document: dict) -> dict:
        """`document` with the version this build writes."""
        return {**document, FIELD: self.writes}

    def version(self, path: Path, document: dict) -> int:
        """The version of `document` (read from `path`): 1 without the field; UnsupportedFormat if unread."""
        version = document.get(FIELD, 1)
        if type(version) is not int or version not in self.reads:
            raise UnsupportedFormat(
                f"{path} is a {self.name} in format version {version!r}; this cryptobt reads version"
                f"{'s' if len(self.reads) > 1 else ''} {', '.join(map(str, self.reads))}; {self.remedy}")
        return version


# Version 1 of each is also every file written before versions existed (no `format_version`).
LAKE_MANIFEST = Format("lake manifest", writes=1, reads=(1,))
# 1: a bare {symbol: state} object; 2: {"format_version": 2, "symbols": {symbol: state}}.
EXPORT_STATE = Format("export state", writes=2, reads=(1, 2))
# 1: .npy files alone (no checksums: never trusted, rebuilt on the next read); 2: with grid.json (checksums).
PRICE_GRID = Format("price grid", writes=2, reads=(1, 2),
                    remedy="a newer cryptobt wrote it: upgrade cryptobt, or delete its folder (a grid is derived "
                           "data, rebuilt from the lake on the next read), or set CRYPTOBT_GRID_CACHE=0")
