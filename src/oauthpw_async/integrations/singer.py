"""``crawl --format singer``: the crawl as a Singer tap (SCHEMA, RECORD and STATE messages on stdout).

One stream per crawler (its partitions inside), named like the crawler's class in snake case,
with ``key_properties`` from ``primary_key`` and ``bookmark_properties`` from ``updated_field``.
The schema is the crawler's ``json_schema`` or is inferred from the first page, and sent again,
widened, before a record that does not fit it. A deletion (the SDK's tombstone) is a RECORD with
the key and ``_sdc_deleted_at``, the Singer convention targets with ``hard_delete`` act on.

The STATE value is the SDK's own crawl state document (positions, cursors, delta tokens): the
file a runner such as Meltano saves from the last STATE and passes back as ``--state`` is a
state file the next crawl resumes from. A STATE is sent only for a checkpoint whose records were
all sent before it, and once more when the crawl ends.

Discovery (``--discover``) prints the stream's catalog: its schema (declared, or inferred from a
sample of records), key, replication method and key, and the metadata a runner selects with. A
catalog given back (``--catalog``, or the legacy ``--properties``) is read by :func:`read_catalog`:
a deselected stream is not crawled, deselected properties are left out of the records, and the
catalog's schema is the one the SCHEMA message sends.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from ..crawler import Crawler
from ..errors import UsageError
from ._protocol import ProtocolSink
from ._run import stream_name

__all__ = ["DELETED_AT", "CatalogChoice", "SingerSink", "catalog", "read_catalog"]

#: The property that marks a deleted record (Singer's convention; targets' ``hard_delete`` removes it).
DELETED_AT = "_sdc_deleted_at"


class SingerSink(ProtocolSink):
    """A crawl sink writing Singer messages (see the module's description)."""

    deleted_at = DELETED_AT

    def __init__(
        self,
        out: IO[bytes],
        crawler: Crawler,
        state: str | Path,
        *,
        schema: dict[str, Any] | None = None,
        dropped: Collection[str] = (),
        **options: Any,
    ) -> None:
        super().__init__(out, crawler, state, **options)
        if schema is not None:  # the catalog's: sent as it is, never widened
            self.declared = copy.deepcopy(schema)
        self.dropped = frozenset(dropped)

    def _row(self, record: Any, extracted: str) -> dict[str, Any]:
        row = super()._row(record, extracted)
        return {k: v for k, v in row.items() if k not in self.dropped} if self.dropped else row

    def schema_message(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A Singer SCHEMA message."""
        return {
            "type": "SCHEMA",
            "stream": self.stream,
            "schema": schema,
            "key_properties": [self.key] if self.key is not None and len(self.key_parts) == 1 else [],
            "bookmark_properties": self.cursor_field[:1] if len(self.cursor_field) == 1 else [],
        }

    def record_message(self, row: dict[str, Any], extracted: str) -> dict[str, Any]:
        """A Singer RECORD message."""
        return {"type": "RECORD", "stream": self.stream, "record": row, "time_extracted": extracted}

    def state_message(self, document: Any) -> dict[str, Any]:
        """A Singer STATE message: its value is the crawl state document."""
        return {"type": "STATE", "value": document}


def _key_properties(crawler: Crawler) -> list[str]:
    from .._paths import path_keys

    parts = path_keys(crawler.primary_key) if crawler.primary_key is not None else []
    return parts if len(parts) == 1 else []


def _replication_keys(crawler: Crawler) -> list[str]:
    from .._paths import path_keys

    parts = path_keys(crawler.updated_field) if crawler.updated_field is not None else []
    return parts if crawler.is_incremental and len(parts) == 1 else []


def catalog(crawler: Crawler, schema: dict[str, Any]) -> dict[str, Any]:
    """The Singer catalog of ``--discover``: the crawler's one stream, selected by default.

    ``schema`` is the stream's JSON Schema (declared or inferred); the deletion property is added.
    """
    schema = copy.deepcopy(schema)
    properties = schema.setdefault("properties", {})
    properties[DELETED_AT] = {"type": ["null", "string"], "format": "date-time"}
    keys, replication = _key_properties(crawler), _replication_keys(crawler)
    root: dict[str, Any] = {
        "selected": True,
        "selected-by-default": True,
        "inclusion": "available",
        "table-key-properties": keys,
        "forced-replication-method": "INCREMENTAL" if crawler.is_incremental else "FULL_TABLE",
        "valid-replication-keys": replication,
    }
    metadata: list[dict[str, Any]] = [{"breadcrumb": [], "metadata": root}]
    for name in properties:
        automatic = name in keys or name in replication
        metadata.append(
            {
                "breadcrumb": ["properties", name],
                "metadata": {"inclusion": "automatic" if automatic else "available", "selected-by-default": True},
            }
        )
    name = stream_name(crawler)
    stream: dict[str, Any] = {
        "tap_stream_id": name,
        "stream": name,
        "schema": schema,
        "key_properties": keys,
        "metadata": metadata,
    }
    if replication:
        stream["replication_key"] = replication[0]
        stream["replication_method"] = "INCREMENTAL"
    return {"streams": [stream]}


@attrs.frozen
class CatalogChoice:
    """What a catalog says of the crawler's stream.

    Attributes:
        selected: whether the stream is to be crawled.
        schema: the catalog's schema for it (deselected properties left out), or ``None`` for the crawler's own.
        dropped: the top-level properties deselected, left out of every record.
        full_table: the catalog asks for ``FULL_TABLE`` replication: an incremental crawler reads everything.
    """

    selected: bool
    schema: dict[str, Any] | None = None
    dropped: frozenset[str] = frozenset()
    full_table: bool = False


_REDO = "; print a fresh one with --discover and edit only its 'selected' values"


def _bad(why: str) -> UsageError:
    return UsageError(f"the Singer catalog {why}{_REDO}")


def _entry(document: Any, name: str) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("streams"), list):
        raise _bad("must be a JSON object with a 'streams' list")
    for entry in document["streams"]:
        if not isinstance(entry, dict):
            raise _bad("has a stream that is not a JSON object")
        if name in (entry.get("tap_stream_id"), entry.get("stream")):
            return entry
    raise _bad(f"has no stream {name!r} (this crawler's one stream)")


def _metadata(entry: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """The stream's metadata by breadcrumb, each checked."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    listed = entry.get("metadata", [])
    if not isinstance(listed, list):
        raise _bad("has a 'metadata' that is not a list")
    for item in listed:
        crumb = item.get("breadcrumb") if isinstance(item, dict) else None
        data = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(crumb, list) or not all(isinstance(c, str) for c in crumb) or not isinstance(data, dict):
            raise _bad("has a metadata entry that is not {'breadcrumb': [strings], 'metadata': {...}}")
        for flag in ("selected", "selected-by-default"):
            if flag in data and not isinstance(data[flag], bool):
                raise _bad(f"has a {flag!r} that is not true or false at breadcrumb {crumb}")
        found[tuple(crumb)] = data
    return found


def _is_selected(entry: dict[str, Any], root: dict[str, Any]) -> bool:
    for value in (root.get("selected"), root.get("selected-by-default"), entry.get("selected")):
        if value is not None:
            if not isinstance(value, bool):
                raise _bad("has a stream 'selected' that is not true or false")
            return value
    return True  # nothing says otherwise (as the Singer SDK reads it)


def _dropped(metadata: dict[tuple[str, ...], dict[str, Any]], keep: Sequence[str]) -> frozenset[str]:
    dropped = set()
    for crumb, data in metadata.items():
        if len(crumb) == 2 and crumb[0] == "properties" and crumb[1] not in keep:
            automatic = data.get("inclusion") == "automatic"
            if data.get("inclusion") == "unsupported" or (data.get("selected") is False and not automatic):
                dropped.add(crumb[1])
    return frozenset(dropped)


def read_catalog(document: Any, crawler: Crawler) -> CatalogChoice:
    """What the catalog ``document`` (parsed JSON) selects of the crawler's stream; a typed error for a bad one.

    The stream is selected by its ``[]`` breadcrumb's ``selected`` (else ``selected-by-default``,
    else the legacy stream-level ``selected``; true when none is given). A property whose
    ``selected`` is false (and whose inclusion is not ``automatic``: the key, the replication key)
    is left out of the schema and the records. A ``replication-method`` of ``FULL_TABLE`` reads
    everything (as ``--full-refresh``).

    Raises:
        UsageError: the document is not a Singer catalog with this crawler's stream.
    """
    entry = _entry(document, stream_name(crawler))
    metadata = _metadata(entry)
    root = metadata.get((), {})
    if not _is_selected(entry, root):
        return CatalogChoice(selected=False)
    method = root.get("replication-method", entry.get("replication_method"))
    if method not in (None, "INCREMENTAL", "FULL_TABLE"):
        raise _bad(f"asks for replication-method {method!r}: this tap does INCREMENTAL or FULL_TABLE")
    full_table = method == "FULL_TABLE"
    dropped = _dropped(metadata, [*_key_properties(crawler), *_replication_keys(crawler), DELETED_AT])
    schema = entry.get("schema")
    if schema is None:
        return CatalogChoice(selected=True, dropped=dropped, full_table=full_table)
    properties = schema.get("properties", {}) if isinstance(schema, dict) else None
    kinds = schema.get("type", "object") if isinstance(schema, dict) else None
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(properties, dict) or not isinstance(kinds, list) or "object" not in kinds:
        raise _bad("has a 'schema' that is not a JSON Schema object with 'properties'")
    if not all(isinstance(p, (dict, bool)) for p in properties.values()):
        raise _bad("has a property schema that is not a JSON object")
    assert isinstance(schema, dict)
    kept = {k: copy.deepcopy(v) for k, v in properties.items() if k not in dropped}
    return CatalogChoice(
        selected=True, schema={**copy.deepcopy(schema), "properties": kept}, dropped=dropped, full_table=full_table
    )
