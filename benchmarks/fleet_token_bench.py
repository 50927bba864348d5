"""Fleet token benchmark: token requests of 4 processes sharing one credential, with and without Redis.

    python benchmarks/fleet_token_bench.py            # 4 processes x 1,000 tasks, 10 s, 3 interleaved rounds
    python benchmarks/fleet_token_bench.py --smoke    # 2 processes x 200 tasks, 3 s, one round (CI)

One local authorization server (its own process) issues 1-second access tokens and strictly rotating
refresh tokens with reuse detection: a refresh token presented twice revokes its whole family. Every
task loops ``tokens.get()`` and a request to a protected endpoint (``/api/ping``), each process with
at most 25 requests in flight. Each round runs, one after another in a rotating order:

- ``fleet``: the processes share one :class:`~oauthpw_async.fleet.Coordinator` namespace in Redis;
- ``independent``: the same processes, each with its own provider and no coordinator;
- ``one``: a single process with its own provider (the measured reference for "one process").

The token requests are counted by the server. The ideal for one process is one login and then one
refresh per fresh interval (lifetime - skew - mean margin, as in ``benchmarks/run.py``) over the run,
from "go" to the moment the last process's last task ended (no ``get()``, so no token request, after it).

Bound (every fleet run, smoke included: these are counts, not timings): token requests <= the ideal
for one process + 1, 0 reuse detections or ``invalid_grant`` answers, 0 failed requests (a 401, a
transport error or a token error). Exit 1 when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from fleet_bench import Redis
from run import ideal_requests

TOKEN_KEY = "YmVuY2htYXJrLWZsZWV0LWtleS0zMi1ieXRlcy0tLS0="  # 32 bytes, URL-safe base64 (benchmark only)
LIFETIME = 1.0
IN_FLIGHT = 25  # requests in flight per process


# --- the authorization server and the protected API (own process) --------------------------------------


def _serve(q: Any, done: Any) -> None:
    from oauthpw_async.testing import AuthServerState, LocalServer, Quirks
    from oauthpw_async.testing.api import DemoAPI

    async def main() -> None:
        auth = AuthServerState(
            token_lifetime=LIFETIME,
            latency=0.02,
            quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True),
        )
        async with LocalServer(auth, api=DemoAPI()) as server:
            q.put(
                (
                    server.base_url,
                    {
                        "access_token_url": server.token_url,
                        "client_id": auth.client_id,
                        "client_secret": auth.client_secret,
                        "username": auth.username,
                        "password": auth.password,
                    },
                )
            )
            await asyncio.get_running_loop().run_in_executor(None, done.wait)
            q.put(dict(auth.counts))

    asyncio.run(main())


# --- one process (own process) -------------------------------------------------------------------------


def _worker(
    index: int,
    mode: str,
    redis_url: str,
    namespace: str,
    base_url: str,
    conf: dict[str, Any],
    tasks: int,
    seconds: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    import aiohttp

    from oauthpw_async import TokenError, TokenProvider, load_config
    from oauthpw_async.fleet import Coordinator, CoordinatorUnavailable

    async def main() -> None:
        config = load_config(conf)
        ok = failed = 0
        errors: dict[str, int] = {}
        url = f"{base_url}/api/ping"
        async with contextlib.AsyncExitStack() as stack:
            coordinator = None
            if mode == "fleet":
                coordinator = Coordinator.for_config(config, redis_url, token_key=TOKEN_KEY, namespace=namespace)
                await stack.enter_async_context(coordinator)
                await coordinator.ping()  # connected before the clock starts
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT))
            )
            tokens = await stack.enter_async_context(TokenProvider(config, coordinator=coordinator))
            ready.put(index)
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            end = time.monotonic() + seconds
            slots = asyncio.Semaphore(IN_FLIGHT)

            def fail(kind: str) -> None:
                nonlocal failed
                failed += 1
                errors[kind] = errors.get(kind, 0) + 1

            async def task() -> None:
                nonlocal ok
                while time.monotonic() < end:
                    async with slots:  # take the header only once a request slot is ours
                        try:
                            token = await tokens.get()
                        except (TokenError, CoordinatorUnavailable) as exc:
                            fail(type(exc).__name__)
                            await asyncio.sleep(0.05)
                            continue
                        try:
                            async with session.get(url, headers={"Authorization": token.authorization}) as resp:
                                await resp.read()
                        except aiohttp.ClientError as exc:
                            fail(type(exc).__name__)
                            continue
                        if resp.status == 200:
                            ok += 1
                        else:
                            fail(f"HTTP {resp.status}")
                            if resp.status == 401:
                                tokens.invalidate(token)

            await asyncio.gather(*(task() for _ in range(tasks)))
            finished = time.monotonic()  # no get() after this, so no token request either
            stats = tokens.stats
        results.put(
            {
                "index": index,
                "end": finished,
                "ok": ok,
                "failed": failed,
                "errors": errors,
                "logins": stats.logins,
                "refreshes": stats.refreshes,
                "adopted": stats.adopted,
            }
        )

    asyncio.run(main())


# --- one measured run -------------------------------------------------------------------------------------


def run_once(ctx: Any, mode: str, processes: int, redis: Redis, args: Any) -> dict[str, Any]:
    """A fresh server, ``processes`` workers started and ready, go, and the server's counts at the end."""
    q, done = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(q, done), daemon=True)
    server.start()
    base_url, conf = q.get(timeout=60)
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh login budget and token record per run
    common = (mode, redis.url, namespace, base_url, conf, args.tasks, args.seconds, ready, go, results)
    procs = [ctx.Process(target=_worker, args=(i, *common)) for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    go.set()
    reports = [results.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join(60)
    elapsed = max(r["end"] for r in reports) - start
    done.set()
    counts: dict[str, int] = q.get(timeout=60)
    server.join(30)
    errors: dict[str, int] = {}
    for r in reports:
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    token_requests = sum(counts.values())
    ideal = ideal_requests(elapsed, LIFETIME, _policy())
    return {
        "mode": mode,
        "processes": processes,
        "seconds": elapsed,
        "token_requests": token_requests,
        "logins": sum(n for k, n in counts.items() if k.startswith("password:")),
        "refreshes": sum(n for k, n in counts.items() if k.startswith("refresh_token:")),
        "ideal_one": ideal,
        "reuse": sum(n for k, n in counts.items() if k.endswith((":reuse", ":invalid_grant"))),
        "requests_ok": sum(r["ok"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "errors": errors,
        "adopted": sum(r["adopted"] for r in reports),
        "load": load_before,
    }


def _policy() -> Any:
    from oauthpw_async import RefreshPolicy

    return RefreshPolicy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 processes x 200 tasks for 3 s, one round (CI)")
    parser.add_argument("--processes", type=int, default=4, help="processes in the fleet (default: 4)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per process (default: 1,000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each run lasts (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    args = parser.parse_args()
    if args.smoke:
        args.processes, args.tasks, args.seconds, args.rounds = 2, 200, 3.0, 1
    ctx = mp.get_context("spawn")
    orders = [["fleet", "independent", "one"], ["independent", "one", "fleet"], ["one", "fleet", "independent"]]
    if args.smoke:
        orders = [["fleet", "independent"]]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-token-bench-") as tmpdir:
        redis = Redis(Path(tmpdir))
        try:
            for r in range(args.rounds):
                for mode in orders[r % len(orders)]:
                    row = run_once(ctx, mode, 1 if mode == "one" else args.processes, redis, args)
                    rows.append(row)
                    print(
                        f"round {r + 1}: {mode:<11} {row['processes']} x {args.tasks} tasks, {row['seconds']:5.2f}s: "
                        f"{row['token_requests']:>3} token requests ({row['logins']} password + "
                        f"{row['refreshes']} refresh; ideal for one process {row['ideal_one']:.1f}), "
                        f"{row['reuse']} reuse/invalid_grant, {row['requests_ok']:,} requests ok, "
                        f"{row['failed']} failed {row['errors'] or ''}; adopted {row['adopted']}; "
                        f"load {row['load']:.2f}",
                        flush=True,
                    )
        finally:
            redis.close()
    fleet = [r for r in rows if r["mode"] == "fleet"]
    misses = [
        r
        for r in fleet
        if r["token_requests"] > r["ideal_one"] + 1 or r["reuse"] or r["failed"] or not r["requests_ok"]
    ]
    print(f"\n{args.processes} processes x {args.tasks} tasks, {LIFETIME:.0f}-second tokens, strict rotation with "
          f"reuse detection, {args.seconds:.0f} s per run, {os.cpu_count()} cores")  # fmt: skip
    for mode in ("fleet", "independent", "one"):
        picked = [r["token_requests"] for r in rows if r["mode"] == mode]
        if picked:
            print(f"{mode:<11}: token requests per run {picked}, median {statistics.median(picked)}")
    indep = [r["token_requests"] for r in rows if r["mode"] == "independent"]
    if fleet and indep:
        ratio = statistics.median(indep) / statistics.median(r["token_requests"] for r in fleet)
        print(f"independent providers / fleet: {ratio:.2f}x the token requests")
    verdict = "ok" if not misses else f"MISSED in {len(misses)} of {len(fleet)} runs"
    print(f"bound (fleet <= ideal for one process + 1, 0 reuse, 0 failed requests): {verdict}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
