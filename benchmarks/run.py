"""Refresh-contention benchmarks for TokenProvider (``nox -s bench``; ``--smoke`` for CI).

Prints a table, saves ``benchmarks/results/bench.json``, and exits 1 when a bound is missed:
token requests above the ideal + 1, any token served expired, any 401 or invalid_grant over
HTTP, more than one refresh for a 401 storm, or (crawl) a rate or memory bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from oauthpw_async import PasswordGrantConfig, RefreshPolicy, TokenProvider
from oauthpw_async.testing import AuthServerState, InMemoryEndpoint, LocalServer, Quirks
from oauthpw_async.testing.api import DemoAPI

RESULTS = Path(__file__).parent / "results"


def ideal_requests(duration: float, lifetime: float, policy: RefreshPolicy) -> float:
    """One login, then one refresh per fresh interval (lifetime - skew - mean margin)."""
    mean_margin = min(policy.max_margin, policy.margin_fraction * lifetime) * (1 + policy.jitter / 2)
    interval = lifetime - policy.skew(lifetime) - mean_margin
    return 1 + duration / interval


async def fast_path_ratio(tokens: TokenProvider, n: int = 200_000) -> tuple[float, float]:
    """Per-call cost of a FRESH ``get()`` relative to awaiting a trivial coroutine, same run."""
    value = object()

    async def trivial() -> object:
        return value

    best_get = best_triv = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            await trivial()
        t1 = time.perf_counter()
        for _ in range(n):
            await tokens.get()
        t2 = time.perf_counter()
        best_triv, best_get = min(best_triv, t1 - t0), min(best_get, t2 - t1)
    return best_get / best_triv, best_get / n * 1e9


async def contention(tasks: int, duration: float, lifetime: float = 1.0, latency: float = 0.05) -> dict[str, Any]:
    """Scenario 1: in-process endpoint, many tasks calling get() continuously."""
    state = AuthServerState(token_lifetime=lifetime, latency=latency)
    config = PasswordGrantConfig(
        access_token_url="http://127.0.0.1/token",
        client_id=state.client_id,
        client_secret=state.client_secret,
        username=state.username,
        password=state.password,
    )
    policy = RefreshPolicy()
    calls = expired = 0
    async with TokenProvider(config, endpoint=InMemoryEndpoint(state), refresh=policy) as tokens:
        await tokens.get()
        ratio, ns = await fast_path_ratio(tokens)
        state.counts.clear()
        tokens.stats.waits = 0
        start = time.monotonic()
        end = start + duration

        async def worker() -> None:
            nonlocal calls, expired
            now = time.monotonic
            while now() < end:
                tok = await tokens.get()
                calls += 1
                if now() >= tok.expires_at:
                    expired += 1
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(tasks)))
        elapsed = time.monotonic() - start
        waits = tokens.stats.waits
    ideal = ideal_requests(elapsed, lifetime, policy) - 1  # the login happened before the window
    return {
        "scenario": "1 contention (in-process)",
        "tasks": tasks,
        "seconds": round(elapsed, 2),
        "token_requests": state.token_requests,
        "ideal": round(ideal, 1),
        "calls": calls,
        "waited": waits,
        "expired_served": expired,
        "fast_path_ns": round(ns, 1),
        "fast_path_ratio": round(ratio, 2),
        "ok": state.token_requests <= ideal + 1 and expired == 0 and ratio < 4,
    }


async def over_http(tasks: int, duration: float, lifetime: float = 2.0) -> dict[str, Any]:
    """Scenario 2: real HTTP, strictly rotating refresh tokens with reuse detection."""
    api = DemoAPI()
    state = AuthServerState(token_lifetime=lifetime, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    policy = RefreshPolicy()
    ok = unauthorized = 0
    latencies: list[float] = []
    async with LocalServer(state, api=api) as server:
        limit = 100
        connector = aiohttp.TCPConnector(limit=limit)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            TokenProvider(server.config(), refresh=policy) as tokens,
        ):
            slots = asyncio.Semaphore(limit)
            url = f"{server.base_url}/api/ping"
            start = time.monotonic()
            end = start + duration

            async def worker() -> None:
                nonlocal ok, unauthorized
                while time.monotonic() < end:
                    async with slots:  # take the header only once a connection slot is ours
                        t0 = time.perf_counter()
                        tok = await tokens.get()
                        async with session.get(url, headers={"Authorization": tok.authorization}) as resp:
                            await resp.read()
                            if resp.status == 401:
                                unauthorized += 1
                                tokens.invalidate(tok)
                            elif resp.status == 200:
                                ok += 1
                        latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker() for _ in range(tasks)))
            elapsed = time.monotonic() - start
    ideal = ideal_requests(elapsed, lifetime, policy)
    latencies.sort()
    invalid = state.count(outcome="invalid_grant") + state.count(outcome="reuse")
    return {
        "scenario": "2 HTTP, rotating refresh",
        "tasks": tasks,
        "seconds": round(elapsed, 2),
        "token_requests": state.token_requests,
        "ideal": round(ideal, 1),
        "invalid_grant": invalid,
        "http_401": unauthorized,
        "requests_ok": ok,
        "requests_per_s": round(ok / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
        "ok": state.token_requests <= ideal + 1 and invalid == 0 and unauthorized == 0,
    }


async def storm(tasks: int) -> dict[str, Any]:
    """Scenario 3: every access token revoked while many requests are in flight."""
    api = DemoAPI(latency=0.05)
    state = AuthServerState(token_lifetime=3600)
    retried_ok = failed = 0
    async with LocalServer(state, api=api) as server:
        connector = aiohttp.TCPConnector(limit=tasks)
        async with aiohttp.ClientSession(connector=connector) as session, TokenProvider(server.config()) as tokens:
            await tokens.get()
            url = f"{server.base_url}/api/ping"
            before = state.token_requests
            barrier = asyncio.Event()

            async def worker() -> None:
                nonlocal retried_ok, failed
                tok = await tokens.get()
                await barrier.wait()
                async with session.get(url, headers={"Authorization": tok.authorization}) as resp:
                    status = resp.status
                if status == 401:
                    tokens.invalidate(tok)
                    tok = await tokens.get()
                    async with session.get(url, headers={"Authorization": tok.authorization}) as resp:
                        status = resp.status
                if status == 200:
                    retried_ok += 1
                else:
                    failed += 1

            workers = [asyncio.create_task(worker()) for _ in range(tasks)]
            await asyncio.sleep(0.05)
            state.revoke_access_tokens()
            barrier.set()
            await asyncio.gather(*workers)
            refreshes = state.token_requests - before
    return {
        "scenario": "3 401 storm",
        "tasks": tasks,
        "token_requests": refreshes,
        "ideal": 1,
        "http_401": api.counts["ping:401"],
        "requests_ok": retried_ok,
        "failed": failed,
        "ok": refreshes == 1 and failed == 0,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """One column per scenario, one line per figure."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "scenario"]
    width = max(14, *(len(str(r["scenario"])) for r in rows)) + 2
    print(f"{'':<18}" + "".join(f"{r['scenario']:>{width}}" for r in rows))
    for k in keys:
        cells = "".join(f"{'' if row.get(k) is None else row[k]!s:>{width}}" for row in rows)
        print(f"{k:<18}{cells}")


async def main_async(smoke: bool, only: set[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not only or "contention" in only:
        rows.append(await contention(tasks=1000 if smoke else 10_000, duration=2.0 if smoke else 10.0))
    if not only or "http" in only:
        rows.append(await over_http(tasks=200 if smoke else 1000, duration=3.0 if smoke else 10.0))
    if not only or "storm" in only:
        rows.append(await storm(tasks=200 if smoke else 1000))
    if not only or "crawl" in only:
        from crawl_bench import crawl_rows  # type: ignore[import-not-found]

        rows.extend(await crawl_rows(smoke))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run with fewer tasks (CI)")
    parser.add_argument("--only", action="append", default=[], help="contention, http, storm, crawl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.path.insert(0, str(Path(__file__).parent))
    gc.collect()
    t0 = time.monotonic()
    rows = asyncio.run(main_async(args.smoke, set(args.only)))
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("bench-smoke.json" if args.smoke else "bench.json")
    out.write_text(
        json.dumps({"smoke": args.smoke, "seconds": round(time.monotonic() - t0, 1), "rows": rows}, indent=2)
    )
    failed = [r["scenario"] for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed  (saved {out.name}; {time.monotonic() - t0:.0f}s)")
    for name in failed:
        print(f"BOUND MISSED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
