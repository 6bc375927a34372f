"""Numba's on-disk cache filled by two processes at once never serves one signature's machine code for
another, and a function both need at once is compiled by one of them (pipeline/core/compile_cache.py).

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


# argv: kernel folder, role ("first" compiles slowly and says when it has begun; "second" starts then).
COMPILE_THE_SAME = '''
import json
import os
import sys
import time

import numpy as np

import pipeline  # noqa: F401
from numba.core import dispatcher

folder, role = sys.argv[1], sys.argv[2]
begun = os.path.join(folder, "first-is-compiling")
if role == "first":
    compile_ = dispatcher._FunctionCompiler.compile

    def slow_compile(self, args, return_type):
        open(begun, "w").close()
        time.sleep(3.0)
        return compile_(self, args, return_type)

    dispatcher._FunctionCompiler.compile = slow_compile
else:
    while not os.path.exists(begun):
        time.sleep(0.01)
sys.path.insert(0, folder)
import kernel

out = kernel.tripled(np.arange(5, dtype="float64"))
stats = kernel.tripled.stats
print(json.dumps({"out": out.tolist(), "compiled": len(stats.cache_misses), "loaded": len(stats.cache_hits)}))
'''


@pytest.mark.slow
def test_a_function_two_processes_need_at_once_is_compiled_by_one_and_loaded_by_the_other(tmp_path):
    (tmp_path / "kernel.py").write_text(KERNEL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": ""}
    processes = [subprocess.Popen([sys.executable, "-c", COMPILE_THE_SAME, str(tmp_path), role], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for role in ("first", "second")]
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        answers.append(json.loads(out))
    first, second = answers
    assert first["out"] == second["out"] == [0.0, 3.0, 6.0, 9.0, 12.0]
    # The second process waited for the first's machine code instead of compiling it again.
    assert (first["compiled"], first["loaded"]) == (1, 0)
    assert (second["compiled"], second["loaded"]) == (0, 1)


@pytest.mark.slow
def test_a_recursive_cached_function_compiles_under_its_own_lock_once(tmp_path):
    # A function compiling itself again asks for its own lock inside it: it must not wait on itself.
    (tmp_path / "recursive.py").write_text('''
from numba import njit


@njit(cache=True)
def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)
''')
    call = "import pipeline, recursive; print(recursive.factorial(10), len(recursive.factorial.stats.cache_hits))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "NUMBA_CACHE_DIR": ""}
    answers = [subprocess.run([sys.executable, "-c", call], env=env, capture_output=True, text=True, timeout=120,
                              check=True).stdout.split() for _ in range(2)]
    assert answers == [["3628800", "0"], ["3628800", "1"]]  # compiled, then loaded


def test_the_lock_wraps_numbas_cache_file_once():
    from numba.core import caching, dispatcher

    import pipeline  # noqa: F401
    from pipeline.core import compile_cache

    save, load = caching.IndexDataCacheFile.save, caching.IndexDataCacheFile.load
    compile_ = dispatcher.Dispatcher.compile
    compile_cache.lock_saves(caching)
    compile_cache.compile_once(dispatcher)
    assert caching.IndexDataCacheFile.save is save and caching.IndexDataCacheFile.load is load
    assert dispatcher.Dispatcher.compile is compile_
    assert hasattr(save, "__wrapped__") and hasattr(load, "__wrapped__") and hasattr(compile_, "__wrapped__")


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
