"""``--log-format json``: log records and the crawl's progress as one JSON object a line, on stderr.

Each log record is ``{"time", "level", "logger", "message"}``; each progress line is
``{"time", "level": "INFO", "logger": "oauthpw_async.progress", "message": "progress", ...}`` with
the figures the text progress line shows, as numbers: ``records``, ``expected_records``,
``pages``, ``requests``, ``requests_per_s``, ``retries``, ``unauthorized``, ``token_logins``,
``token_refreshes``, ``rate_limit_pauses``, ``partitions_done``, ``partitions_total``,
``elapsed_s``, ``eta_s``. Messages are the SDK's own, which never carry a secret.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from ..crawler import CrawlStats
from ..sources import StaticToken, TokenSource
from .report import Progress

__all__ = ["JsonFormatter", "JsonProgress", "progress_fields"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON: time, level, logger, message (and the exception's type, if any)."""
        data: dict[str, Any] = {
            "time": _now(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = record.exc_info[0].__name__
        return orjson.dumps(data).decode()


def progress_fields(stats: CrawlStats, tokens: TokenSource | StaticToken, elapsed: float) -> dict[str, Any]:
    """The progress line's figures, as numbers."""
    token_stats = getattr(tokens, "stats", None)
    elapsed = max(elapsed, 1e-6)
    return {
        "records": stats.records,
        "expected_records": stats.expected_records,
        "pages": stats.pages,
        "requests": stats.requests,
        "requests_per_s": round(stats.requests / elapsed, 1),
        "retries": stats.retries,
        "unauthorized": stats.unauthorized,
        "token_logins": getattr(token_stats, "logins", 0),
        "token_refreshes": getattr(token_stats, "refreshes", 0),
        "rate_limit_pauses": stats.rate_limit_pauses,
        "partitions_done": stats.partitions_done,
        "partitions_total": stats.partitions_total,
        "elapsed_s": round(elapsed, 3),
        "eta_s": stats.eta_seconds(),
    }


class JsonProgress(Progress):
    """The progress line as JSON objects (rate-limited like the text one; the final one always)."""

    def __init__(self, tokens: Any, *, every: float = 2.0, stream: TextIO | None = None) -> None:
        super().__init__(tokens, live=False, every=every, stream=stream if stream is not None else sys.stderr)

    def __call__(self, stats: CrawlStats) -> None:
        """Write the figures as one JSON line, at most every ``every`` seconds."""
        self.last = stats
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        line = {
            "time": _now(),
            "level": "INFO",
            "logger": "oauthpw_async.progress",
            "message": "progress",
            **progress_fields(stats, self.tokens, now - self._started),
        }
        print(orjson.dumps(line).decode(), file=self.stream, flush=True)
