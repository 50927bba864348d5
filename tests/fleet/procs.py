"""Run worker processes of tests/fleet/workers.py and collect their JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Upper bound for a worker to finish: generous on a loaded 2-core machine; only a hang hits it.
WORKER_TIMEOUT = 300.0


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m tests.fleet.workers ARGS`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def events(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Wait for a worker to exit successfully and return its events."""
    out, err = proc.communicate(timeout=WORKER_TIMEOUT)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err[-3000:]}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_all(*commands: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    """Start every worker at once and wait for all of them."""
    procs = [spawn(*c) for c in commands]
    try:
        return [events(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def read_until(proc: subprocess.Popen[str], key: str) -> dict[str, Any]:
    """Read a worker's events until one has ``key`` (the worker keeps running)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if key in event:
            return dict(event)
    raise AssertionError(f"worker exited before announcing {key!r}: {proc.stderr.read() if proc.stderr else ''}")


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no cleanup, no release, like a machine losing power."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
