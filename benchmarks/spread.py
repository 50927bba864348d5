"""Shared by the benchmarks: interleaved A/B orders, medians with their spread, the load average.

A ratio between two timed runs is only meaningful when both saw the same machine. The runs
are therefore interleaved (A B, B A, A B ... one pair per round, the order alternating so a
steady drift in load favours neither side), each round gives one ratio, and the figure is the
median of those ratios with its spread (interquartile range and min-max).
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any


def pair_orders(rounds: int, a: str, b: str) -> list[tuple[str, str]]:
    """``[(a, b), (b, a), (a, b), ...]``: which side runs first in each round."""
    return [(a, b) if r % 2 == 0 else (b, a) for r in range(rounds)]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, quartiles and extremes of ``values``, rounded to ``digits``."""
    vals = sorted(values)
    if not vals:
        return {"n": 0, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    if len(vals) == 1:
        q1 = q3 = vals[0]
    else:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return {
        "n": len(vals),
        "median": round(statistics.median(vals), digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(vals[0], digits),
        "max": round(vals[-1], digits),
    }


def iqr(s: dict[str, Any], digits: int = 2) -> str:
    """``"0.91-0.95"``: the interquartile range of a :func:`summary`."""
    return "n/a" if not s["n"] else f"{s['q1']:.{digits}f}-{s['q3']:.{digits}f}"


def min_max(s: dict[str, Any], digits: int = 2) -> str:
    """``"0.88-0.97"``: the extremes of a :func:`summary`."""
    return "n/a" if not s["n"] else f"{s['min']:.{digits}f}-{s['max']:.{digits}f}"


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    """``"0.93 (IQR 0.91-0.95, min-max 0.88-0.97, n=5)"``."""
    if not s["n"]:
        return "n/a"
    return f"{s['median']:.{digits}f} (IQR {iqr(s, digits)}, min-max {min_max(s, digits)}, n={s['n']})"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages and the CPU count, for printing beside timing bounds."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def load_tuple() -> list[float]:
    """The load averages as numbers, for the JSON results."""
    return [round(x, 2) for x in os.getloadavg()]


def first_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The first line a child process prints (its address), waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"the benchmark server did not start within {timeout:g}s (exit code {proc.returncode})")
    return line
