"""The state side of the command line: ``oauthpw-async state show|reset``, ``crawl --full-refresh`` texts.

Kept apart from the other commands; :mod:`oauthpw_async.cli` calls :func:`add_parser`, :func:`run`,
:func:`cursor_rows` and :func:`full_refresh_notice`. A state file holds positions (where each
partition's crawl is), incremental cursors (where the next run starts) and the incremental run
in flight; nothing in it is secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..crawler.checkpoint import Checkpoints
from ..crawler.engine import CrawlStats
from ..crawler.incremental import CursorState
from ..crawler.pagination import PageRequest
from ..errors import FileLocked, StateError
from ..redact import without_credentials

__all__ = ["add_parser", "cursor_rows", "full_refresh_notice", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``state`` command (``show`` and ``reset``) to the CLI's subcommands."""
    p = sub.add_parser("state", help="show or reset a crawl's state file (positions and incremental cursors)")
    commands = p.add_subparsers(dest="state_command", required=True)
    show = commands.add_parser("show", help="print each partition's position and incremental cursor")
    show.add_argument("--state", required=True, help="the crawl's state file")
    show.add_argument("--json", action="store_true", help="print the file's content as JSON")
    reset = commands.add_parser(
        "reset", help="forget positions and cursors, so the next crawl reads everything (asks nothing)"
    )
    reset.add_argument("--state", required=True, help="the crawl's state file")
    reset.add_argument(
        "--partition", action="append", help="only this partition (repeatable) (default: every partition)"
    )
    reset.add_argument(
        "--keep-cursors", action="store_true", help="forget positions only: the next crawl is a new incremental run"
    )


def _request(data: Any) -> str:
    request = PageRequest.from_json(data)
    query = "&".join(f"{k}={v}" for k, v in request.params)
    return request.url + (f"?{query}" if query else "")


def _shown(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every saved position's credential parameters dropped (files written before they were)."""
    partitions = {}
    for name, entry in doc["partitions"].items():
        if isinstance(entry, dict) and entry.get("next"):
            request = PageRequest.from_json(entry["next"])
            url, params = without_credentials(request.url, request.params)
            entry = {**entry, "next": PageRequest(url, params).to_json()}
        partitions[name] = entry
    return {**doc, "partitions": partitions}


def _show(cp: Checkpoints, out: TextIO) -> None:
    doc = _shown(cp.document())
    positions, cursors, runs = doc["partitions"], doc.get("cursors", {}), doc.get("runs", {})
    names = sorted(set(positions) | set(cursors) | set(runs))
    if not names:
        print(f"{cp.path}: empty (the next crawl reads everything)", file=out)
        return
    for name in names:
        print(f"partition {name}", file=out)
        entry = positions.get(name)
        if entry is None:
            print("  position   not started", file=out)
        elif entry.get("done"):
            print(f"  position   done ({entry.get('pages', 0)} pages, {entry.get('records', 0)} records)", file=out)
        else:
            print(f"  position   next {_request(entry['next'])} (after {entry.get('pages', 0)} pages)", file=out)
        for problem in entry.get("problems", []) if entry else []:
            print(f"  problem    {problem}", file=out)
        cursor = CursorState.from_json(cursors.get(name))
        if name in cursors:
            print(
                f"  cursor     {cursor.describe() or 'none (no record had an update time)'} "
                f"after {cursor.runs} run(s); {len(cursor.recent)} recent keys",
                file=out,
            )
            last = cursor.last_run
            if last:
                facts = ", ".join(f"{k} {v}" for k, v in last.items() if v is not None)
                print(f"  last run   {facts}", file=out)
        else:
            print("  cursor     none: the next run reads everything", file=out)
        if name in runs:
            facts = ", ".join(f"{k} {v}" for k, v in runs[name].items() if v is not None)
            print(f"  in flight  {facts}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``state show`` or ``state reset``; returns the exit code (2: no usable state file)."""
    path = Path(args.state)
    if not path.exists():
        print(f"error: there is no state file {path}", file=sys.stderr)
        return 2
    try:
        cp = Checkpoints(path)
        if args.state_command == "show":
            cp.read()  # looks only: no lock, nothing written
            if args.json:
                print(orjson.dumps(_shown(cp.document()), option=orjson.OPT_INDENT_2).decode(), file=out)
            else:
                _show(cp, out)
            return 0
        cursors = not args.keep_cursors

        async def reset() -> list[str]:
            await cp.open()  # refused while a crawl uses the file
            try:
                return await cp.reset(args.partition, cursors=cursors)
            finally:
                cp.close()

        forgotten = asyncio.run(reset())
    except (StateError, FileLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = "positions and cursors" if cursors else "positions (cursors kept)"
    if forgotten:
        print(f"reset {path}: forgot the {what} of {', '.join(forgotten)}", file=out)
        then = "reads everything" if cursors else "is a new incremental run"
        print(f"the next crawl of {'these partitions' if len(forgotten) > 1 else 'it'} {then}", file=out)
    else:
        print(f"reset {path}: nothing to forget", file=out)
    return 0


def cursor_rows(stats: CrawlStats) -> list[tuple[str, str]]:
    """Summary rows for an incremental crawl: per partition, its mode and cursor before and after."""
    rows = []
    for name, ps in sorted(stats.partitions.items()):
        sync = ps.sync
        if sync is None:
            continue
        mode = sync.mode + (" since " + sync.since if sync.since else "") + (", resumed" if sync.resumed else "")
        after = sync.cursor_after if sync.committed else f"{sync.cursor_before or '-'} (not advanced)"
        if not ps.done:
            after = "(not finished)"
        rows.append((f"cursor {name}", f"{sync.cursor_before or '-'} -> {after or '-'} [{mode}]"))
        rows.append(
            (
                f"changes {name}",
                f"{ps.records:,} written, {sync.tombstones:,} deletions, {sync.redelivered:,} re-deliveries dropped, "
                f"{sync.moves:,} moved",
            )
        )
    return rows


def full_refresh_notice(state: str | None) -> str:
    """What ``crawl --full-refresh`` says before it starts."""
    where = f" in {state}" if state else ""
    return f"full refresh: the saved cursors{where} are ignored; every partition is read in full"
