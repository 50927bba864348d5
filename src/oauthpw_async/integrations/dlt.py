"""A crawler as a dlt source: ``pipeline.run(crawler_source(Tickets(), "conn.toml"))``.

One resource per crawler (its partitions are read inside it), merged on the crawler's
``primary_key`` (``write_disposition="merge"``), with deletions (the SDK's tombstones) as hard
deletes, so the destination table equals the source after every run. Without a ``primary_key``
a crawler's resource replaces its table on each run (a full crawl; an incremental crawler
without a key is refused, since its changes could not be merged).

**Where the incremental cursor lives: dlt's state, only.** The SDK's whole crawl state (the
cursors, the lookback's memory of recent keys, the delta tokens) is kept as one value of the
resource's dlt state. dlt commits its state in the same load package as the rows, so the cursor
moves exactly when the rows it covers are in the destination: a load that fails, or a run
stopped midway, leaves the previous cursor, and the next run reads those changes again (merged,
not duplicated). A separate state file could run ahead of a load that never completed, or be
lost apart from the data. During a run the engine works on a private copy in a temporary
folder; no file outlives the run. The cost: a run stopped midway starts its partitions again
(from the committed cursors) instead of resuming mid-partition.

Requires the ``dlt`` extra (``pip install 'oauthpw-async[dlt]'``, plus the destination's own,
e.g. ``dlt[duckdb]``).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import dlt
from dlt.extract.resource import DltResource
from dlt.extract.source import DltSource

from .._paths import path_keys
from ..crawler import Crawler, CrawlStats
from ..errors import UsageError
from ._run import Connection, key_column, pages, stream_name

__all__ = ["DELETED_COLUMN", "SEQUENCE_COLUMN", "STATE_KEY", "crawler_resource", "crawler_source"]

#: The column that marks a deleted record (dlt's ``hard_delete`` hint): the row is removed.
DELETED_COLUMN = "_deleted"
#: The order in which a run delivered rows (dlt's ``dedup_sort``): of two versions of one key in
#: a run (a record changed during the crawl, then deleted), the later one wins.
SEQUENCE_COLUMN = "_sequence"
#: The key of the SDK's crawl state (a JSON document, as text) in the resource's dlt state.
STATE_KEY = "oauthpw_crawl_state"


def _deleted_row(crawler: Crawler, key: Any) -> dict[str, Any]:
    """What a tombstone lands as: the key alone (nested as the records nest it) and the flag."""
    assert crawler.primary_key is not None
    row: dict[str, Any] = {DELETED_COLUMN: True}
    *outer, last = path_keys(crawler.primary_key)
    at = row
    for part in outer:
        at = at.setdefault(part, {})
    at[last] = key
    return row


def crawler_resource(
    crawler: Crawler,
    connection: Connection,
    *,
    name: str | None = None,
    allow_incomplete: bool = False,
    full_refresh: bool = False,
    **crawl_options: Any,
) -> DltResource:
    """A dlt resource that crawls ``crawler`` (every partition) on each extract.

    Args:
        crawler: the crawler instance, unchanged.
        connection: a :class:`~oauthpw_async.PasswordGrantConfig`, a connection file or mapping,
            or a callable returning an unopened token source; opened on dlt's event loop.
        name: the resource (and table) name; default: the class name in snake case.
        allow_incomplete: load what a crawl known to be short read, instead of failing the extract
            with :class:`~oauthpw_async.integrations.IncompleteCrawlError`.
        full_refresh: an incremental crawler ignores its committed cursors (and, with a key,
            merges everything again).
        crawl_options: ``concurrency``, ``rate``, ``retry``, ``timeout`` of
            :meth:`Crawler.crawl <oauthpw_async.crawler.Crawler.crawl>`.
    """
    if "state" in crawl_options:
        raise UsageError("the crawl state is kept in dlt's state: do not pass state= to crawler_resource")
    table = name or stream_name(crawler)
    key = key_column(crawler)
    if key is None and crawler.is_incremental:
        raise UsageError(
            f"{type(crawler).__name__} is incremental but declares no primary_key: "
            "its changes cannot be merged into a table; declare primary_key"
        )
    runs: list[CrawlStats] = []  # the crawl's counters, appended when it ends

    async def rows() -> AsyncIterator[list[dict[str, Any]]]:
        saved = dlt.current.resource_state().get(STATE_KEY)
        with tempfile.TemporaryDirectory(prefix="oauthpw-dlt-") as folder:
            state = Path(folder) / "state.json"
            if isinstance(saved, str):
                state.write_text(saved, encoding="utf-8")
            sequence = 0
            async for batch in pages(
                crawler,
                connection,
                identity=f"dlt:{table}",
                state=state,
                stats_out=runs,
                allow_incomplete=allow_incomplete,
                full_refresh=full_refresh,
                **crawl_options,
            ):
                yield [_row(crawler, record, sequence + n) for n, record in enumerate(batch.records)]
                sequence += len(batch.records)
            # Reached only when the crawl ended (complete, or allowed incomplete): committed with the rows.
            dlt.current.resource_state()[STATE_KEY] = state.read_text(encoding="utf-8")

    return _resource(rows, table, key)


def _row(crawler: Crawler, record: Any, sequence: int) -> dict[str, Any]:
    """What one record lands as: a copy of it (a tombstone: its key and the flag), in delivery order."""
    if isinstance(record, dict) and record.get(DELETED_COLUMN) is True and "record" in record:
        row = _deleted_row(crawler, record["_key"])
    elif isinstance(record, dict):
        row = dict(record)
    else:
        row = {"value": record}
    row[SEQUENCE_COLUMN] = sequence
    return row


def _resource(rows: Callable[[], AsyncIterator[list[dict[str, Any]]]], table: str, key: str | None) -> DltResource:
    """Merged on ``key`` with tombstones as hard deletes; without a key, the table replaced on each run."""
    columns: dict[str, Any] = {SEQUENCE_COLUMN: {"data_type": "bigint", "dedup_sort": "desc"}}
    if key is not None:
        columns[DELETED_COLUMN] = {"data_type": "bool", "hard_delete": True}
        return dlt.resource(rows, name=table, primary_key=key, write_disposition="merge", columns=columns)
    return dlt.resource(rows, name=table, write_disposition="replace", columns=columns)


def crawler_source(
    crawler: Crawler | Sequence[Crawler],
    connection: Connection,
    *,
    name: str | None = None,
    **options: Any,
) -> DltSource:
    """A dlt source with one resource per crawler: ``pipeline.run(crawler_source(Tickets(), "conn.toml"))``.

    With one crawler, ``name`` names the source (its dlt schema) and the resource (default: the
    class name in snake case); with several, it names the source (default ``"oauthpw"``) and each
    resource is named after its crawler's class. Each resource opens its own token source from
    ``connection``. ``options`` are those of :func:`crawler_resource`.
    """
    if isinstance(crawler, Crawler):
        table = name or stream_name(crawler)
        resources = [crawler_resource(crawler, connection, name=table, **options)]
    else:
        crawlers = list(crawler)
        names = [stream_name(c) for c in crawlers]
        if not crawlers or len(set(names)) != len(names):
            raise UsageError(f"crawler_source needs crawlers of distinct classes, got {names}")
        table = name or "oauthpw"
        resources = [crawler_resource(c, connection, **options) for c in crawlers]

    @dlt.source(name=table)
    def source() -> Any:
        return resources

    result: DltSource = source()
    return result
