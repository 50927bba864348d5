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

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from .._paths import _parts
from ..crawler import Crawler
from ..crawler.sinks import STREAM, StreamSink
from ._run import key_column, stream_name
from .schema import declared_schema, widen

__all__ = ["DELETED_AT", "SingerSink"]

#: The property that marks a deleted record (Singer's convention; targets' ``hard_delete`` removes it).
DELETED_AT = "_sdc_deleted_at"
_DELETED_AT_SCHEMA = {"type": ["null", "string"], "format": "date-time"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class SingerSink:
    """A crawl sink writing Singer messages to a binary stream (stdout).

    Args:
        out: where the messages go.
        crawler: the crawler, for the stream's name, key and schema.
        state: the crawl's state file, whose document each STATE message carries.
        state_every: seconds between two STATE messages during the crawl (one always ends it).
    """

    identity = STREAM  # a stream: what its reader took is the reader's

    def __init__(self, out: IO[bytes], crawler: Crawler, state: str | Path, *, state_every: float = 5.0) -> None:
        self._out = StreamSink(out)  # writes from a worker thread: a slow reader never blocks the loop
        self._messages: list[dict[str, Any]] = []
        self.stream = stream_name(crawler)
        self.key = key_column(crawler)
        self.key_parts = _parts(crawler.primary_key) if crawler.primary_key is not None else []
        updated = crawler.updated_field
        self.bookmark = [updated] if isinstance(updated, str) and len(_parts(updated)) == 1 else []
        self.declared = declared_schema(crawler)
        self.schema: dict[str, Any] | None = None
        self.state = Path(state)
        self.state_every = state_every
        self._state_sent: tuple[int, int] | None = None
        self._state_at = float("-inf")
        self.written = 0

    def _send(self, message: dict[str, Any]) -> None:
        self._messages.append(message)

    def _send_schema(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._send(
            {
                "type": "SCHEMA",
                "stream": self.stream,
                "schema": schema,
                "key_properties": [self.key] if self.key is not None and len(self.key_parts) == 1 else [],
                "bookmark_properties": self.bookmark,
            }
        )

    def _row(self, record: Any, extracted: str) -> dict[str, Any]:
        if isinstance(record, dict) and record.get("_deleted") is True and "record" in record:
            row: dict[str, Any] = {DELETED_AT: extracted}
            at = row
            *outer, last = self.key_parts or ["_key"]
            for part in outer:
                at = at.setdefault(part, {})
            at[last] = record["_key"]
            return row
        return dict(record) if isinstance(record, dict) else {"value": record}

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Send one page: a (widened) SCHEMA first when needed, then a RECORD per record."""
        extracted = _now()
        rows = [self._row(r, extracted) for r in records]
        if self.schema is None:
            schema = self.declared
            if schema is None:
                schema = {"type": ["object"], "properties": {}}
                for row in rows:
                    schema = widen(schema, row)
            schema.setdefault("properties", {})[DELETED_AT] = _DELETED_AT_SCHEMA
            self._send_schema(schema)
        for row in rows:
            if self.declared is None:
                assert self.schema is not None
                wider = widen(self.schema, row)
                if wider != self.schema:
                    self._send_schema(wider)
            self._send({"type": "RECORD", "stream": self.stream, "record": row, "time_extracted": extracted})
        self.written += len(rows)
        await self._pass_on()

    async def _pass_on(self) -> None:
        messages, self._messages = self._messages, []
        await self._out.write(messages, self.stream)

    async def flush(self) -> None:
        """Flush the messages; then send the last saved checkpoint's STATE (every record of it was sent)."""
        await self._out.flush()
        if time.monotonic() - self._state_at >= self.state_every:
            await self.send_state()

    async def send_state(self) -> None:
        """Send a STATE carrying the state file's document, if it changed since the last one."""
        try:
            info = self.state.stat()
            document = orjson.loads(self.state.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return  # no checkpoint yet (or one being replaced): the next flush sends it
        if (info.st_mtime_ns, info.st_size) == self._state_sent:
            return
        self._send({"type": "STATE", "value": document})
        await self._pass_on()
        await self._out.flush()
        self._state_sent = (info.st_mtime_ns, info.st_size)
        self._state_at = time.monotonic()

    async def finish(self) -> None:
        """End of the crawl (finished or stopped): the final STATE."""
        await self.send_state()
