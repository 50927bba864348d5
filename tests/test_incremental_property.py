"""Incremental sync, searched for counter-examples: after every run, no record is stale that changed before it.

Hypothesis draws a source (size, equal update times, page size), then rounds of changes at the
source: updates, creations and deletions between runs and between the pages of a run (records
that move, rows that vanish under an offset), kills in the middle of a run with more changes
while it is stopped, and saved positions that have expired by the resume. Over real HTTP against
the mutable local API, with the server's clock frozen and moved by the test, in four paging
styles: offsets with a total (Jira), offsets behind next links (ServiceNow ``Link``), keyset next
links, and a delta token (Graph, which shows deletions).

The property is the README's promise: a record changed before run N started is, once run N has
completed, held by the replica built from every run's output in its current version (deleted,
when the style shows deletions). The last run of each example is a quiet one, after which the
replica equals the source.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import Crawler, ListSink, Offset, Partition
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI, replay

START = 1_715_000_000
LOOKBACK = timedelta(seconds=2)  # short, so that cursors and filters meet at record boundaries


def _expired(status: int, data: Any) -> bool:
    return status == 400 and isinstance(data, list) and data[0].get("errorCode") == "INVALID_QUERY_LOCATOR"


class _Base(Crawler):
    lookback = LOOKBACK
    primary_key = "id"

    def position_expired(self, status: int, data: Any) -> bool:
        return _expired(status, data)


class JiraOffsets(_Base):
    path = "/rest/api/2/search"
    params = {"jql": "ORDER BY updated"}
    records_path = "issues"
    primary_key = "id"
    updated_field = "fields.updated"
    filter_precision = timedelta(minutes=1)
    ordered_by_updated = True

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"jql": f'updated >= "{since:%Y/%m/%d %H:%M}" ORDER BY updated'}


class ServiceNowLinks(_Base):
    path = "/api/now/table/incident"
    params = {"sysparm_query": "ORDERBYsys_updated_on"}
    records_path = "result"
    pagination = "link_header"
    primary_key = "sys_id"
    updated_field = "sys_updated_on"
    ordered_by_updated = True

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on"}


class ServiceNowKeyset(ServiceNowLinks):
    ordered_by_updated = False  # keyset positions skip nothing: no need to seek


class GraphDelta(_Base):
    path = "/v1.0/items/delta"
    records_path = "value"
    pagination = "odata"
    delta_path = ("@odata.deltaLink",)
    deleted_path = ("@removed",)


#: style -> (crawler class, page size parameter, ChangesAPI paging, whether deletions show)
STYLES: dict[str, tuple[type[Crawler], str, str, bool]] = {
    "offset": (JiraOffsets, "maxResults", "offset", False),
    "next-link": (ServiceNowLinks, "sysparm_limit", "offset", False),
    "keyset": (ServiceNowKeyset, "sysparm_limit", "keyset", False),
    "delta": (GraphDelta, "$top", "offset", True),
}


class ReplicaSink(ListSink):
    """Keeps every record, and can list the keys it holds (as a file sink can)."""

    identity = "replica"

    def __init__(self, key: str) -> None:
        super().__init__()
        self._key = key

    async def existing_keys(self, path: Any) -> list[Any]:
        return [r.get(self._key) for r in self.records if isinstance(r, dict)]


# --- what a case is ------------------------------------------------------------------------------------


@attrs.frozen
class Change:
    """Changes at one moment: ``update`` / ``delete`` pick ids by index into the ids that exist."""

    update: tuple[int, ...] = ()
    delete: tuple[int, ...] = ()
    create: int = 0
    advance: int = 0  # seconds the server clock moves first (0: same second as before, a tie)

    def apply(self, api: ChangesAPI, now: list[float]) -> set[int]:
        now[0] += self.advance
        pool = sorted(api.live_ids())
        touched: set[int] = set()
        if pool:
            touched |= set(api.update([pool[i % len(pool)] for i in self.update]))
            touched |= set(api.delete([pool[i % len(pool)] for i in self.delete]))
        touched |= set(api.create(self.create))
        return touched


@attrs.frozen
class Round:
    before: Change  # between the previous run and this one
    during: tuple[tuple[int, Change], ...]  # (request of this run, change before it is answered)
    kill_at: int | None  # the request of this run before which it is killed
    stopped: Change  # while killed
    expire: bool  # the saved position has expired by the resume


ids_ = st.lists(st.integers(0, 200), max_size=4).map(tuple)
changes = st.builds(Change, update=ids_, delete=ids_, create=st.integers(0, 3), advance=st.integers(0, 3))
rounds = st.builds(
    Round,
    before=changes,
    during=st.lists(st.tuples(st.integers(1, 8), changes), max_size=3).map(tuple),
    kill_at=st.none() | st.integers(1, 6),
    stopped=changes,
    expire=st.booleans(),
)
cases = st.fixed_dictionaries(
    {
        "records": st.integers(0, 40),
        "ties": st.integers(1, 4),
        "spacing": st.integers(0, 2),
        "page": st.integers(3, 7),
        "rounds": st.lists(rounds, min_size=1, max_size=3),
    }
)


def _stale(api: ChangesAPI, held: dict[int, tuple[int | None, bool]], exempt: set[int], deletions: bool) -> list[str]:
    """Records held in another state than the source's, among those not changed during the last run."""
    problems = []
    for state in api.final_state():
        if state.id in exempt:
            continue
        got = held.get(state.id)
        if state.deleted:
            if deletions and got is not None and not got[1]:
                problems.append(f"{state.id}: deleted at the source, live in the replica")
        elif got is None:
            problems.append(f"{state.id}: missing (updated={state.updated})")
        elif got[1] or got[0] != state.updated:
            problems.append(f"{state.id}: replica has {got}, source has updated={state.updated}")
    return problems


