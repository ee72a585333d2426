"""Timing helper shared by the benchmark scripts."""
from __future__ import annotations

import time
from typing import Any, Callable


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; return (fastest wall time in s, last result).
    The minimum is the least noisy estimate on a shared machine."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def json_line(benchmark: str, metric: str, value: float, baseline: float, goal: str) -> dict:
    """Print the one JSON line every benchmark ends with; ``ratio`` = value / baseline
    (``goal`` says which way is better, e.g. "<= 0.5" for times, ">= 3" for rates)."""
    import json

    line = {"benchmark": benchmark, "metric": metric, "value": round(float(value), 6),
            "baseline": round(float(baseline), 6), "ratio": round(float(value) / float(baseline), 4) if baseline else None,
            "goal": goal}
    print(json.dumps(line), flush=True)
    return line
