"""The command line's glue for the integrations: ``crawl --format singer`` (and the subcommands).

Kept apart from :mod:`oauthpw_async.cli` so the command imports an integration only when it is
asked for.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..crawler import Crawler, Sink
from ..errors import UsageError

__all__ = ["FORMATS", "add_crawl_options", "finish", "prepare_crawl", "sink_for"]

#: ``crawl --format`` values: the SDK's JSON Lines, or a protocol's messages on stdout.
FORMATS = ("jsonl", "singer")


def add_crawl_options(parser: argparse.ArgumentParser) -> None:
    """``--format`` on ``crawl``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="what goes to stdout: JSON Lines records, or Singer SCHEMA/RECORD/STATE messages (a Singer tap)",
    )


def prepare_crawl(args: argparse.Namespace) -> None:
    """Check ``--format`` against the other options; a protocol run without ``--state`` gets a private one.

    A protocol's STATE messages carry the crawl's state document, so there must be one even when
    the runner has no state yet (its first run): a state file in a temporary folder, removed at exit.
    """
    if args.format == "jsonl":
        return
    if args.out not in (None, "-"):
        raise UsageError(f"--format {args.format} writes its messages to stdout: drop --out and pipe it to the target")
    if getattr(args, "coordinator", None) or getattr(args, "workers", 1) > 1:
        raise UsageError(f"--format {args.format} runs as one process: drop --coordinator / --workers")
    if not args.state:
        folder = tempfile.mkdtemp(prefix="oauthpw-state-")
        atexit.register(shutil.rmtree, folder, True)
        args.state = str(Path(folder) / "state.json")


def sink_for(fmt: str, crawler: Crawler, state: str | None) -> Sink | None:
    """The sink of a protocol format (``None`` for JSON Lines: the command's own)."""
    if fmt == "jsonl":
        return None
    if state is None:  # pragma: no cover - prepare_crawl always sets one
        raise UsageError(f"--format {fmt} needs --state")
    from .singer import SingerSink

    return SingerSink(sys.stdout.buffer, crawler, state)


async def finish(sink: Any) -> None:
    """After the crawl, finished or stopped: a protocol sink sends its last STATE."""
    done = getattr(sink, "finish", None)
    if done is not None:
        with contextlib.suppress(OSError):  # the reader left: the state file still has the positions
            await done()
