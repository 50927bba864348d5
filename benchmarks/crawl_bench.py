"""Crawl benchmarks: engine vs a plain aiohttp loop, and peak memory against record count.

The server runs in its own process so the crawl under test has a core to itself.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from oauthpw_async import TokenProvider, load_config
from oauthpw_async.crawler import CallableSink, Crawler, JsonLinesSink, Offset, Partition

PROJECTS = ("p0", "p1", "p2", "p3")


def _serve(per_project: int, page_size: int, q: Any) -> None:
    from oauthpw_async.testing import AuthServerState, LocalServer
    from oauthpw_async.testing.api import DemoAPI

    async def main() -> None:
        api = DemoAPI(projects=PROJECTS, per_project=per_project, max_page_size=page_size)
        async with LocalServer(AuthServerState(token_lifetime=3600), api=api) as server:
            q.put((server.base_url, {k: v for k, v in _conf(server).items()}))
            await asyncio.Event().wait()

    asyncio.run(main())


def _conf(server: Any) -> dict[str, Any]:
    a = server.auth
    return {
        "access_token_url": server.token_url,
        "client_id": a.client_id,
        "client_secret": a.client_secret,
        "username": a.username,
        "password": a.password,
    }


class Server:
    """The local server in a child process."""

    def __init__(self, per_project: int, page_size: int) -> None:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self.proc = ctx.Process(target=_serve, args=(per_project, page_size, q), daemon=True)
        self.proc.start()
        self.base_url, self.conf = q.get(timeout=60)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


class BenchItems(Crawler):
    path = "/api/offset/items"
    records_path = "items"
    total_path = "total"
    pagination = Offset(total_path="total", page_size=100)

    def partitions(self) -> Iterable[Partition]:
        return [Partition(p, {"project": p}) for p in PROJECTS]


class BenchItemsWithDetail(BenchItems):
    def detail(self, record: Any) -> str:
        return f"/api/items/{record['id']}"


async def engine_rate(server: Server, concurrency: int) -> tuple[int, float]:
    count = 0

    async def sink(record: Any) -> None:
        nonlocal count
        count += 1

    crawler = BenchItemsWithDetail()
    crawler.base_url = server.base_url  # type: ignore[misc]
    async with TokenProvider(load_config(server.conf)) as tokens:
        await tokens.get()
        t0 = time.perf_counter()
        await crawler.crawl(tokens, CallableSink(sink), concurrency=concurrency)
        return count, time.perf_counter() - t0


async def plain_rate(server: Server, concurrency: int) -> tuple[int, float]:
    """The same requests with a static token, hand-written: the ceiling."""
    async with TokenProvider(load_config(server.conf)) as tokens:
        auth = {"Authorization": (await tokens.get()).authorization}
    count = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def detail(rid: int) -> Any:
            async with sem, session.get(f"{server.base_url}/api/items/{rid}", headers=auth) as r:
                return orjson.loads(await r.read())

        async def partition(p: str) -> None:
            nonlocal count
            offset = 0
            while True:
                async with sem:
                    params = {"project": p, "offset": str(offset), "limit": "100"}
                    async with session.get(f"{server.base_url}/api/offset/items", params=params, headers=auth) as r:
                        page = orjson.loads(await r.read())
                items = page["items"]
                details = await asyncio.gather(*(detail(i["id"]) for i in items))
                count += len(details)
                offset += len(items) or 100
                if offset >= page["total"]:
                    return

        t0 = time.perf_counter()
        await asyncio.gather(*(partition(p) for p in PROJECTS))
        return count, time.perf_counter() - t0


def memory_child(records: int, out: str) -> int:
    """Peak RSS (KiB) of a crawl of ``records`` records to JSON Lines, run in a fresh process."""
    cmd = [sys.executable, __file__, "--memory", str(records), out]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
    return int(result.stdout.strip().splitlines()[-1])


async def _memory_main(records: int, out: str) -> None:
    server = Server(per_project=records // len(PROJECTS), page_size=1000)
    try:
        crawler = BenchItems()
        crawler.base_url = server.base_url  # type: ignore[misc]
        BenchItems.pagination = Offset(total_path="total", page_size=1000)
        sink = JsonLinesSink(out)
        async with TokenProvider(load_config(server.conf)) as tokens:
            stats = await crawler.crawl(tokens, sink, concurrency=16)
        sink.close()
        assert stats.records == records, stats.records
    finally:
        server.close()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def crawl_rows(smoke: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    records = 4_000 if smoke else 100_000
    concurrency = 256
    server = Server(per_project=records // len(PROJECTS), page_size=100)
    try:
        await plain_rate(server, concurrency)  # warm-up: connections, server caches
        n_plain, t_plain = await plain_rate(server, concurrency)
        n_engine, t_engine = await engine_rate(server, concurrency)
    finally:
        server.close()
    ratio = (n_engine / t_engine) / (n_plain / t_plain)
    rows.append(
        {
            "scenario": "4 crawl vs plain loop",
            "tasks": concurrency,
            "records": n_engine,
            "engine_rec_per_s": round(n_engine / t_engine),
            "plain_rec_per_s": round(n_plain / t_plain),
            "ratio": round(ratio, 2),
            "ok": n_engine == n_plain == records and ratio >= 0.8,
        }
    )
    small, large = (20_000, 200_000) if smoke else (100_000, 1_000_000)
    tmp = Path(__file__).parent / "results"
    tmp.mkdir(exist_ok=True)
    peaks = []
    for n in (small, large):
        out = tmp / f"memory-{n}.jsonl"
        out.unlink(missing_ok=True)
        peaks.append(memory_child(n, str(out)))
        out.unlink(missing_ok=True)
    growth = peaks[1] / peaks[0]
    rows.append(
        {
            "scenario": "5 peak memory",
            "records": f"{small:,} vs {large:,}",
            "peak_rss_mib": f"{peaks[0] / 1024:.0f} vs {peaks[1] / 1024:.0f}",
            "growth": round(growth, 2),
            "ok": growth <= 1.25,
        }
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory":
        asyncio.run(_memory_main(int(sys.argv[2]), sys.argv[3]))
    else:
        rows = asyncio.run(crawl_rows("--smoke" in sys.argv))
        print(rows)
