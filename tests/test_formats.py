"""Format versions (issue 25): lake manifests, export state and price grids carry `format_version`; one this
build does not read is refused in one line naming the file, its version and the versions read; files written
before versions existed (no field) read as version 1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.core import formats
from pipeline.lake import grids
from pipeline.lake import snapshots as lake


@pytest.fixture
def small_lake(tmp_path) -> Path:
    root = tmp_path / "lake"
    demo.build_sample_lake(root, n_symbols=4, years=0.3, sample=None)
    return root


def _cli(lake_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(lake_root.parent / "results"),
           "REDIS_URL": ""}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _board(done: subprocess.CompletedProcess) -> list[tuple]:
    assert done.returncode == 0, done.stderr
    return [(r["symbol"], r["total_return_pct"], r["sharpe"], r["num_trades"]) for r in json.loads(done.stdout)["results"]]


def _rewrite_manifest(snapshot_path: Path, edit) -> None:
    """Edit the manifest and seal it again (its checksum), as a build that wrote it that way would have."""
    path = snapshot_path / lake.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest[lake.MANIFEST_CHECKSUM] = lake.manifest_checksum(manifest)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _rewrite_state(snapshot_path: Path, document: object) -> None:
    text = json.dumps(document, sort_keys=True)
    (snapshot_path / lake.STATE).write_text(text)
    _rewrite_manifest(snapshot_path, lambda m: m.update(state_sha256=hashlib.sha256(text.encode()).hexdigest()))


def _refused(done: subprocess.CompletedProcess, path: Path, version: object, reads: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr + done.stdout
    assert str(path) in lines[0] and f"format version {version!r}" in lines[0] and reads in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, "1"], ids=["newer", "unknown"])
def test_a_manifest_state_or_grid_of_a_version_this_build_does_not_read_is_refused_in_one_line(small_lake, version):
    assert _cli(small_lake, "backtest", "rsi", "--all", "--json").returncode == 0  # keeps a grid
    snapshot = lake.current_snapshot(small_lake).path
    [grid_meta] = small_lake.glob(f"{grids.FOLDER}/*/*/{grids.META}")
    assert json.loads(grid_meta.read_text())[formats.FIELD] == formats.PRICE_GRID.writes
    meta = json.loads(grid_meta.read_text())
    grid_meta.write_text(json.dumps({**meta, formats.FIELD: version + 1 if version == 2 else version}))
    _refused(_cli(small_lake, "backtest", "rsi", "--all", "--json"), grid_meta,
             version + 1 if version == 2 else version, "reads versions 1, 2")
    grid_meta.write_text(json.dumps(meta))

    state = json.loads((snapshot / lake.STATE).read_text())
    assert state[formats.FIELD] == formats.EXPORT_STATE.writes and "symbols" in state
    _rewrite_state(snapshot, {**state, formats.FIELD: version + 1 if version == 2 else version})
    _refused(_cli(small_lake, "lake", "verify"), snapshot / lake.STATE, version + 1 if version == 2 else version,
             "reads versions 1, 2")
    _rewrite_state(snapshot, state)

    _rewrite_manifest(snapshot, lambda m: m.update({formats.FIELD: version}))
    for args in (("backtest", "rsi", "--all"), ("lake", "verify"), ("lake", "snapshots")):
        _refused(_cli(small_lake, *args), snapshot / lake.MANIFEST, version, "reads version 1")
    _rewrite_manifest(snapshot, lambda m: m.update({formats.FIELD: 1}))
    assert _cli(small_lake, "lake", "verify").returncode == 0


@pytest.mark.slow
def test_files_written_before_format_versions_read_as_version_1(small_lake):
    fresh = _board(_cli(small_lake, "backtest", "rsi", "--all", "--json"))
    snapshot = lake.current_snapshot(small_lake).path
    # As a build before versions wrote them: no field in the manifest, a bare {symbol: state} state, a grid
    # of .npy files alone (no grid.json, no checksums).
    _rewrite_state(snapshot, json.loads((snapshot / lake.STATE).read_text())["symbols"])
    _rewrite_manifest(snapshot, lambda m: m.pop(formats.FIELD))
    [grid_meta] = small_lake.glob(f"{grids.FOLDER}/*/*/{grids.META}")
    grid_meta.unlink()

    assert _cli(small_lake, "lake", "verify").returncode == 0
    old = _cli(small_lake, "backtest", "rsi", "--all", "--json")
    assert _board(old) == fresh and "warning" not in old.stderr  # the old grid is never trusted: rebuilt quietly
    assert json.loads(grid_meta.read_text())[formats.FIELD] == formats.PRICE_GRID.writes
    # The next commit builds on the old state, and writes the current versions.
    lake._loaded.clear()
    result = demo.build_sample_lake(small_lake, n_symbols=5, years=0.3, sample=None)
    assert result.created and result.changed_symbols == ["SYN004"]
    assert json.loads((result.snapshot.path / lake.STATE).read_text())[formats.FIELD] == formats.EXPORT_STATE.writes
    assert result.snapshot.manifest[formats.FIELD] == formats.LAKE_MANIFEST.writes


def test_a_state_of_before_versions_with_a_symbol_named_format_version_reads_as_version_1(small_lake):
    snapshot = lake.current_snapshot(small_lake)
    symbols = json.loads((snapshot.path / lake.STATE).read_text())["symbols"]
    _rewrite_state(snapshot.path, {formats.FIELD: symbols["SYN000"], **symbols})
    lake._loaded.clear()
    assert formats.FIELD in lake.load_state(lake.current_snapshot(small_lake))
