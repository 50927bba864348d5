"""The README's example crawlers, run against the local API with only their URLs pointed at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import ListSink
from oauthpw_async.testing import AuthServerState, LocalServer, Quirks
from oauthpw_async.testing.api import DemoAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from salesforce_like import Accounts
from servicenow_like import Incidents

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_servicenow_like_example() -> None:
    class Local(Incidents):
        path = "/api/link/items"
        params = {"per_page": "40"}
        records_path = None  # the local link-style API answers a bare list, ServiceNow wraps it in "result"

    api = DemoAPI(projects=("alpha",), per_project=130)
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Local()
        crawler.base_url = server.base_url
        sink = ListSink()
        await crawler.crawl(tokens, sink)
    assert sorted(r["id"] for r in sink.records) == sorted(api.expected_ids())


async def test_salesforce_like_example_takes_its_host_from_the_token() -> None:
    class Local(Accounts):
        path = "/api/nexturl/items"
        params = {"project": "alpha"}

        def detail(self, record):
            return f"/api/items/{record['id']}"  # the local records carry no attributes.url

    api = DemoAPI(projects=("alpha",), per_project=230)
    state = AuthServerState(quirks=Quirks(salesforce=True))
    async with LocalServer(state, api=api) as server, TokenProvider(server.config()) as tokens:
        sink = ListSink()
        await Local().crawl(tokens, sink)
    assert len(sink.records) == 230 and all(r["detail"]["id"] == r["id"] for r in sink.records)
    assert state.count("password") == 1
