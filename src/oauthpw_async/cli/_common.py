"""What every command shares: error lines, the command line as typed, a closed stdout, data warnings."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence

__all__ = ["DATA_LOGGER", "DataWarnings", "command_line", "err", "silence_stdout"]

#: The logger of the crawl engine, incremental sync and checkpoints: its warnings concern the data.
DATA_LOGGER = "oauthpw_async.crawler"


class DataWarnings(logging.Handler):
    """Keeps the warnings about the data a crawl logged, for its summary (bounded; the log has them all)."""

    LIMIT = 100

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count the warning; keep its message while under :attr:`LIMIT`."""
        self.count += 1
        if len(self.messages) < self.LIMIT:
            self.messages.append(record.getMessage())


def err(message: str) -> None:
    """Print ``error: message`` on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def command_line(argv: Sequence[str]) -> str:
    """The command line as the user would type it again."""
    return shlex.join(["oauthpw-async", *argv])


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader left, so exit-time flushes cannot fail.

    The approach the Python documentation gives for SIGPIPE (library/signal.html, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
