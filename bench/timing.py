"""Timing helper shared by the benchmark's modules (light: the scaling cells import it in a fresh
process whose peak RSS they report, so it pulls in nothing)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeat: int = 5, warmup: int = 1) -> dict:
    """min / median / max seconds of `repeat` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": repeat}
