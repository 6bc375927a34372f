"""Aligned price grids of whole snapshots, kept on disk beside the lake for the next read.

A snapshot never changes once committed, so the (symbols x time) grid a whole-history read of
all its symbols builds (DuckDB scan, scatter onto the grid, coverage) is the same every time:
the reader keeps it as plain `.npy` files under ``<lake>/.grids/<snapshot id>/<key>/`` and the
next such read maps them (copy-on-write, so nothing a run does can change the files) instead of
scanning Parquet again. That is most of a warm run's read and of a cold process's.

Derived data only: a grid is keyed by the snapshot id, the interval, the symbols, the columns
and the coverage rule; it is written to a hidden temporary folder and renamed into place (a
reader sees a whole grid or none); `lake vacuum` removes the grids of snapshots it removes.
Nothing reads the lake's Parquet files through it: `lake verify`, DuckDB globs and the size
figures see the snapshots alone. ``CRYPTOBT_GRID_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

FOLDER = ".grids"


def enabled() -> bool:
    return os.environ.get("CRYPTOBT_GRID_CACHE", "1") != "0"


def _path(lake_root: Path, snapshot_id: str, interval: str, names: list[str], columns: tuple[str, ...],
          min_coverage: float) -> Path:
    key = hashlib.sha256(json.dumps([interval, names, list(columns), min_coverage]).encode()).hexdigest()[:32]
    return Path(lake_root) / FOLDER / snapshot_id / key


def load(lake_root: Path, snapshot_id: str, interval: str, names: list[str], columns: tuple[str, ...],
         min_coverage: float) -> dict[str, np.ndarray] | None:
    """The arrays a read stored (`times`, `bars`, each column, `coverage` if any), or None."""
    folder = _path(lake_root, snapshot_id, interval, names, columns, min_coverage)
    if not folder.is_dir():
        return None
    try:
        # "c": copy-on-write pages, flagged writable (numba types a read-only array slowly).
        return {path.stem: np.load(path, mmap_mode="c") for path in folder.glob("*.npy")}
    except (OSError, ValueError):  # a grid cut short by a full disk, say: read the lake instead
        return None


def store(lake_root: Path, snapshot_id: str, interval: str, names: list[str], columns: tuple[str, ...],
          min_coverage: float, arrays: dict[str, np.ndarray]) -> None:
    """Keep `arrays` for the next read of the same grid; best effort (a failure costs a later read)."""
    folder = _path(lake_root, snapshot_id, interval, names, columns, min_coverage)
    if folder.exists():
        return
    temp = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.mkdir(parents=True)
        for name, values in arrays.items():
            np.save(temp / f"{name}.npy", values)
        os.rename(temp, folder)  # whole or not at all; a concurrent writer's grid is the same
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)


def remove_except(lake_root: Path, snapshot_ids: set[str]) -> None:
    """Remove the grids of every snapshot not in `snapshot_ids` (and temporaries of killed writers)."""
    root = Path(lake_root) / FOLDER
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name not in snapshot_ids:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for grid in folder.iterdir():
            if grid.name.startswith("."):
                with contextlib.suppress(OSError):
                    shutil.rmtree(grid)
