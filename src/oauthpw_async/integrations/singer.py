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
"""

from __future__ import annotations

from typing import Any

from ._protocol import ProtocolSink

__all__ = ["DELETED_AT", "SingerSink"]

#: The property that marks a deleted record (Singer's convention; targets' ``hard_delete`` removes it).
DELETED_AT = "_sdc_deleted_at"


class SingerSink(ProtocolSink):
    """A crawl sink writing Singer messages (see the module's description)."""

    deleted_at = DELETED_AT

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
