"""Fleet crawl benchmark: records/s of 1, 2 and 4 worker processes sharing one crawl through Redis.

    python benchmarks/fleet_bench.py            # 1,000,000 records, 3 interleaved rounds of 1, 2, 4 workers
    python benchmarks/fleet_bench.py --smoke    # a small dataset: delivery and duplicates only, no timing bound

The API answers every request after 20 ms (``--latency``) with pages of 1,000 records; each worker
is limited to ``--concurrency`` requests in flight (1), so one worker is latency-bound and N workers
should come close to N times its rate. The API server runs in its own process and renders pages
cheaply, so that on a small machine the server is not what limits the fleet. Each row prints the CPU
seconds of the workers, the API server and Redis: on 2 cores their sum over 2 is the shortest
possible run, so with more requests in flight per worker (``--concurrency 2``) or a JSON Lines sink
(``--sink jsonl``) 4 workers are bound by the cores, not by the source's latency. Workers are separate
processes started before the clock starts (imports, Redis, the shared token); the clock runs from
"go" to the last worker's end. Every record is checked to have arrived, in some worker's JSON
Lines output, and none twice (no worker dies here).

Bound (full run): 2 workers >= 1.7x and 4 workers >= 3x the records/s of 1 worker (medians of
the same run). Exit 1 when a bound or the delivery check fails.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

TOKEN_KEY = "YmVuY2htYXJrLWZsZWV0LWtleS0zMi1ieXRlcy0tLS0="  # 32 bytes, URL-safe base64 (benchmark only)


# --- the API server (own process) ---------------------------------------------------------------------


def _serve(partitions: int, per_partition: int, page: int, latency: float, q: Any) -> None:
    from aiohttp import web

    from oauthpw_async.testing import AuthServerState, LocalServer

    total = str(per_partition).encode()

    def install(app: web.Application, auth: AuthServerState) -> None:
        async def items(request: web.Request) -> web.Response:
            await asyncio.sleep(latency)
            if not auth.check_authorization(request.headers.get("Authorization")):
                return web.json_response({"error": "invalid_token"}, status=401)
            q = request.query
            part = int(q["partition"])
            offset, limit = int(q.get("offset", 0)), min(int(q.get("limit", page)), page)
            base = part * per_partition
            rows = b",".join(
                b'{"id":%d,"partition":%d,"title":"Item %d","body":"lorem ipsum dolor sit amet"}'
                % (base + i, part, base + i)
                for i in range(offset, min(offset + limit, per_partition))
            )
            return web.Response(
                body=b'{"total":' + total + b',"items":[' + rows + b"]}", content_type="application/json"
            )

        app.router.add_get("/api/items", items)

    async def main() -> None:
        auth = AuthServerState(token_lifetime=3600)
        async with LocalServer(auth, api=install) as server:
            a = server.auth
            q.put(
                (
                    server.base_url,
                    {
                        "access_token_url": server.token_url,
                        "client_id": a.client_id,
                        "client_secret": a.client_secret,
                        "username": a.username,
                        "password": a.password,
                    },
                )
            )
            await asyncio.Event().wait()

    asyncio.run(main())


# --- one worker (own process) ---------------------------------------------------------------------------


class IdSink:
    """Appends each record's id (8 bytes) to a file: what the delivery check needs, at little CPU.

    The JSON Lines sink (``--sink jsonl``) costs one ``orjson.dumps`` per record plus an fsync per
    page; on a small machine that, not the source's latency, is then what bounds the fleet.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._pending = array.array("q")

    async def write(self, records: Sequence[Any], partition: str) -> None:
        self._pending.extend([r["id"] for r in records])

    async def flush(self) -> None:
        self._pending.tofile(self._file)
        self._file.flush()
        self._pending = array.array("q")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> IdSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ids(path: str, jsonl: bool) -> Iterable[int]:
    """The ids a worker's output holds."""
    if jsonl:
        with open(path, "rb") as f:
            return [orjson.loads(line)["id"] for line in f]
    ids = array.array("q")
    with open(path, "rb") as f:
        ids.frombytes(f.read())
    return ids


def _crawler(partitions: int, page: int) -> Any:
    from oauthpw_async.crawler import Crawler, Offset, Partition

    class BenchItems(Crawler):
        path = "/api/items"
        records_path = "items"
        total_path = "total"
        pagination = Offset(total_path="total", page_size=page)

        def partitions(self) -> Iterable[Partition]:
            return [Partition(f"p{i:03d}", {"partition": str(i)}) for i in range(partitions)]

    return BenchItems


