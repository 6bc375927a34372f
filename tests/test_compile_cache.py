"""Numba's on-disk cache filled by two processes at once never serves one signature's machine code for
another (pipeline/core/compile_cache.py).

Two processes compile two signatures (int64 and float64 arrays) of one cached function at the same
moment. The race is made certain, not hoped for: each process waits after reading numba's index (1 s,
float64 1.5 s: both read it before either writes it, and float64 writes it last), and the int64 process
writes its data file two seconds late (it writes the last data file). A third process then calls both signatures from the cache. Without the lock it answered the float64 call
with the int64 machine code: int64 bits of the floats, no error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KERNEL = '''
from numba import njit


@njit(cache=True)
def tripled(a):
    out = a.copy()
    for i in range(a.shape[0]):
        out[i] = a[i] * 3
    return out
'''

# argv: kernel folder, dtype. Imports pipeline as every process of ours does before its kernels.
COMPILE_IN_A_RACE = '''
import sys
import time

import numpy as np

import pipeline  # noqa: F401
from numba.core import caching

folder, kind = sys.argv[1], sys.argv[2]
cache_file = caching.IndexDataCacheFile
read_index = cache_file._load_index


def read_then_wait(self):
    index = read_index(self)
    time.sleep(1.0 if kind == "int64" else 1.5)
    return index


cache_file._load_index = read_then_wait
if kind == "int64":
    write_data = cache_file._save_data

    def write_late(self, name, data):
        time.sleep(2.0)
        return write_data(self, name, data)

    cache_file._save_data = write_late
sys.path.insert(0, folder)
import kernel

print(kernel.tripled(np.arange(5, dtype=kind)).tolist())
'''

CALL_FROM_THE_CACHE = '''
import json
import sys

import numpy as np

import pipeline  # noqa: F401

sys.path.insert(0, sys.argv[1])
import kernel

answers = {}
for kind in ("int64", "float64"):
    out = kernel.tripled(np.arange(5, dtype=kind))
    answers[kind] = [str(out.dtype), out.tolist()]
print(json.dumps({"answers": answers, "hits": len(kernel.tripled.stats.cache_hits)}))
'''


@pytest.mark.slow
def test_two_processes_compiling_two_signatures_at_once_leave_each_its_own_code(tmp_path):
    (tmp_path / "kernel.py").write_text(KERNEL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": ""}
    racers = [subprocess.Popen([sys.executable, "-c", COMPILE_IN_A_RACE, str(tmp_path), kind], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for kind in ("int64", "float64")]
    for racer in racers:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err[-2000:]
    done = subprocess.run([sys.executable, "-c", CALL_FROM_THE_CACHE, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    got = json.loads(done.stdout)
    assert got["answers"] == {"int64": ["int64", [0, 3, 6, 9, 12]], "float64": ["float64", [0.0, 3.0, 6.0, 9.0, 12.0]]}
    # Both signatures were kept in the cache (the third process compiled neither).
    assert got["hits"] == 2
    assert sorted(p.name.rsplit(".", 2)[1] for p in (tmp_path / "__pycache__").glob("*.nbc")) == ["1", "2"]


def test_the_lock_wraps_numbas_cache_file_once():
    from numba.core import caching

    import pipeline  # noqa: F401
    from pipeline.core import compile_cache

    save, load = caching.IndexDataCacheFile.save, caching.IndexDataCacheFile.load
    compile_cache.lock_saves(caching)
    assert caching.IndexDataCacheFile.save is save and caching.IndexDataCacheFile.load is load
    assert hasattr(save, "__wrapped__") and hasattr(load, "__wrapped__")


def test_a_cached_function_says_whether_an_earlier_process_compiled_it(tmp_path):
    import importlib.util

    import numpy as np

    from pipeline.core.compile_cache import has_machine_code

    def fresh_import():
        spec = importlib.util.spec_from_file_location(f"kernel_{tmp_path.name}", tmp_path / "kernel.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    (tmp_path / "kernel.py").write_text(KERNEL)
    first = fresh_import()
    assert not has_machine_code(first.tripled)
    assert first.tripled(np.arange(3.0)).tolist() == [0.0, 3.0, 6.0]
    assert has_machine_code(first.tripled) and has_machine_code(fresh_import().tripled)
