"""Running a crawler inside the data platforms pipelines already use: dlt, Singer, Airbyte, OpenTelemetry.

Each integration is its own module with its own optional extra, imported only when used:
:mod:`oauthpw_async.integrations.dlt` (extra ``dlt``), :mod:`oauthpw_async.integrations.singer`
(no extra: the protocol is JSON on stdout), :mod:`~oauthpw_async.integrations.airbyte` (no extra),
:mod:`~oauthpw_async.integrations.otel` (extra ``otel``). Importing :mod:`oauthpw_async`, or running a plain
crawl, imports none of their packages. The same :class:`~oauthpw_async.crawler.Crawler` subclass
runs unchanged in all of them, under one stream (and table) name: :func:`stream_name`.
"""

from __future__ import annotations

from ._run import IncompleteCrawlError, stream_name

__all__ = ["IncompleteCrawlError", "stream_name"]
