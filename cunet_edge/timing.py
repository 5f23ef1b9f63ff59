"""Latency measurement protocol: warm-up, then a minimum iteration count and duration (MLPerf style)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["PhaseClock", "time_call", "time_side_by_side", "collect_samples", "summarize_ms", "wall_clock_ms"]


def wall_clock_ms(fn: Callable[[], object]) -> float:
    """One call timed with the host's monotonic clock (CPU work, or GPU work that synchronizes)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def collect_samples(fn: Callable[[], object], *, warmup: int = 5, min_iters: int = 20, min_seconds: float = 1.0,
                    max_iters: int = 100_000, measure: Callable[[Callable], float] = wall_clock_ms) -> list[float]:
    """Per-call milliseconds of fn() after `warmup` calls, until both min_iters and min_seconds are reached."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() - start < min_seconds):
        samples.append(measure(fn))
    return samples


def summarize_ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "iters": len(samples),
    }


def time_call(fn: Callable[[], object], **kw) -> dict[str, float]:
    """Time fn() (see collect_samples for the protocol); p50/p90/p99/mean in ms and the iteration count."""
    return summarize_ms(collect_samples(fn, **kw))


def time_side_by_side(fns: dict[str, Callable[[], object]], *, rounds: int = 5, **kw) -> dict[str, float]:
    """Median over `rounds` of each function's p50 (ms), the functions timed in turn in every round.

    Interleaving puts slow phases of a shared, noisy machine on every candidate alike, so the
    ratios between them can be trusted more than timings taken one after another.
    """
    per: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per[name].append(time_call(fn, **kw)["p50_ms"])
    return {name: float(np.median(ts)) for name, ts in per.items()}


class PhaseClock:
    """Wall and CPU seconds of each phase of a stage, in order (for scale studies: on a shared machine the CPU time,
    user + system of every thread of the process, is the figure that does not move with the load)."""

    def __init__(self):
        self._last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, float] = {}
        self.cpu_laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = round(now[0] - self._last[0], 3)
        self.cpu_laps[name] = round(now[1] - self._last[1], 3)
        self._last = now
