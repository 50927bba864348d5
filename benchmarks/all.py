"""Run every benchmark script, print every figure, and fail at the end with the list of misses.

``nox -s bench`` runs this. A script that misses a bound does not stop the ones after it: each
prints its figures, and the exit code is non-zero when any script missed, naming them all.
Arguments (``--smoke``) are passed to every script.

    python benchmarks/all.py            # the full benchmarks (minutes)
    python benchmarks/all.py --smoke    # seconds-long versions: counts and invariants only
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

#: In order: the fast ones first.
SCRIPTS = ("run.py", "session_bench.py", "incremental_bench.py", "fleet_token_bench.py", "fleet_bench.py")


def main(argv: list[str]) -> int:
    results: list[tuple[str, int, float]] = []
    for script in SCRIPTS:
        print(f"\n=== {script} {' '.join(argv)}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, str(HERE / script), *argv], check=False).returncode
        results.append((script, code, time.monotonic() - started))
    print("\n=== summary")
    for script, code, seconds in results:
        print(f"  {script:<24} {'ok' if code == 0 else f'MISSED (exit {code})':<18} {seconds:7.1f} s")
    missed = [script for script, code, _ in results if code != 0]
    if missed:
        print(f"bounds missed in {len(missed)} script(s): {', '.join(missed)}")
        return 1
    print("every bound met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