def _saved_position(state: str) -> bool:
    """Whether the state file holds a position to resume from (a killed run saved a page)."""
    path = Path(state)
    if not path.exists():
        return False
    saved = orjson.loads(path.read_bytes()).get("partitions", {})
    return any(entry.get("next") and not entry.get("done") for entry in saved.values())


async def _check(style: str, case: dict[str, Any]) -> None:
    cls, size_param, paging, deletions = STYLES[style]
    now = [float(START)]
    api = ChangesAPI(
        records=case["records"],
        base_epoch=START - 100,
        spacing=case["spacing"],
        ties=case["ties"],
        max_page_size=case["page"],
        paging=paging,  # type: ignore[arg-type]
        now=lambda: now[0],
    )

    class Crawl(cls):  # type: ignore[valid-type, misc]
        params = {**cls.params, size_param: str(case["page"])}
        if cls is JiraOffsets:
            pagination = Offset("startAt", "maxResults", page_size=case["page"], total_path="total")

    key = str(Crawl.primary_key)
    sinks: list[ReplicaSink] = []
    scope = [anyio.CancelScope()]
    api.on_kill = lambda: scope[0].cancel()

    def served() -> int:
        return sum(v for k, v in api.counts.items() if k != "control")

    with tempfile.TemporaryDirectory() as folder:
        state = str(Path(folder) / "state.json")
        async with (
            LocalServer(AuthServerState(token_lifetime=3600), api=api) as server,
            TokenProvider(server.config()) as tokens,
        ):
            crawler = Crawl(base_url=server.base_url)

            async def run_once() -> Any:
                """One crawl; ``None`` when it was killed."""
                sink = ReplicaSink(key)
                sinks.append(sink)
                scope[0] = anyio.CancelScope()
                with scope[0]:
                    return await crawler.crawl(tokens, sink, state=state)
                return None

            quiet = Round(Change(), (), None, Change(), False)
            for number, round_ in enumerate([*case["rounds"], quiet]):
                round_.before.apply(api, now)
                first, created_from = served(), api.next_id
                touched: set[int] = set()
                pending = {first + request: change for request, change in round_.during}

                def during(n: int, pending: dict[int, Change] = pending, touched: set[int] = touched) -> None:
                    change = pending.pop(n, None)
                    if change is not None:
                        touched.update(change.apply(api, now))

                api.on_request = during
                if round_.kill_at is not None:
                    api.at(first + round_.kill_at, kill=True)
                stats = await run_once()
                if stats is None:  # killed: changes while it is stopped, then the resume
                    api.clear_schedule()
                    touched |= round_.stopped.apply(api, now)
                    # A first delta round read again from its start lists what lives, as a new snapshot:
                    # a record deleted meanwhile is not in it, nor in the next rounds (a known limit).
                    # Only a position the killed run saved can have expired: one the server hands out
                    # afresh after the resume is as new as any.
                    if round_.expire and not (style == "delta" and number == 0) and _saved_position(state):
                        api.expire_positions()
                    stats = await run_once()
                    assert stats is not None
                api.on_request = None
                api.clear_schedule()
                touched |= set(range(created_from, api.next_id))
                if stats.complete and number:  # records older than the first run: by the second
                    stale = _stale(api, replay(s.records for s in sinks), touched, deletions)
                    assert not stale, f"after run {number + 1}: {stale[:5]}"
    # the quiet last run is complete and leaves nothing out
    assert stats.complete, stats.incomplete
    assert _stale(api, replay(s.records for s in sinks), set(), deletions) == []


@pytest.mark.parametrize("style", list(STYLES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases)
def test_no_record_changed_before_a_run_is_stale_after_it(style: str, case: dict[str, Any]) -> None:
    anyio.run(_check, style, case)
