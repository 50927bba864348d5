"""Crawling paginated APIs with a shared token: subclass :class:`Crawler`."""

from __future__ import annotations

from .base import Crawler, Partition
from .checkpoint import Checkpoints
from .engine import API_RETRY, CrawlEngine, CrawlStats, PartitionStats
from .incremental import ExportCursor, SyncStats, parse_timestamp, tombstone
from .pagination import (
    Cursor,
    LinkHeader,
    NextUrl,
    ODataNextLink,
    Offset,
    Page,
    PageNumber,
    PageRequest,
    Paginator,
    parse_link_header,
)
from .sinks import CallableSink, JsonLinesSink, ListSink, Sink

__all__ = [
    "API_RETRY",
    "CallableSink",
    "Checkpoints",
    "CrawlEngine",
    "CrawlStats",
    "Crawler",
    "Cursor",
    "ExportCursor",
    "JsonLinesSink",
    "LinkHeader",
    "ListSink",
    "NextUrl",
    "ODataNextLink",
    "Offset",
    "Page",
    "PageNumber",
    "PageRequest",
    "Paginator",
    "Partition",
    "PartitionStats",
    "Sink",
    "SyncStats",
    "parse_link_header",
    "parse_timestamp",
    "tombstone",
]
