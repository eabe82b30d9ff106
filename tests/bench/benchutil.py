"""Shared by the benchmark scripts: the checkout's package on sys.path, and a median timer."""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, "..", "..", "plugin")
if PLUGIN not in sys.path:
    sys.path.insert(0, PLUGIN)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000
