"""What the Singer and Airbyte sinks share: one stream per crawler, a schema, rows, and STATE.

A protocol sink turns each page into messages (a schema message before the first record and
before any record that does not fit the schema sent so far; a record message per record, a
deletion as the key and a "deleted at" property) and sends, after a flush, a state message
carrying the crawl state file's document: that file is saved only after the records it covers
were flushed, so every record before a state message was sent before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from .._paths import path_keys
from ..crawler import Crawler
from ..crawler.sinks import STREAM, StreamSink
from ._run import key_column, stream_name
from .schema import declared_schema, widen

__all__ = ["ProtocolSink", "now_iso"]

_DELETED_AT_SCHEMA = {"type": ["null", "string"], "format": "date-time"}


def now_iso() -> str:
    """The time now, ISO 8601 in UTC with ``Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ProtocolSink:
    """A crawl sink writing one protocol's messages to a binary stream; subclasses say how each looks.

    Args:
        out: where the messages go (stdout).
        crawler: the crawler, for the stream's name, key, cursor field and schema.
        state: the crawl's state file, whose document each state message carries.
        state_every: seconds between two state messages during the crawl (one always ends it).
    """

    identity = STREAM  # a stream: what its reader took is the reader's
    #: The property that marks a deleted record.
    deleted_at = "_deleted_at"

    def __init__(self, out: IO[bytes], crawler: Crawler, state: str | Path, *, state_every: float = 5.0) -> None:
        self._out = StreamSink(out)  # writes from a worker thread: a slow reader never blocks the loop
        self._messages: list[dict[str, Any]] = []
        self.stream = stream_name(crawler)
        self.key = key_column(crawler)
        self.key_parts = path_keys(crawler.primary_key) if crawler.primary_key is not None else []
        updated = crawler.updated_field
        self.cursor_field = path_keys(updated) if updated is not None else []
        self.declared = declared_schema(crawler)
        self.schema: dict[str, Any] | None = None
        self.state = Path(state)
        self.state_every = state_every
        self._state_sent: tuple[int, int] | None = None
        self._state_at = float("-inf")
        self.written = 0

    # --- what subclasses define ----------------------------------------------------------------

    def schema_message(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        """The message announcing the stream's (new) schema, or ``None`` when the protocol has none."""
        raise NotImplementedError

    def record_message(self, row: dict[str, Any], extracted: str) -> dict[str, Any]:
        """The message carrying one record."""
        raise NotImplementedError

    def state_message(self, document: Any) -> dict[str, Any]:
        """The message carrying the crawl state document."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any] | None) -> None:
        if message is not None:
            self._messages.append(message)

    async def _pass_on(self) -> None:
        messages, self._messages = self._messages, []
        await self._out.write(messages, self.stream)

    def _set_schema(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._send(self.schema_message(schema))

    def _row(self, record: Any, extracted: str) -> dict[str, Any]:
        if isinstance(record, dict) and record.get("_deleted") is True and "record" in record:
            row: dict[str, Any] = {self.deleted_at: extracted}
            at = row
            *outer, last = self.key_parts or ["_key"]
            for part in outer:
                at = at.setdefault(part, {})
            at[last] = record["_key"]
            return row
        return dict(record) if isinstance(record, dict) else {"value": record}

    def initial_schema(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The declared schema, or one inferred from ``rows``; with the deletion property."""
        schema = self.declared
        if schema is None:
            schema = {"type": ["object"], "properties": {}}
            for row in rows:
                schema = widen(schema, row)
        schema.setdefault("properties", {})[self.deleted_at] = _DELETED_AT_SCHEMA
        return schema

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Send one page: a (widened) schema first when needed, then a message per record."""
        extracted = now_iso()
        rows = [self._row(r, extracted) for r in records]
        if self.schema is None:
            self._set_schema(self.initial_schema(rows))
        for row in rows:
            if self.declared is None:
                assert self.schema is not None
                wider = widen(self.schema, row)
                if wider != self.schema:
                    self._set_schema(wider)
            self._send(self.record_message(row, extracted))
        self.written += len(rows)
        await self._pass_on()

    async def flush(self) -> None:
        """Write the messages out; then the last saved checkpoint's state (all of its records were sent)."""
        await self._out.flush()
        if time.monotonic() - self._state_at >= self.state_every:
            await self.send_state()

    async def send_state(self) -> None:
        """Send a state message with the state file's document, if it changed since the last one."""
        try:
            info = self.state.stat()
            document = orjson.loads(self.state.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return  # no checkpoint yet: the next flush sends it
        if (info.st_mtime_ns, info.st_size) == self._state_sent:
            return
        self._send(self.state_message(document))
        await self._pass_on()
        await self._out.flush()
        self._state_sent = (info.st_mtime_ns, info.st_size)
        self._state_at = time.monotonic()

    async def finish(self) -> None:
        """End of the crawl (finished or stopped): the final state."""
        await self.send_state()
