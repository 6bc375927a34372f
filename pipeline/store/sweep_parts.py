"""A distributed sweep's parts: one folder per run id beside the results table, holding the sweep's request
(`request.json`, written before any chunk runs) and one Parquet file per chunk (symbol block x parameter
block) with the kernel's matrices for it: each (symbol, set)'s metrics, block sums and, for --stats and
--returns-out, its equity at each day's end. A part is written whole or not at all (a hidden temp file,
fsynced, hard-linked: `files.publish_once`); the run's results are published from the parts when every
chunk is there, and the folder goes once they are.

Layout (``root`` is ``settings.results_root``)::

    <root>/../sweeps/<run_id>/request.json
    <root>/../sweeps/<run_id>/chunk-00000.parquet ...

Beside the results folder, not in it: ``read_parquet('data/results/**/*.parquet')`` sees result rows only.
Floats travel as float64 bit for bit (NaN stays NaN): the run's results equal a single-process run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import objects
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.objects import ObjectPath
from pipeline.store.files import publish_once, writing
from pipeline.store.values import check_name

REQUEST = "request.json"
_PART = re.compile(r"^chunk-(\d{5,})\.parquet$")
_META = b"cryptobt.sweep_part"


def sweeps_root(results_root: str | os.PathLike[str]) -> Path:
    """Root of the distributed sweeps' parts: the sibling ``sweeps`` directory of the results root."""
    return objects.location(results_root).parent / "sweeps"


def run_folder(results_root: str | os.PathLike[str], run_id: str) -> Path:
    check_name(run_id, "run_id")
    return sweeps_root(results_root) / run_id


def part_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:05d}.parquet"


def write_request(folder: Path, request: dict[str, Any]) -> None:
    """The sweep's request, once, before any chunk runs (a run id's request never changes)."""
    text = json.dumps(request, sort_keys=True, indent=1, allow_nan=False).encode()
    folder.mkdir(parents=True, exist_ok=True)
    with writing(folder / REQUEST, len(text), lease_root=folder) as handle:
        handle.write(text)


def read_request(results_root: str | os.PathLike[str], run_id: str) -> dict[str, Any]:
    """The request of the distributed sweep `run_id`; a one-line error when there is none."""
    folder = run_folder(results_root, run_id)
    try:
        return request_in(folder)
    except FileNotFoundError:
        raise InputError(f"--resume {run_id!r}: no distributed sweep of that id in {sweeps_root(results_root)} "
                         "(a --cluster or --workers sweep keeps its chunks there until it completes)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{folder / REQUEST} cannot be read ({exc})") from None


def request_in(folder: Path) -> dict[str, Any]:
    """The request kept in a run's `folder` (a worker reads it there: the task names the folder only)."""
    return json.loads((folder / REQUEST).read_text(encoding="utf-8"))


def present(folder: Path) -> set[int]:
    """The chunks whose parts are in `folder`."""
    try:
        names = [p.name for p in folder.iterdir()] if isinstance(folder, ObjectPath) else os.listdir(folder)
    except FileNotFoundError:
        return set()
    return {int(m[1]) for m in map(_PART.match, names) if m}


def _rows(matrix: np.ndarray) -> pa.LargeListArray:
    """A (rows x width) float64 matrix as one list per row (width may be 0)."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64) * width)
    return pa.LargeListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, dtype=np.float64).ravel()))


def _matrix(column: pa.ChunkedArray, rows: int, width: int) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(rows, width)


def write_part(folder: Path, index: int, symbols: list[str], first: int, stop: int, cube: np.ndarray,
               blocks: np.ndarray, days: np.ndarray | None, meta: dict[str, Any]) -> bool:
    """Chunk `index`'s matrices (symbols x sets first..stop-1): `cube` (Y x n x metrics), `blocks`
    (Y x B x K x n) and `days` (Y x D x n, or None), one row per (symbol, set), symbol-major. False when
    the part was there already (another attempt wrote the same)."""
    n_symbols, n_sets = cube.shape[:2]
    if n_symbols != len(symbols) or n_sets != stop - first:
        raise PipelineError(f"chunk {index}: {cube.shape[:2]} results for {len(symbols)} symbols x {stop - first} sets")
    columns = {
        "symbol": pa.array(np.repeat(np.array(symbols, dtype=object), n_sets), type=pa.string()),
        "set": pa.array(np.tile(np.arange(first, stop, dtype=np.int64), n_symbols)),
        "metrics": _rows(cube.reshape(n_symbols * n_sets, -1)),
        "blocks": _rows(blocks.transpose(0, 3, 1, 2).reshape(n_symbols * n_sets, -1)),
    }
    if days is not None:
        columns["days"] = _rows(days.transpose(0, 2, 1).reshape(n_symbols * n_sets, -1))
    shapes = {"metrics": cube.shape[2], "blocks": list(blocks.shape[1:3]), "days": None if days is None else days.shape[1]}
    table = pa.table(columns).replace_schema_metadata({_META: json.dumps(
        {**meta, "index": index, "symbols": symbols, "first": first, "stop": stop, "shapes": shapes}).encode()})
    return publish_once(table, part_path(folder, index), folder)


def read_part(folder: Path, index: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray | None]:
    """Chunk `index`'s metadata (symbols, first, stop, kernel_seconds, ...) and its matrices as `write_part`
    took them."""
    path = part_path(folder, index)
    try:
        table = (pq.read_table(path.arrow, filesystem=objects.filesystem()) if isinstance(path, ObjectPath)
                 else pq.read_table(path))
        meta = json.loads(table.schema.metadata[_META])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise PipelineError(f"{path} cannot be read ({exc}); remove it and resume to compute it again") from None
    n_symbols, n_sets = len(meta["symbols"]), meta["stop"] - meta["first"]
    rows = n_symbols * n_sets
    if table.num_rows != rows:
        raise PipelineError(f"{path} holds {table.num_rows} rows, not {rows}; remove it and resume")
    shapes = meta["shapes"]
    cube = _matrix(table.column("metrics"), rows, shapes["metrics"]).reshape(n_symbols, n_sets, shapes["metrics"])
    n_blocks, n_stats = shapes["blocks"]
    blocks = (_matrix(table.column("blocks"), rows, n_blocks * n_stats)
              .reshape(n_symbols, n_sets, n_blocks, n_stats).transpose(0, 2, 3, 1))
    days = None
    if shapes["days"] is not None:
        days = (_matrix(table.column("days"), rows, shapes["days"]).reshape(n_symbols, n_sets, shapes["days"])
                .transpose(0, 2, 1))
    return meta, cube, blocks, days


def remove(folder: Path) -> None:
    """The run's folder, once its results are published (best effort: what cannot go stays)."""
    with contextlib.suppress(OSError):
        if isinstance(folder, ObjectPath):
            folder.remove_tree()
        else:
            shutil.rmtree(folder)