def _worker(
    index: int,
    redis_url: str,
    namespace: str,
    crawl: str,
    base_url: str,
    conf: dict[str, Any],
    out: str,
    partitions: int,
    page: int,
    concurrency: int,
    jsonl: bool,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    from oauthpw_async import TokenProvider, load_config
    from oauthpw_async.crawler import JsonLinesSink
    from oauthpw_async.fleet import Coordinator, FleetCrawl

    async def main() -> None:
        config = load_config(conf)
        fleet = Coordinator.for_config(config, redis_url, token_key=TOKEN_KEY, namespace=namespace)
        crawler = _crawler(partitions, page)(base_url=base_url)
        with JsonLinesSink(out) if jsonl else IdSink(out) as sink:
            async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
                await tokens.get()
                await fleet.ping()
                ready.put(index)
                await asyncio.get_running_loop().run_in_executor(None, go.wait)
                cpu = time.process_time()
                worker = FleetCrawl(fleet, crawl, partitions_at_once=concurrency, idle_timeout=30.0)
                stats = await worker.run(crawler, tokens, sink, concurrency=concurrency)
                end = time.monotonic()
                cpu = time.process_time() - cpu
        finished = len(worker.checkpoints.finished)
        results.put((index, stats.records, stats.pages, end, stats.complete, finished, cpu))

    asyncio.run(main())


# --- Redis --------------------------------------------------------------------------------------------------


class Redis:
    """A redis-server without persistence on a free port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# --- one measured run -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fleet(
    ctx: Any,
    workers: int,
    crawl: str,
    redis: Redis,
    server: tuple[str, dict[str, Any], int],
    tmp: Path,
    args: Any,
) -> dict[str, Any]:
    """Start ``workers`` processes, wait until all are ready, say go, time until the last one ends."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    outs = [str(tmp / f"{crawl}-w{i}.jsonl") for i in range(workers)]
    common = (redis.url, "bench", crawl, server[0], server[1])
    sizes = (args.partitions, args.page, args.concurrency, args.sink == "jsonl", ready, go, results)
    procs = [ctx.Process(target=_worker, args=(i, *common, outs[i], *sizes)) for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    load_before = os.getloadavg()[0]
    server_cpu, redis_cpu = cpu_seconds(server[2]), cpu_seconds(redis.proc.pid)
    start = time.monotonic()
    go.set()
    reports = [results.get(timeout=1800) for _ in procs]
    elapsed = max(r[3] for r in reports) - start
    server_cpu, redis_cpu = cpu_seconds(server[2]) - server_cpu, cpu_seconds(redis.proc.pid) - redis_cpu
    for p in procs:
        p.join(60)
    records = sum(r[1] for r in reports)
    seen = bytearray(args.partitions * args.per_partition)
    twice = 0
    for out in outs:
        for rid in read_ids(out, args.sink == "jsonl"):
            twice += seen[rid]
            seen[rid] = 1
        os.unlink(out)
    return {
        "workers": workers,
        "records": records,
        "seconds": elapsed,
        "rec_per_s": records / elapsed,
        "delivered": sum(seen),
        "written_twice": twice,
        "complete": all(r[4] for r in reports),
        "partitions_per_worker": sorted(r[5] for r in reports),
        "load_before": load_before,
        "cpu_workers": sum(r[6] for r in reports),
        "cpu_server": server_cpu,
        "cpu_redis": redis_cpu,
        "load_after": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small dataset, 2 workers once, no timing bound")
    parser.add_argument("--partitions", type=int, default=100, help="partitions (default: 100)")
    parser.add_argument("--per-partition", type=int, default=10_000, help="records per partition (default: 10,000)")
    parser.add_argument("--page", type=int, default=1000, help="records per page (default: 1,000)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per API answer (default: 0.02)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight per worker (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of 1, 2, 4 workers (default: 3)")
    parser.add_argument(
        "--sink",
        choices=("ids", "jsonl"),
        default="ids",
        help="what each worker writes: record ids (default), or JSON Lines with an fsync per page",
    )
    args = parser.parse_args()
    if args.smoke:
        args.partitions, args.per_partition, args.page, args.rounds = 12, 500, 100, 1
    expected = args.partitions * args.per_partition
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    server_proc = ctx.Process(
        target=_serve, args=(args.partitions, args.per_partition, args.page, args.latency, q), daemon=True
    )
    server_proc.start()
    server = (*q.get(timeout=60), server_proc.pid)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        redis = Redis(tmp)
        rows: list[dict[str, Any]] = []
        try:
            order = [[2]] if args.smoke else [[1, 2, 4], [2, 4, 1], [4, 1, 2], [1, 4, 2], [2, 1, 4], [4, 2, 1]]
            for r in range(args.rounds):
                for n in order[r % len(order)]:
                    row = run_fleet(ctx, n, f"round{r}-{n}", redis, server, tmp, args)
                    rows.append(row)
                    print(
                        f"round {r + 1}: {n} worker(s) {row['records']:>9,} records in {row['seconds']:6.2f}s = "
                        f"{row['rec_per_s']:>9,.0f} records/s; delivered {row['delivered']:,}/{expected:,}, "
                        f"{row['written_twice']} twice; partitions per worker {row['partitions_per_worker']}; "
                        f"CPU s: workers {row['cpu_workers']:.1f}, API server {row['cpu_server']:.1f}, "
                        f"Redis {row['cpu_redis']:.1f}; load {row['load_before']:.2f} -> {row['load_after']:.2f}",
                        flush=True,
                    )
        finally:
            redis.close()
            server_proc.terminate()
            server_proc.join(10)
    ok = all(r["delivered"] == expected and r["written_twice"] == 0 and r["complete"] for r in rows)
    print(f"\n{expected:,} records, pages of {args.page}, {args.latency * 1000:.0f} ms per request, "
          f"{args.concurrency} requests in flight per worker, sink {args.sink}, {os.cpu_count()} cores; "
          f"delivery {'ok' if ok else 'FAILED'}")  # fmt: skip
    if args.smoke:
        return 0 if ok else 1
    medians = {n: statistics.median(r["rec_per_s"] for r in rows if r["workers"] == n) for n in (1, 2, 4)}
    bounds = {2: 1.7, 4: 3.0}
    for n, rate in medians.items():
        speedup = rate / medians[1]
        bound = bounds.get(n)
        verdict = "" if bound is None else f"  (bound >= {bound}x: {'ok' if speedup >= bound else 'MISSED'})"
        print(f"{n} worker(s): median {rate:>9,.0f} records/s = {speedup:.2f}x{verdict}")
    met = all(medians[n] / medians[1] >= b for n, b in bounds.items())
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok and met else 1


if __name__ == "__main__":
    sys.exit(main())
