"""OpenTelemetry: a crawl through token renewals, a 401, a retry and a pause, seen in the SDK's in-memory exporters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oauthpw_async import RetryPolicy
from oauthpw_async.crawler import ListSink
from oauthpw_async.integrations.otel import Telemetry
from oauthpw_async.provider import TokenEvent
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI
from oauthpw_async.testing.changes import ChangesAPI
from tests.crawlers_for_cli import SlowCursorItems

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from otel_tickets import run as run_example

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sums(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], int]:
    """Every counter's value by (name, attributes)."""
    found: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[(metric.name, tuple(sorted(point.attributes.items())))] = int(point.value)
    return found


class Recording(Telemetry):
    """Keeps the access tokens it saw, to check that no span carries one."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[str] = []

    def on_token(self, event: TokenEvent) -> None:
        self.seen.append(event.token.authorization.split()[-1])
        super().on_token(event)


async def test_token_requests_renewals_and_api_requests_are_spans_and_the_counters_are_metrics() -> None:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Recording(tracer_provider=tracing, meter_provider=MeterProvider(metric_readers=[reader]))
    api = DemoAPI(per_project=50)
    api.inject(
        ApiFault("status", status=429, retry_after="0"),
        ApiFault("revoke"),  # a 401: the token is renewed with the refresh token
        ApiFault("status", status=500),
    )
    auth = AuthServerState(token_lifetime=600)
    async with LocalServer(auth, api=api) as server:
        sink = ListSink()
        stats = await telemetry.crawl(
            SlowCursorItems(base_url=server.base_url), server.config(), sink, retry=RetryPolicy(base_delay=0.01)
        )
    assert len(sink.records) == 150 and stats.complete

    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    tokens = by_name["oauthpw.token_request"]
    assert [(s.attributes["oauthpw.grant"], s.attributes["http.response.status_code"]) for s in tokens] == [
        ("password", 200),
        ("refresh_token", 200),
    ]
    assert all(s.attributes["url.full"] == server.token_url and s.attributes["oauthpw.attempt"] == 1 for s in tokens)
    renewals = by_name["oauthpw.renewal"]
    assert [s.attributes["oauthpw.source"] for s in renewals] == ["password", "refresh_token"]
    calls = by_name["oauthpw.api_request"]
    assert len(calls) == stats.requests
    statuses = sorted(s.attributes["http.response.status_code"] for s in calls)
    # The revocation refuses every request in flight with the old token (the three partitions run
    # at once), so one or more 401s; however many, one renewal (asserted above) serves them all.
    refused = statuses.count(401)
    assert statuses.count(429) == 1 and refused >= 1 and statuses.count(500) == 1
    # Every refused or failed attempt is followed by exactly one more attempt of the same request
    # (a retry may itself meet the revocation, so its status is not always 200).
    retried = [s for s in calls if s.attributes["oauthpw.attempt"] > 1]
    assert len(retried) == len(statuses) - statuses.count(200) == 2 + refused

    # Nothing secret, and no query, in any attribute of any span.
    assert len(telemetry.seen) == 2
    values = " ".join(str(v) for span in finished for v in span.attributes.values())
    for secret in (auth.password, auth.client_secret, *telemetry.seen):
        assert secret not in values
    assert all("?" not in str(s.attributes["url.full"]) for s in finished if "url.full" in s.attributes)

    counted = sums(reader)
    assert counted[("oauthpw.token_requests", (("oauthpw.grant", "password"),))] == 1
    assert counted[("oauthpw.token_requests", (("oauthpw.grant", "refresh_token"),))] == 1
    assert counted[("oauthpw.renewals", (("oauthpw.source", "refresh_token"),))] == 1
    assert counted[("oauthpw.api.unauthorized", ())] == stats.unauthorized == refused
    assert counted[("oauthpw.api.retries", ())] == stats.retries >= 1
    assert counted[("oauthpw.api.rate_limit_pauses", ())] == stats.rate_limit_pauses == 1
    assert counted[("oauthpw.api.requests", ())] == stats.requests
    assert counted[("oauthpw.records", ())] == 150
    assert counted[("oauthpw.pages", ())] == stats.pages == 9
    assert counted[("oauthpw.partitions_done", ())] == 3


async def test_the_example_traces_an_incremental_crawl(tmp_path: Path) -> None:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    async with LocalServer(AuthServerState(token_lifetime=600), api=ChangesAPI(records=120)) as server:
        stats = await run_example(
            server.config(),
            ListSink(),
            base_url=server.base_url,
            state=tmp_path / "s.json",
            tracer_provider=tracing,
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("oauthpw.api_request") == stats.requests == 2  # pages of 100
    assert names.count("oauthpw.token_request") == names.count("oauthpw.renewal") == 1
    assert sums(reader)[("oauthpw.records", ())] == 120
