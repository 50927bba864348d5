"""Crawl benchmarks: the engine against a plain aiohttp loop, and peak memory against record count.

The server runs in its own process, so the crawl under test has a core to itself. Every crawl
runs in a fresh client process: engine and plain loop alternate against the same server (engine
then plain, plain then engine, ...), each round gives one ratio, and the figure is the median
of the rounds with its spread. Each client process warms up (one page per partition) before
its timed crawl, and the timed part of both sides includes opening and closing their session.

Both sides do the same work: read every page, fetch every record's detail, merge the two
(``{**record, "detail": detail}``) and hand each merged record, in page order, to the same
consumer, which counts it and notes its id. That consumer is also the completeness check:
every record delivered once, each with its own detail.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from spread import first_line, load_tuple, pair_orders, summary

PROJECTS = ("p0", "p1", "p2", "p3")
PAGE = 100
#: Upper bound, in seconds, for any one child process (a server start, a crawl, a memory run).
CHILD_TIMEOUT = 900


# --- the server process ------------------------------------------------------------------------------


async def _serve(per_project: int, page_size: int) -> None:
    from bench_api import BenchAPI
    from oauthpw_async.testing import AuthServerState, LocalServer

    api = BenchAPI(projects=PROJECTS, per_project=per_project, max_page_size=page_size)
    async with LocalServer(AuthServerState(token_lifetime=3600), api=api) as server:
        a = server.auth
        conf = {
            "access_token_url": server.token_url,
            "client_id": a.client_id,
            "client_secret": a.client_secret,
            "username": a.username,
            "password": a.password,
        }
        print(json.dumps({"base_url": server.base_url, "conf": conf}), flush=True)
        await asyncio.Event().wait()


class Server:
    """The local server in a child process (stopped by :meth:`close`)."""

    def __init__(self, per_project: int, page_size: int) -> None:
        cmd = [sys.executable, __file__, "--serve", str(per_project), str(page_size)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        info = json.loads(first_line(self.proc))
        self.base_url: str = info["base_url"]
        self.conf: dict[str, Any] = info["conf"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --- the two sides -----------------------------------------------------------------------------------


class BenchItems(Crawler):
    path = "/api/offset/items"
    records_path = "items"
    total_path = "total"
    pagination = Offset(total_path="total", page_size=PAGE)

    def partitions(self) -> Iterable[Partition]:
        return [Partition(p, {"project": p}) for p in PROJECTS]


class BenchItemsWithDetail(BenchItems):
    def detail(self, record: Any) -> str:
        return f"/api/items/{record['id']}"


class Consumer:
    """Where both sides deliver each merged record: counts it, notes its id, checks its detail."""

    def __init__(self) -> None:
        self.count = 0
        self.ids: set[int] = set()
        self.bad_detail = 0

    async def __call__(self, record: Any) -> None:
        self.count += 1
        rid = record["id"]
        self.ids.add(rid)
        if record["detail"]["id"] != rid:
            self.bad_detail += 1


async def run_engine(base_url: str, tokens: TokenProvider, concurrency: int, max_pages: int) -> tuple[Consumer, float]:
    """The crawl engine (``Crawler.crawl``), its own session, a token from the provider per request."""
    crawler_cls = type("Items", (BenchItemsWithDetail,), {"base_url": base_url, "max_pages": max_pages})
    consumer = Consumer()
    t0 = time.perf_counter()
    await crawler_cls().crawl(tokens, CallableSink(consumer), concurrency=concurrency)
    return consumer, time.perf_counter() - t0


async def run_plain(base_url: str, authorization: str, concurrency: int, max_pages: int) -> tuple[Consumer, float]:
    """The same requests hand-written with a static token: the ceiling."""
    consumer = Consumer()
    headers = {"Authorization": authorization, "Accept": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    list_url = f"{base_url}/api/offset/items"
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def get_json(url: str, params: dict[str, str] | None = None) -> Any:
            async with sem, session.get(url, params=params, headers=headers) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status} from {url}")
                return orjson.loads(body)

        async def with_detail(record: dict[str, Any]) -> dict[str, Any]:
            return {**record, "detail": await get_json(f"{base_url}/api/items/{record['id']}")}

        async def partition(p: str) -> None:
            offset = 0
            for _ in range(max_pages):
                page = await get_json(list_url, {"project": p, "offset": str(offset), "limit": str(PAGE)})
                items = page["items"]
                for record in await asyncio.gather(*(with_detail(i) for i in items)):
                    await consumer(record)
                offset += len(items) or PAGE
                if offset >= page["total"]:
                    return

        await asyncio.gather(*(partition(p) for p in PROJECTS))
    return consumer, time.perf_counter() - t0


async def _client_main(side: str, base_url: str, conf: dict[str, Any], concurrency: int) -> dict[str, Any]:
    async with TokenProvider(load_config(conf)) as tokens:
        authorization = (await tokens.get()).authorization
        for max_pages in (1, 1_000_000):  # a one-page-per-partition warm-up, then the timed crawl
            before = resource.getrusage(resource.RUSAGE_SELF)
            if side == "engine":
                consumer, seconds = await run_engine(base_url, tokens, concurrency, max_pages)
            else:
                consumer, seconds = await run_plain(base_url, authorization, concurrency, max_pages)
            after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {
        "side": side,
        "records": consumer.count,
        "distinct": len(consumer.ids),
        "bad_detail": consumer.bad_detail,
        "seconds": seconds,
        "rate": consumer.count / seconds,
        "cpu_us_per_record": cpu / max(consumer.count, 1) * 1e6,
    }


def client(server: Server, side: str, concurrency: int) -> dict[str, Any]:
    """One timed crawl in a fresh process."""
    cmd = [sys.executable, __file__, "--client", side, server.base_url, json.dumps(server.conf), str(concurrency)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{side} crawl failed: {res.stderr.strip()[-500:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def crawl_ratio(records: int, rounds: int, concurrency: int, bound: float | None) -> dict[str, Any]:
    """Scenario 4: engine vs plain loop, interleaved over ``rounds`` rounds; ``bound`` on the median ratio."""
    server = Server(per_project=records // len(PROJECTS), page_size=PAGE)
    runs: list[dict[str, Any]] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []  # client CPU per record, plain over engine: less sensitive to other load
    try:
        for first, second in pair_orders(rounds, "engine", "plain"):
            pair = {side: client(server, side, concurrency) for side in (first, second)}
            runs += [pair[first], pair[second]]
            ratios.append(pair["engine"]["rate"] / pair["plain"]["rate"])
            cpu_ratios.append(pair["plain"]["cpu_us_per_record"] / pair["engine"]["cpu_us_per_record"])
    finally:
        server.close()
    load = load_tuple()
    ratio = summary(ratios)
    engine = summary([r["rate"] for r in runs if r["side"] == "engine"], 0)
    plain = summary([r["rate"] for r in runs if r["side"] == "plain"], 0)
    cpu = summary(cpu_ratios)

    def complete(side: str) -> bool:
        return all(r["records"] == r["distinct"] == records and r["bad_detail"] == 0 for r in runs if r["side"] == side)

    checks: dict[str, dict[str, Any]] = {
        f"crawl: every record delivered once with its detail, all {rounds} engine runs": {"ok": complete("engine")},
        f"crawl: plain loop complete too, all {rounds} runs": {"ok": complete("plain")},
    }
    if bound is not None:
        checks[f"crawl: median engine/plain ratio >= {bound}"] = {
            "ok": ratio["median"] >= bound,
            "timing": True,
            "figure": ratio["median"],
            "load": load,
        }
    return {
        "scenario": "4 crawl vs plain loop",
        "tasks": concurrency,
        "records": records,
        "rounds": rounds,
        "engine_rec_per_s": round(engine["median"]),
        "plain_rec_per_s": round(plain["median"]),
        "ratio_median": ratio["median"],
        "ratio_iqr": f"{ratio['q1']:.2f}-{ratio['q3']:.2f}",
        "ratio_min_max": f"{ratio['min']:.2f}-{ratio['max']:.2f}",
        "cpu_ratio_median": cpu["median"],
        "cpu_ratio_min_max": f"{cpu['min']:.2f}-{cpu['max']:.2f}",
        "load_avg": " ".join(f"{x:.2f}" for x in load),
        "checks": checks,
        "data": {
            "ratio": ratio,
            "cpu_ratio": cpu,
            "cpu_ratios": [round(x, 3) for x in cpu_ratios],
            "ratios": [round(x, 3) for x in ratios],
            "engine_rec_per_s": engine,
            "plain_rec_per_s": plain,
            "runs": runs,
        },
    }


# --- peak memory -------------------------------------------------------------------------------------


class MemoryItems(BenchItems):
    pagination = Offset(total_path="total", page_size=1000)


def memory_child(records: int, out: str) -> int:
    """Peak RSS (KiB) of a crawl of ``records`` records to JSON Lines, run in a fresh process."""
    cmd = [sys.executable, __file__, "--memory", str(records), out]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=True)
    return int(result.stdout.strip().splitlines()[-1])


async def _memory_main(records: int, out: str) -> None:
    server = Server(per_project=records // len(PROJECTS), page_size=1000)
    try:
        crawler = type("Items", (MemoryItems,), {"base_url": server.base_url})()
        sink = JsonLinesSink(out)
        async with TokenProvider(load_config(server.conf)) as tokens:
            stats = await crawler.crawl(tokens, sink, concurrency=16)
        sink.close()
        assert stats.records == records, stats.records
    finally:
        server.close()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def memory_growth(small: int, large: int) -> dict[str, Any]:
    """Scenario 5: peak RSS of a ``large``-record crawl against a ``small`` one."""
    tmp = Path(__file__).parent / "results"
    tmp.mkdir(exist_ok=True)
    peaks = []
    for n in (small, large):
        out = tmp / f"memory-{n}.jsonl"
        out.unlink(missing_ok=True)
        try:
            peaks.append(memory_child(n, str(out)))
        finally:
            out.unlink(missing_ok=True)
    growth = peaks[1] / peaks[0]
    return {
        "scenario": "5 peak memory",
        "records": f"{small:,} vs {large:,}",
        "peak_rss_mib": f"{peaks[0] / 1024:.0f} vs {peaks[1] / 1024:.0f}",
        "growth": round(growth, 2),
        "checks": {"memory: peak RSS growth <= 1.25x": {"ok": growth <= 1.25, "figure": round(growth, 2)}},
    }


def crawl_row(smoke: bool, rounds: int | None = None) -> dict[str, Any]:
    """Scenario 4; in ``smoke`` one small round, checked for completeness only."""
    if smoke:
        return crawl_ratio(records=4_000, rounds=rounds or 1, concurrency=256, bound=None)
    return crawl_ratio(records=20_000, rounds=rounds or 5, concurrency=256, bound=0.95)


def memory_row() -> dict[str, Any]:
    """Scenario 5 (full run only: a memory bound is not an invariant)."""
    return memory_growth(100_000, 1_000_000)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2]), int(sys.argv[3])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--memory":
        asyncio.run(_memory_main(int(sys.argv[2]), sys.argv[3]))
    elif len(sys.argv) == 6 and sys.argv[1] == "--client":
        logging.basicConfig(level=logging.ERROR)  # the warm-up's page-budget warning is expected
        result = asyncio.run(_client_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])))
        print(json.dumps(result))
    else:
        print(json.dumps(crawl_row("--smoke" in sys.argv), indent=2))
