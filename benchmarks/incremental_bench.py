"""Incremental sync bound: after a full run, 1% of the source changes; the second run makes at most 2%
of the first run's API requests, and the two runs' outputs together equal the source's final state.

For each style (ServiceNow offset + time filter, Zendesk export cursor + time filter with deletions,
Graph delta token with ``@removed``) a fresh source runs in a child process (so the crawl under test
has a core to itself); changes go through its HTTP control API. The check replays both runs' records
in order (later wins) and compares every id's update time, and deletion, with the source. Two more
scenarios on the ServiceNow style: ``servicenow+deletions`` deletes records run 1 already read (and
creates as many) every 10% of its pages, which shifts the rows behind them; ``servicenow+kill`` stops
run 1 halfway (as a kill would: the state file keeps its last page), deletes and updates records it
read while it is stopped, then resumes it.

    python benchmarks/incremental_bench.py            # 1,000,000 records in pages of 1000, 1% changed
    python benchmarks/incremental_bench.py --smoke    # 20,000 records in pages of 100, same checks

Exits 1 when a bound or the final-state check is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import resource
import sys
import time
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import orjson

from oauthpw_async import PasswordGrantConfig, TokenProvider
from oauthpw_async.crawler import Crawler, Partition
from oauthpw_async.crawler.incremental import ExportCursor

SPACING = 30  # seconds between base update times: a million records updated over about a year


def _serve(records: int, page_size: int, q: Any) -> None:
    from oauthpw_async.testing import AuthServerState, LocalServer
    from oauthpw_async.testing.changes import ChangesAPI

    async def main() -> None:
        api = ChangesAPI(records=records, spacing=SPACING, max_page_size=page_size)
        async with LocalServer(AuthServerState(token_lifetime=3600), api=api) as server:
            a = server.auth
            conf = {
                "access_token_url": server.token_url,
                "client_id": a.client_id,
                "client_secret": a.client_secret,
                "username": a.username,
                "password": a.password,
            }
            q.put((server.base_url, conf))
            await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    """A ChangesAPI source in a child process."""

    def __init__(self, records: int, page_size: int) -> None:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self.proc = ctx.Process(target=_serve, args=(records, page_size, q), daemon=True)
        self.proc.start()
        self.base_url, self.conf = q.get(timeout=60)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


class ServiceNow(Crawler):
    path = "/api/now/table/incident"
    params = {"sysparm_query": "ORDERBYsys_updated_on"}
    records_path = "result"
    pagination = "link_header"
    primary_key = "sys_id"
    updated_field = "sys_updated_on"
    ordered_by_updated = True

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on"}


class Zendesk(Crawler):
    path = "/api/v2/incremental/tickets/cursor.json"
    params = {"start_time": "0"}
    records_path = "tickets"
    pagination = ExportCursor()
    primary_key = "id"
    updated_field = "updated_at"

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"start_time": str(int(since.timestamp()))}

    def is_deleted(self, record: Any) -> bool:
        return bool(record["status"] == "deleted")


class Graph(Crawler):
    path = "/v1.0/items/delta"
    records_path = "value"
    pagination = "odata"
    primary_key = "id"
    updated_field = "lastModifiedDateTime"
    delta_path = ("@odata.deltaLink",)
    deleted_path = ("@removed",)


#: style -> (crawler, page size parameter, whether the source shows deletions)
STYLES: dict[str, tuple[type[Crawler], str, bool]] = {
    "servicenow": (ServiceNow, "sysparm_limit", False),
    "zendesk": (Zendesk, "per_page", True),
    "graph": (Graph, "$top", True),
    "servicenow+deletions": (ServiceNow, "sysparm_limit", False),
    "servicenow+kill": (ServiceNow, "sysparm_limit", False),
}


class FoldingSink:
    """Keeps only what a sink would hold per id: the last update time seen, or "deleted"."""

    DELETED = -2

    def __init__(self) -> None:
        self.held: dict[int, int] = {}
        self.written = 0

    async def write(self, records: Any, partition: str) -> None:
        from oauthpw_async.testing.changes import describe

        held = self.held
        for record in records:
            record_id, updated, deleted = describe(record)
            held[record_id] = self.DELETED if deleted else (updated if updated is not None else -1)
        self.written += len(records)

    async def flush(self) -> None:
        return None


async def _control(
    session: aiohttp.ClientSession, server: Server, token: str, method: str, path: str, **kw: Any
) -> Any:
    async with session.request(
        method, server.base_url + path, headers={"Authorization": f"Bearer {token}"}, **kw
    ) as resp:
        resp.raise_for_status()
        return orjson.loads(await resp.read())


def _differences(held: dict[int, int], source: dict[str, Any], deletions: bool) -> list[str]:
    base, over = source["base"], {row[0]: row for row in source["overrides"]}
    problems = []
    for i in range(source["next_id"]):
        row = over.get(i)
        updated = row[1] if row else base["epoch"] + (i // base["ties"]) * base["spacing"]
        deleted = bool(row and row[3])
        got = held.get(i)
        if deleted:
            if deletions and got is not None and got != FoldingSink.DELETED:
                problems.append(f"{i}: deleted at the source, live in the output")
        elif got != updated:
            problems.append(f"{i}: output has {got}, source has {updated}")
        if len(problems) >= 10:
            break
    return problems


async def bench_style(style: str, records: int, fraction: float, page_size: int, state_dir: str) -> dict[str, Any]:
    cls, size_param, deletions = STYLES[style]
    server = Server(records, page_size)
    try:
        config = PasswordGrantConfig(**server.conf)
        sink = FoldingSink()
        state = f"{state_dir}/{style}.state.json"

        class Bench(cls):  # type: ignore[valid-type, misc]
            params = {**cls.params, size_param: str(page_size)}

        crawler = Bench(base_url=server.base_url)
        async with TokenProvider(config) as tokens, aiohttp.ClientSession() as session:
            token = (await tokens.get()).access_token.reveal()
            pages = -(-records // page_size)
            rng = random.Random(7)
            during: list[asyncio.Task[Any]] = []
            shaken = {"deleted": 0, "updated": 0}

            async def shake(delete: int, update: int = 0) -> None:
                read = rng.sample(sorted(sink.held), min(len(sink.held), delete + update))
                changes = {"delete": read[:delete], "update": read[delete:], "create": delete}
                done = await _control(session, server, token, "POST", "/control/changes", data=orjson.dumps(changes))
                shaken["deleted"] += len(done["deleted"])
                shaken["updated"] += len(done["updated"])

            scope = anyio.CancelScope()
            seen: list[Any] = []

            def progress(stats: Any) -> None:
                seen[:] = [stats]
                if style == "servicenow+deletions" and stats.pages and stats.pages % max(1, pages // 10) == 0:
                    during.append(asyncio.ensure_future(shake(max(1, records // 10_000))))
                if style == "servicenow+kill" and stats.pages >= pages // 2:
                    scope.cancel()

            started = time.perf_counter()
            first: Any = None
            with scope:
                first = await crawler.crawl(tokens, sink, state=state, session=session, on_progress=progress)
            await asyncio.gather(*during)
            if first is None:  # stopped halfway: records it read change, then it resumes
                before_stop = seen[0].requests
                await shake(max(1, records // 1000), max(1, records // 1000))
                first = await crawler.crawl(tokens, sink, state=state, session=session)
                first.requests += before_stop
            t1 = time.perf_counter() - started
            changed = max(1, int(records * fraction))
            rng = random.Random(11)
            picked = rng.sample(range(records), changed - changed // 10)
            cut = len(picked) * 8 // 9 if deletions else len(picked)
            done = await _control(
                session,
                server,
                token,
                "POST",
                "/control/changes",
                data=orjson.dumps({"update": picked[:cut], "delete": picked[cut:], "create": changed // 10}),
            )
            started = time.perf_counter()
            second = await crawler.crawl(tokens, sink, state=state, session=session)
            t2 = time.perf_counter() - started
            source = await _control(session, server, token, "GET", "/control/state")
    finally:
        server.close()
    sync = next(iter(second.partitions.values())).sync
    assert sync is not None
    problems = _differences(sink.held, source, deletions)
    ratio = second.requests / first.requests
    return {
        "style": style,
        "during_run1": shaken,
        "records": records,
        "changed": len(done["updated"]) + len(done["created"]) + len(done["deleted"]),
        "deleted": len(done["deleted"]),
        "run1_requests": first.requests,
        "run1_seconds": round(t1, 2),
        "run2_requests": second.requests,
        "run2_seconds": round(t2, 2),
        "run2_written": second.records,
        "run2_redelivered_dropped": sync.redelivered,
        "run2_tombstones": sync.tombstones,
        "request_ratio": round(ratio, 5),
        "bound_ok": ratio <= 0.02,
        "final_state_ok": not problems,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="20,000 records instead of 1,000,000")
    parser.add_argument("--records", type=int, help="source size (overrides --smoke)")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction changed between the runs (0.01)")
    parser.add_argument("--page-size", type=int, help="records per page (1000; 100 with --smoke)")
    parser.add_argument("--styles", default=",".join(STYLES), help=f"comma-separated, of {', '.join(STYLES)}")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    records = args.records or (20_000 if args.smoke else 1_000_000)
    page_size = args.page_size or (100 if args.smoke else 1000)
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as state_dir:
        for style in args.styles.split(","):
            result = asyncio.run(bench_style(style, records, args.changed, page_size, state_dir))
            results.append(result)
            print(
                f"{style:<20} {records:>9,} records, pages of {page_size}, "
                + (
                    f"during run 1 {result['during_run1']['deleted']:,} deleted and "
                    f"{result['during_run1']['updated']:,} updated, "
                    if any(result["during_run1"].values())
                    else ""
                )
                + f"then "
                f"{result['changed']:>6,} changed ({result['deleted']:,} deleted): "
                f"run 1 {result['run1_requests']:>6,} requests {result['run1_seconds']:>6.1f}s | "
                f"run 2 {result['run2_requests']:>4,} requests {result['run2_seconds']:>5.1f}s, "
                f"{result['run2_written']:,} written, {result['run2_redelivered_dropped']:,} re-deliveries dropped | "
                f"ratio {result['request_ratio']:.2%} (bound 2%: {'ok' if result['bound_ok'] else 'MISSED'}) | "
                f"final state {'ok' if result['final_state_ok'] else 'DIFFERS ' + '; '.join(result['problems'][:3])}",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of the crawling process: {peak:,.0f} MB")
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps({"results": results, "peak_mb": peak}, option=orjson.OPT_INDENT_2))
    return 0 if all(r["bound_ok"] and r["final_state_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
