"""A search for a stale record in a fleet's incremental rounds: random changes, a worker stopped mid-round.

Two workers (in one process, real Redis, real HTTP) run rounds over four changing ServiceNow-style
sources: random updates, creations and deletions between the rounds and between pages (deletions
shift offsets), and in some rounds one worker stops at a random request, giving its partitions
back mid-walk (they are resumed from their saved position and run by the other). After a last
round with nothing changing, the replica built from every output equals every source.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import ListSink
from oauthpw_async.fleet import FleetCrawl
from oauthpw_async.testing import AuthServerState, LocalServer

from .changing import SOURCES, ChangingSources, Sources
from .helpers import coordinator
from .redis_server import RedisServer

ids = st.lists(st.integers(0, 120), max_size=6)
change = st.fixed_dictionaries(
    {"update": ids, "create": st.integers(0, 3), "delete": st.lists(st.integers(0, 120), max_size=3)}
)
during = st.tuples(st.sampled_from(SOURCES), st.integers(0, 6), change)
stop = st.tuples(st.sampled_from(SOURCES), st.integers(0, 4))


def round_of(stops: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "before": st.dictionaries(st.sampled_from(SOURCES), change, max_size=4),
            "during": st.lists(during, max_size=4),
            "stop": stops,
        }
    )


#: The first round (full: 3 pages or more per source) always stops a worker on its first or second page.
rounds = st.tuples(
    round_of(st.tuples(st.sampled_from(SOURCES), st.integers(0, 1))), st.lists(round_of(st.none() | stop), max_size=2)
).map(lambda t: [t[0], *t[1]])


def apply(api: Any, c: dict[str, Any]) -> None:
    api.update(c["update"])
    api.create(c["create"])
    api.delete(c["delete"])


async def check(url: str, records: int, plan: list[dict[str, Any]]) -> None:
    sources = Sources(records)
    namespace = f"p{secrets.token_hex(4)}"
    outputs: list[list[Any]] = []
    stops: list[anyio.CancelScope] = []
    async with (
        LocalServer(AuthServerState(token_lifetime=3600), api=sources) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(url, namespace) as fleet,
    ):
        crawler = ChangingSources(base_url=server.base_url)
        quiet: dict[str, Any] = {"before": {}, "during": [], "stop": None}
        for number, round_ in enumerate([*plan, quiet]):
            sources.time += 120
            for name, c in round_["before"].items():
                apply(sources.apis[name], c)
            for name, at, c in round_["during"]:  # between pages: before answering that request of the source
                api = sources.apis[name]
                api.at(sum(api.counts.values()) + at, update=c["update"], create=c["create"], delete=c["delete"])
            stopping = anyio.CancelScope()
            if round_["stop"] is not None:
                name, at = round_["stop"]
                api = sources.apis[name]
                api.on_kill = stopping.cancel
                api.at(sum(api.counts.values()) + at, kill=True)
                stops.append(stopping)
            sinks = [ListSink(), ListSink()]
            round_name = f"round-{number}"

            async def work(
                i: int, sinks: list[ListSink] = sinks, name: str = round_name, stop: anyio.CancelScope = stopping
            ) -> None:
                worker = FleetCrawl(fleet, "changes", consumer=f"w{i}", partitions_at_once=2, round_name=name)
                with stop if i == 0 else anyio.CancelScope():
                    await worker.run(crawler, tokens, sinks[i])

            with anyio.fail_after(120):  # only a hang hits this
                async with anyio.create_task_group() as tg:
                    for i in range(2):
                        tg.start_soon(work, i)
            for api in sources.apis.values():
                api.clear_schedule()
                api.on_kill = None
            outputs += [sink.records for sink in sinks]
        status = await FleetCrawl(fleet, "changes").status()
        assert status.complete and status.round == len(plan) + 1
    assert stops[0].cancel_called  # the first round's stop happened
    assert sources.differences(outputs) == {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.integers(50, 100), plan=rounds)
def test_no_record_is_stale_after_a_quiet_round_whatever_changed_and_whoever_stopped(
    redis_server: RedisServer, records: int, plan: list[dict[str, Any]]
) -> None:
    anyio.run(check, redis_server.url, records, plan)
