"""OpenTelemetry for crawls: spans for token requests, renewals and API requests, and the crawl's counters as metrics.

Use :class:`Telemetry` with your tracer and meter providers (the global ones by default)::

    telemetry = Telemetry()
    stats = await telemetry.crawl(Tickets(), config, JsonLinesSink("t.jsonl"), state="t.state.json")

or wire its parts yourself: :meth:`Telemetry.tokens` (a ``TokenProvider`` whose token requests
and renewals are traced), :meth:`Telemetry.trace_config` (for the ``aiohttp.ClientSession`` given
to ``crawl(session=...)``) and :meth:`Telemetry.on_progress`.

Spans: ``oauthpw.token_request`` (grant, URL without query, status, attempt),
``oauthpw.renewal`` (from its first token request to the new token; source and requests) and
``oauthpw.api_request`` (method, URL without query, status, attempt). No header, body, query
or token value is ever recorded. Metrics (counters): ``oauthpw.token_requests`` by grant,
``oauthpw.renewals`` by source, ``oauthpw.api.requests``, ``oauthpw.api.unauthorized``,
``oauthpw.api.retries``, ``oauthpw.api.rate_limit_pauses``, ``oauthpw.records``, ``oauthpw.pages``,
``oauthpw.partitions_done``.

Requires the ``otel`` extra (``pip install 'oauthpw-async[otel]'``: opentelemetry-api; add
opentelemetry-sdk and an exporter to send the data somewhere).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from .._httputil import safe_url
from ..config import PasswordGrantConfig
from ..crawler import Crawler, CrawlStats, Sink
from ..grant import TokenRequest, TokenResponse
from ..provider import TokenEvent, TokenProvider
from ..transport import AiohttpTokenEndpoint, TokenEndpoint

__all__ = ["SCOPE", "Telemetry", "TracedTokenEndpoint"]

#: The instrumentation scope of every span and metric.
SCOPE = "oauthpw_async"
_ATTEMPTS_KEPT = 10_000  # URLs whose attempt count is remembered (a bounded map)


class TracedTokenEndpoint:
    """A token endpoint that traces each request it sends (and counts it by grant)."""

    def __init__(self, inner: TokenEndpoint, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._attempt: dict[str, int] = {}

    async def send(self, request: TokenRequest) -> TokenResponse:
        """Send ``request`` inside an ``oauthpw.token_request`` span."""
        t = self._telemetry
        attempt = self._attempt.get(request.grant, 0) + 1
        self._attempt[request.grant] = attempt
        t.renewal_started()
        t.token_requests.add(1, {"oauthpw.grant": request.grant})
        with t.tracer.start_as_current_span(
            "oauthpw.token_request",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "oauthpw.grant": request.grant,
                "http.request.method": request.method,
                "url.full": safe_url(request.url),
                "oauthpw.attempt": attempt,
            },
            record_exception=False,  # the type only, below: nothing from the request or its answer
            set_status_on_exception=False,
        ) as span:
            try:
                response = await self._inner.send(request)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status < 400:
                self._attempt.pop(request.grant, None)
            else:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status}"))
            return response

    async def aclose(self) -> None:
        """Close the wrapped endpoint."""
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


class Telemetry:
    """Spans and metrics for one or more crawls (see the module's description).

    Args:
        tracer_provider: where spans go; the global one by default.
        meter_provider: where metrics go; the global one by default.
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.token_requests = meter.create_counter("oauthpw.token_requests", description="token requests sent")
        self.renewals = meter.create_counter("oauthpw.renewals", description="new tokens, by source")
        self._counters = {
            "requests": meter.create_counter("oauthpw.api.requests", description="API requests sent"),
            "unauthorized": meter.create_counter("oauthpw.api.unauthorized", description="API answers 401"),
            "retries": meter.create_counter("oauthpw.api.retries", description="API requests retried"),
            "rate_limit_pauses": meter.create_counter(
                "oauthpw.api.rate_limit_pauses", description="pauses a 429/503 asked for"
            ),
            "records": meter.create_counter("oauthpw.records", description="records written"),
            "pages": meter.create_counter("oauthpw.pages", description="pages read"),
            "partitions_done": meter.create_counter("oauthpw.partitions_done", description="partitions finished"),
        }
        self._reported: dict[int, dict[str, int]] = {}
        self._renewal_start: int | None = None
        self._renewal_requests = 0
        self._api_attempts: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    # --- tokens ------------------------------------------------------------------------------------

    def token_endpoint(self, config: PasswordGrantConfig) -> TracedTokenEndpoint:
        """A traced token endpoint for ``config`` (its own connection pool, so it is not traced twice)."""
        return TracedTokenEndpoint(AiohttpTokenEndpoint(config), self)

    def renewal_started(self) -> None:
        """A token request was sent: the first one since the last new token opens a renewal."""
        if self._renewal_start is None:
            self._renewal_start = time.time_ns()
            self._renewal_requests = 0
        self._renewal_requests += 1

    def on_token(self, event: TokenEvent) -> None:
        """The provider's ``on_token`` hook: a renewal ended with a new token."""
        self.renewals.add(1, {"oauthpw.source": event.source})
        start = self._renewal_start if self._renewal_start is not None else time.time_ns()
        span = self.tracer.start_span(
            "oauthpw.renewal",
            start_time=start,
            attributes={"oauthpw.source": event.source, "oauthpw.token_requests": self._renewal_requests},
        )
        span.end()
        self._renewal_start = None
        self._renewal_requests = 0

    @contextlib.asynccontextmanager
    async def tokens(self, config: PasswordGrantConfig, **options: Any) -> AsyncIterator[TokenProvider]:
        """An open ``TokenProvider`` whose token requests and renewals are traced: ``async with t.tokens(c) as tokens``.

        ``options`` are the provider's (``store=``, ``refresh=``...).
        """
        endpoint = self.token_endpoint(config)
        try:
            async with TokenProvider(config, endpoint=endpoint, on_token=self.on_token, **options) as provider:
                yield provider
        finally:
            await endpoint.aclose()

    # --- API requests ------------------------------------------------------------------------------

    def trace_config(self) -> aiohttp.TraceConfig:
        """An aiohttp trace config: one ``oauthpw.api_request`` span per request of the session it is given to."""
        config = aiohttp.TraceConfig()

        async def start(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
            # Counted by the whole URL (pages differ by their query), kept in memory only; recorded without query.
            key = (params.method, str(params.url))
            attempt = self._api_attempts.pop(key, 0) + 1
            self._api_attempts[key] = attempt
            while len(self._api_attempts) > _ATTEMPTS_KEPT:
                self._api_attempts.popitem(last=False)
            ctx.key = key
            ctx.span = self.tracer.start_span(
                "oauthpw.api_request",
                kind=trace.SpanKind.CLIENT,
                attributes={"http.request.method": key[0], "url.full": safe_url(key[1]), "oauthpw.attempt": attempt},
            )

        async def end(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
            status = params.response.status
            ctx.span.set_attribute("http.response.status_code", status)
            if status >= 400:
                ctx.span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            else:
                self._api_attempts.pop(ctx.key, None)
            ctx.span.end()

        async def failed(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams) -> None:
            name = type(params.exception).__name__
            ctx.span.set_attribute("error.type", name)
            ctx.span.set_status(Status(StatusCode.ERROR, name))
            ctx.span.end()

        config.on_request_start.append(start)
        config.on_request_end.append(end)
        config.on_request_exception.append(failed)
        config.freeze()
        return config

    # --- the crawl's counters ---------------------------------------------------------------------

    def on_progress(self, stats: CrawlStats) -> None:
        """The crawl's ``on_progress`` hook: adds what the counters grew by since the last call."""
        now = {
            "requests": stats.requests,
            "unauthorized": stats.unauthorized,
            "retries": stats.retries,
            "rate_limit_pauses": stats.rate_limit_pauses,
            "records": stats.records,
            "pages": stats.pages,
            "partitions_done": stats.partitions_done,
        }
        before = self._reported.setdefault(id(stats), dict.fromkeys(now, 0))
        for name, value in now.items():
            if value > before[name]:
                self._counters[name].add(value - before[name])
                before[name] = value

    async def crawl(
        self,
        crawler: Crawler,
        config: PasswordGrantConfig,
        sink: Sink,
        *,
        state: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> CrawlStats:
        """Run ``crawler`` with every part traced; the options are those of ``Crawler.crawl``."""
        async with (
            self.tokens(config) as tokens,
            aiohttp.ClientSession(trace_configs=[self.trace_config()]) as session,
        ):
            stats = await crawler.crawl(
                tokens, sink, session=session, state=state, on_progress=self.on_progress, **options
            )
        self.on_progress(stats)
        self._reported.pop(id(stats), None)
        return stats
