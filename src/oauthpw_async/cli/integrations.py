"""The command line's glue for the integrations: ``crawl --format``, ``airbyte`` and ``schema``.

Kept apart from the other commands so the command line imports an integration only when it is
asked for.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from ..crawler import Crawler, Sink
from ..errors import UsageError

__all__ = [
    "COMMANDS",
    "FORMATS",
    "add_crawl_options",
    "add_global_options",
    "add_parsers",
    "configure_logging",
    "finish",
    "prepare_crawl",
    "progress_for",
    "run",
    "singer_preflight",
    "sink_for",
]

#: ``crawl --format`` values: the SDK's JSON Lines, or a protocol's messages on stdout.
FORMATS = ("jsonl", "singer", "airbyte")
#: The subcommands this module runs.
COMMANDS = ("airbyte", "schema")


#: ``--log-format`` values.
LOG_FORMATS = ("text", "json")
_log_format = "text"  # set once per process by configure_logging()


def add_global_options(parser: argparse.ArgumentParser, *, default: object = "text") -> None:
    """``--log-format`` (before the subcommand, or after it with ``default=argparse.SUPPRESS``)."""
    # The help formatter states a default it can see; a suppressed one (the top level's applies) is written out.
    stated = " (default: text)" if default is argparse.SUPPRESS else ""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="stderr logs and progress as text, or as one JSON object a line" + stated,
    )


def configure_logging(args: argparse.Namespace) -> None:
    """With ``--log-format json``: every handler of the root logger writes JSON objects."""
    global _log_format
    _log_format = getattr(args, "log_format", "text")
    if _log_format == "json":
        from .logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def progress_for(tokens: Any) -> Any:
    """The JSON progress writer under ``--log-format json`` (``None``: the command's own)."""
    if _log_format != "json":
        return None
    from .logs import JsonProgress

    return JsonProgress(tokens)


def add_crawl_options(parser: argparse.ArgumentParser) -> None:
    """``--format`` and ``--log-format`` on ``crawl``."""
    add_global_options(parser, default=argparse.SUPPRESS)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="what goes to stdout: JSON Lines records, Singer SCHEMA/RECORD/STATE messages (a Singer tap) "
        "or Airbyte RECORD/STATE/LOG/TRACE messages",
    )
    parser.add_argument(
        "--discover",
        action="store_true",
        help="--format singer: print the stream's Singer catalog (schema, key, replication, selection metadata) "
        "and exit 0 without crawling; a crawler without json_schema has its schema inferred from a sample "
        "read of up to 100 records (default: crawl)",
    )
    parser.add_argument(
        "--catalog",
        "--properties",
        dest="catalog",
        metavar="FILE",
        help="--format singer: the Singer catalog (from --discover, as Meltano selects it; --properties is the "
        "legacy name): a deselected stream is not crawled (nothing is written, exit 0), deselected properties "
        "are left out, and the catalog's schema is the SCHEMA sent (default: every property, the crawler's schema)",
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
    elif not args.restart and Path(args.state).exists():
        # A protocol's runner starts a full (not incremental) stream on every sync: a finished
        # full crawl reads everything again instead of saying there is nothing left to do.
        crawler = _crawler(args.crawler, args.base_url)
        if not crawler.is_incremental:
            from ..crawler import Checkpoints

            saved = Checkpoints(args.state)
            saved.read()
            args.restart = all(saved.is_done(p.name) for p in crawler.partitions())


async def singer_preflight(args: argparse.Namespace) -> int | None:
    """``--discover`` (prints the catalog) and ``--catalog``: an exit code when there is nothing to crawl.

    For a selected stream, sets ``args.catalog_choice`` (what the catalog selects) and returns ``None``.
    """
    args.catalog_choice = None
    discover: bool = getattr(args, "discover", False)
    catalog: str | None = getattr(args, "catalog", None)
    if not discover and catalog is None:
        return None
    if args.format != "singer":
        raise UsageError(
            "--discover and --catalog/--properties are Singer options: add --format singer "
            "(for Airbyte: oauthpw-async airbyte discover / read --catalog)"
        )
    if discover and catalog is not None:
        raise UsageError("--discover prints a catalog, --catalog reads one: give one of them")
    from ..integrations import singer, stream_name

    crawler = _crawler(args.crawler, args.base_url)
    if discover:
        from ..integrations.airbyte import sample_schema

        _print(singer.catalog(crawler, await sample_schema(crawler, args.config)))
        return 0
    assert catalog is not None
    choice = singer.read_catalog(_json_file(catalog, "the Singer catalog"), crawler)
    if not choice.selected:
        print(f"stream {stream_name(crawler)} is not selected in the catalog: nothing to crawl", file=sys.stderr)
        return 0
    args.catalog_choice = choice
    if choice.full_table and crawler.is_incremental:  # the runner asks for everything, not what changed
        args.full_refresh = True
    return None


def sink_for(fmt: str, crawler: Crawler, state: str | None, choice: Any = None) -> Sink | None:
    """The sink of a protocol format (``None`` for JSON Lines: the command's own)."""
    if fmt == "jsonl":
        return None
    if state is None:  # pragma: no cover - prepare_crawl always sets one
        raise UsageError(f"--format {fmt} needs --state")
    if fmt == "airbyte":
        from ..integrations.airbyte import AirbyteSink

        return AirbyteSink(sys.stdout.buffer, crawler, state)
    from ..integrations.singer import SingerSink

    if choice is None:
        return SingerSink(sys.stdout.buffer, crawler, state)
    return SingerSink(sys.stdout.buffer, crawler, state, schema=choice.schema, dropped=choice.dropped)


async def finish(sink: Any) -> None:
    """After the crawl, finished or stopped: a protocol sink sends its last STATE."""
    done = getattr(sink, "finish", None)
    if done is not None:
        with contextlib.suppress(OSError):  # the reader left: the state file still has the positions
            await done()


def add_parsers(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """The ``airbyte`` and ``schema`` subcommands."""
    p = sub.add_parser(
        "airbyte",
        help="run a crawler as an Airbyte source: spec, check, discover, read",
        description="The Airbyte source protocol for one crawler: every message is one JSON line on stdout.",
        formatter_class=formatter,
    )
    p.add_argument("--crawler", required=True, metavar="MODULE:CLASS", help="the Crawler subclass")
    verbs = p.add_subparsers(dest="airbyte_command", required=True, metavar="{spec,check,discover,read}")
    verbs.add_parser("spec", help="the connection fields, as the connector's specification", formatter_class=formatter)
    check = verbs.add_parser(
        "check", help="log in (and refresh once when possible) with the config", formatter_class=formatter
    )
    check.add_argument("--config", required=True, help="the connection fields as JSON (see spec)")
    discover = verbs.add_parser(
        "discover", help="the stream: its JSON Schema, primary key and cursor field", formatter_class=formatter
    )
    discover.add_argument("--config", required=True, help="the connection fields as JSON (see spec)")
    discover.add_argument("--sample", type=int, default=100, help="records read to infer a schema not declared")
    read = verbs.add_parser("read", help="read the stream if the catalog selects it", formatter_class=formatter)
    read.add_argument("--config", required=True, help="the connection fields as JSON (see spec)")
    read.add_argument("--catalog", required=True, help="the configured catalog (JSON)")
    read.add_argument("--state", help="the state: the JSON list of the last read's STATE messages (default: none)")

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a crawler's records, declared or inferred from a sample, to pin as json_schema",
        formatter_class=formatter,
    )
    p.add_argument("--config", required=True, help="connection file (.json or .toml)")
    p.add_argument("--crawler", required=True, metavar="MODULE:CLASS", help="the Crawler subclass")
    p.add_argument("--base-url", help="API root (default: the crawler's base_url)")
    p.add_argument("--sample", type=int, default=100, help="records to read")


def _json_file(path: str, what: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}; give the JSON file it names") from None


def _print(message: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


def _crawler(spec: str, base_url: str | None) -> Crawler:
    from .crawl import load_crawler  # the command's own loader (same errors, same sys.path)

    return load_crawler(spec)(base_url=base_url)


async def _airbyte(args: argparse.Namespace) -> int:
    from ..errors import OAuthPWError
    from ..exit_codes import exit_code_for
    from ..integrations import airbyte

    try:
        if args.airbyte_command == "spec":
            crawler = _crawler(args.crawler, None)  # a wrong --crawler fails here too
            _print(
                {
                    "type": "SPEC",
                    "spec": {
                        "connectionSpecification": airbyte.connection_specification(),
                        "supportsIncremental": crawler.is_incremental,
                        "protocol_version": "0.5.2",
                    },
                }
            )
            return 0
        connection, base_url = airbyte.split_config(args.config)
        if args.airbyte_command == "check":
            _crawler(args.crawler, base_url)
            _print(await airbyte.run_check(connection))
            return 0
        crawler = _crawler(args.crawler, base_url)
        if args.airbyte_command == "discover":
            _print(await airbyte.catalog(crawler, connection, sample=args.sample))
            return 0
        configured = _json_file(args.catalog, "the catalog")
        state = _json_file(args.state, "the state") if args.state else None
        return await airbyte.read(crawler, connection, configured, state, sys.stdout.buffer)
    except OAuthPWError as exc:
        _print(airbyte.error_trace(exc))
        return exit_code_for(exc)


async def _schema(args: argparse.Namespace) -> int:
    from ..integrations.airbyte import sample_schema

    schema = await sample_schema(_crawler(args.crawler, args.base_url), args.config, records=args.sample)
    sys.stdout.buffer.write(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


async def run(args: argparse.Namespace) -> int:
    """Run ``airbyte`` or ``schema``; returns the exit code."""
    if args.command == "airbyte":
        return await _airbyte(args)
    return await _schema(args)
