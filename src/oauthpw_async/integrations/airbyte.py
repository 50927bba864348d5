"""A crawler as an Airbyte source: ``spec``, ``check``, ``discover`` and ``read`` (and ``crawl --format airbyte``).

One stream per crawler (its partitions inside), named like the crawler's class in snake case.
``discover`` gives its JSON Schema (the crawler's ``json_schema``, or inferred from a sample of
records), its primary key and, for an incremental crawler, its cursor field. ``read`` reads the
stream when the configured catalog selects it: ``incremental`` continues from the state given
with ``--state``, ``full_refresh`` reads everything. A deletion (the SDK's tombstone) is a RECORD
with the key and ``_ab_cdc_deleted_at``, the column Airbyte's deduplicating destinations delete
on. Each STATE is a per-stream state whose ``stream_state`` holds the SDK's crawl state document,
sent only after every record it covers. Warnings about the data are LOG messages; the stream's
status and a failure (with what to do) are TRACE messages.

The connection configuration is the SDK's connection fields in snake case (``spec`` lists them),
plus an optional ``base_url``. Secrets never appear in any message.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import orjson

from .._paths import path_keys
from ..check import check_connection
from ..config import load_config
from ..crawler import Crawler
from ..errors import ConfigError, OAuthPWError, UsageError
from ..exit_codes import ExitCode, exit_code_for
from ._protocol import ProtocolSink
from ._run import open_tokens, stream_name

__all__ = [
    "DELETED_AT",
    "STATE_KEY",
    "AirbyteSink",
    "catalog",
    "connection_specification",
    "read",
    "run_check",
    "split_config",
]

#: The property that marks a deleted record (Airbyte's CDC convention: deduplicating destinations delete it).
DELETED_AT = "_ab_cdc_deleted_at"
#: Where the SDK's crawl state document is inside the stream's ``stream_state``.
STATE_KEY = "oauthpw_state"

_DATA_LOGGER = "oauthpw_async.crawler"


def _ms() -> int:
    return int(time.time() * 1000)


def connection_specification() -> dict[str, Any]:
    """The ``connectionSpecification`` of ``spec``: the connection fields, in snake case, with the admin labels."""

    def field(title: str, kind: str = "string", order: int = 0, **more: Any) -> dict[str, Any]:
        return {"title": title, "type": kind, "order": order, **more}

    secret: dict[str, Any] = {"airbyte_secret": True}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Connection",
        "type": "object",
        "required": ["access_token_url"],
        "additionalProperties": True,
        "properties": {
            "access_token_url": field(
                "Access Token URL", order=0, description="where username and password are exchanged for a token"
            ),
            "client_id": field("Client Id", order=1),
            "client_secret": field("Client Secret", order=2, **secret),
            "username": field("Username", order=3),
            "password": field("Password", order=4, **secret),
            "grant_type": field("Grant Type", order=5, default="password"),
            "refresh_token_url": field("Refresh Token URL", order=6, description="default: the Access Token URL"),
            "headers": field("Headers", "object", order=7, additionalProperties={"type": "string"}, **secret),
            "body_parameters": field(
                "Body Parameters",
                "object",
                order=8,
                additionalProperties={"type": "string"},
                description="extra token request fields, e.g. scope, resource, audience",
            ),
            "use_raw_token": field("Use Raw Token", "boolean", order=9, default=False),
            "client_auth": field(
                "Client Authentication", order=10, default="body", enum=["body", "basic", "basic_plain", "none"]
            ),
            "verify_tls": field("Verify TLS", "boolean", order=11, default=True),
            "base_url": field("API Base URL", order=12, description="the API root (default: the connector's own)"),
        },
    }


def split_config(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """An Airbyte config file as (connection fields, ``base_url``); a typed error for a bad one."""
    try:
        document = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(
            f"cannot read the Airbyte config {path}: {exc}; give a JSON object of connection fields"
        ) from None
    if not isinstance(document, dict):
        raise UsageError(f"the Airbyte config {path} must be a JSON object of connection fields (see spec)")
    base_url = document.pop("base_url", None)
    if base_url is not None and not isinstance(base_url, str):
        raise UsageError("base_url must be a string (an http(s) URL)")
    return document, base_url


class AirbyteSink(ProtocolSink):
    """A crawl sink writing Airbyte RECORD, STATE, LOG and TRACE messages (see the module's description)."""

    deleted_at = DELETED_AT

    def __init__(self, out: IO[bytes], crawler: Crawler, state: str | Path, **options: Any) -> None:
        super().__init__(out, crawler, state, **options)
        self._since_state = 0
        self._started = False
        sink = self

        class _Warnings(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                sink.log("WARN", record.getMessage())

        # Until finish(): the crawl's warnings about the data become LOG messages.
        self._warnings = _Warnings(logging.WARNING)
        logging.getLogger(_DATA_LOGGER).addHandler(self._warnings)

    def schema_message(self, schema: dict[str, Any]) -> None:
        """None: Airbyte's schema is in the catalog, not in the stream."""
        return None

    def record_message(self, row: dict[str, Any], extracted: str) -> dict[str, Any]:
        """An Airbyte RECORD message."""
        if not self._started:
            self._started = True
            self._send(self.status_message("STARTED"))
            self._send(self.status_message("RUNNING"))
        self._since_state += 1
        return {"type": "RECORD", "record": {"stream": self.stream, "data": row, "emitted_at": _ms()}}

    def state_message(self, document: Any) -> dict[str, Any]:
        """A per-stream Airbyte STATE message holding the crawl state document."""
        count, self._since_state = self._since_state, 0
        return {
            "type": "STATE",
            "state": {
                "type": "STREAM",
                "stream": {"stream_descriptor": {"name": self.stream}, "stream_state": {STATE_KEY: document}},
                "sourceStats": {"recordCount": float(count)},
            },
        }

    def status_message(self, status: str) -> dict[str, Any]:
        """A TRACE of the stream's status (``STARTED``, ``RUNNING``, ``COMPLETE``, ``INCOMPLETE``)."""
        return {
            "type": "TRACE",
            "trace": {
                "type": "STREAM_STATUS",
                "emitted_at": float(_ms()),
                "stream_status": {"stream_descriptor": {"name": self.stream}, "status": status},
            },
        }

    def log(self, level: str, message: str) -> None:
        """Queue a LOG message (sent with the next page, or at the end)."""
        self._send(log_message(level, message))

    async def end(self, status: str, error: OAuthPWError | None = None) -> None:
        """The final STATE, the stream's status and, for a failure, an ERROR trace."""
        await self.finish()
        self._send(self.status_message(status))
        if error is not None:
            self._send(error_trace(error))
        await self._pass_on()
        await self._out.flush()

    async def finish(self) -> None:
        """The final STATE; the crawl's warnings are no longer logged here."""
        logging.getLogger(_DATA_LOGGER).removeHandler(self._warnings)
        await super().finish()


def log_message(level: str, message: str) -> dict[str, Any]:
    """An Airbyte LOG message."""
    return {"type": "LOG", "log": {"level": level, "message": message}}


def error_trace(error: BaseException) -> dict[str, Any]:
    """An ERROR trace for a failure: what went wrong and what to do (the SDK's messages carry no secret)."""
    config_error = isinstance(error, (ConfigError, UsageError)) or exit_code_for(error) in (
        ExitCode.CREDENTIALS,
        ExitCode.CLIENT,
        ExitCode.USAGE,
    )
    return {
        "type": "TRACE",
        "trace": {
            "type": "ERROR",
            "emitted_at": float(_ms()),
            "error": {
                "message": str(error),
                "internal_message": type(error).__name__,
                "failure_type": "config_error" if config_error else "system_error",
            },
        },
    }


async def sample_schema(crawler: Crawler, connection: Any, *, records: int = 100) -> dict[str, Any]:
    """The crawler's declared schema, or one inferred from its first ``records`` records."""
    from .schema import declared_schema, widen

    if records < 1:
        raise UsageError(f"the sample must be at least 1 record, not {records}")
    declared = declared_schema(crawler)
    if declared is not None:
        return declared
    schema: dict[str, Any] = {"type": ["object"], "properties": {}}
    seen = 0
    async with open_tokens(connection) as tokens:
        stream = cast(AsyncGenerator[Any, None], crawler.records(tokens))
        async with contextlib.aclosing(stream):
            async for record in stream:
                if isinstance(record, dict) and record.get("_deleted") is True and "record" in record:
                    record = record["record"]
                schema = widen(schema, record)
                seen += 1
                if seen >= records:
                    break
    return schema


async def catalog(crawler: Crawler, connection: Any, *, sample: int = 100) -> dict[str, Any]:
    """The CATALOG message of ``discover``: the crawler's one stream."""
    schema = await sample_schema(crawler, connection, records=sample)
    schema.setdefault("properties", {})[DELETED_AT] = {"type": ["null", "string"], "format": "date-time"}
    stream: dict[str, Any] = {
        "name": stream_name(crawler),
        "json_schema": schema,
        "supported_sync_modes": ["full_refresh", "incremental"] if crawler.is_incremental else ["full_refresh"],
    }
    if crawler.primary_key is not None:
        stream["source_defined_primary_key"] = [path_keys(crawler.primary_key)]
    if crawler.is_incremental:
        stream["source_defined_cursor"] = True
        stream["is_resumable"] = True
        if crawler.updated_field is not None:
            stream["default_cursor_field"] = path_keys(crawler.updated_field)
    return {"type": "CATALOG", "catalog": {"streams": [stream]}}


async def run_check(connection: Mapping[str, Any]) -> dict[str, Any]:
    """The CONNECTION_STATUS message of ``check``: a login (and a refresh when one is possible)."""
    try:
        result = await check_connection(load_config(connection))
    except ConfigError as exc:
        return {"type": "CONNECTION_STATUS", "connectionStatus": {"status": "FAILED", "message": str(exc)}}
    if result.error is not None:
        return {"type": "CONNECTION_STATUS", "connectionStatus": {"status": "FAILED", "message": str(result.error)}}
    return {"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}}


def _selected(configured: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(configured, dict) or not isinstance(configured.get("streams"), list):
        raise UsageError("the configured catalog must be a JSON object with a 'streams' list (from discover)")
    for entry in configured["streams"]:
        if isinstance(entry, dict) and isinstance(entry.get("stream"), dict) and entry["stream"].get("name") == name:
            return entry
    return None


def _state_document(state: Any, name: str) -> Any:
    """The crawl state document for stream ``name`` in an Airbyte state (a list of state messages)."""
    if state in (None, [], {}):
        return None
    if not isinstance(state, list):
        raise UsageError("--state must be a JSON list of Airbyte STREAM state messages (the last STATE of a read)")
    for message in state:
        stream = message.get("stream") if isinstance(message, dict) else None
        if isinstance(stream, dict) and (stream.get("stream_descriptor") or {}).get("name") == name:
            blob = stream.get("stream_state") or {}
            return blob.get(STATE_KEY) if isinstance(blob, dict) else None
    return None


async def read(
    crawler: Crawler,
    connection: Any,
    configured: Any,
    state: Any,
    out: IO[bytes],
    **crawl_options: Any,
) -> int:
    """``read``: crawl the stream if the catalog selects it; returns the exit code."""
    name = stream_name(crawler)
    entry = _selected(configured, name)
    if entry is None:
        out.write(orjson.dumps(log_message("INFO", f"stream {name} is not selected in the catalog")) + b"\n")
        return ExitCode.OK
    full_refresh = entry.get("sync_mode") != "incremental"
    document = None if full_refresh else _state_document(state, name)
    with tempfile.TemporaryDirectory(prefix="oauthpw-airbyte-") as folder:
        path = Path(folder) / "state.json"
        if document is not None:
            path.write_bytes(orjson.dumps(document))
        sink = AirbyteSink(out, crawler, path)
        try:
            async with open_tokens(connection) as tokens:
                stats = await crawler.crawl(tokens, sink, state=path, **crawl_options)
        except OAuthPWError as exc:
            await sink.end("INCOMPLETE", exc)
            return exit_code_for(exc)
        if not stats.complete:
            for partition, reasons in stats.incomplete.items():
                sink.log("WARN", f"partition {partition} is incomplete: {', '.join(reasons)}")
            await sink.end("INCOMPLETE")
            return ExitCode.INCOMPLETE
        await sink.end("COMPLETE")
    return ExitCode.OK
