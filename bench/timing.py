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
    return _summary(samples)


def _summary(samples: list[float]) -> dict:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": len(samples)}


def alternating(fn_a, fn_b, repeat: int = 5, warmup: int = 1) -> tuple[dict, dict]:
    """`timed` of two functions called in turn (a, b, a, b, ...): on a shared host whose load drifts, their
    ratio is then measured under the same load, not minutes apart."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((fn_a, samples[0]), (fn_b, samples[1])):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return _summary(samples[0]), _summary(samples[1])
