"""Running a crawler inside the data platforms pipelines already use: dlt, Singer, Airbyte.

Each integration is its own module with its own optional extra, imported only when used:
:mod:`oauthpw_async.integrations.dlt` (extra ``dlt``), :mod:`oauthpw_async.integrations.singer`
(no extra: the protocol is JSON on stdout). Importing :mod:`oauthpw_async`, or running a plain
crawl, imports none of their packages. The same :class:`~oauthpw_async.crawler.Crawler` subclass
runs unchanged in all of them.
"""

from __future__ import annotations

__all__: list[str] = []
