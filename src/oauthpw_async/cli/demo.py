"""``oauthpw-async demo``: crawl the built-in demo server end to end, with progress, and check the output.

The demo's crawler, plan and output check are library code in :mod:`oauthpw_async.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..exit_codes import ExitCode
from ..provider import TokenProvider
from ._common import command_line
from ._help import para, subcommand
from .crawl import CrawlJob, run_job
from .report import row

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """The ``demo`` subcommand and its options."""
    p = subcommand(
        sub,
        "demo",
        help="crawl the built-in demo server end to end, with progress",
        description=para(
            "Start a local authorization server and API, crawl them end to end while short-lived "
            "tokens expire and refresh and a few 429s and 5xx are injected, then check the output."
        ),
    )
    p.add_argument("--records", type=int, default=30000, help="dataset size")
    p.add_argument("--token-lifetime", type=float, default=3.0, metavar="SECONDS", help="access token lifetime")
    p.add_argument("--concurrency", type=int, default=64, help="API requests in flight at once")
    p.add_argument("--out", default="demo-output", metavar="DIR", help="folder for the JSONL and state files")
    p.add_argument("--resume", action="store_true", help="keep earlier demo output and resume from its state")
    p.add_argument(
        "--incremental-records",
        type=int,
        default=20000,
        help="then sync a second source incrementally: a full run, 1%% changed, a run that reads only those (0: skip)",
    )


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``demo`` (argv: the command line, to print how to resume); returns the exit code."""
    from ..demo import DemoItems, demo_files, plan_demo, verify_output
    from ..testing import LocalServer

    plan = plan_demo(args.records, args.token_lifetime)
    jsonl, state_file = demo_files(Path(args.out), resume=args.resume)
    resume_argv = [*argv] if args.resume else [*argv, "--resume"]
    fresh_argv = [a for a in argv if a != "--resume"]
    out = sys.stdout
    async with LocalServer(plan.auth, api=plan.api) as server:
        print(f"demo: local authorization server and API on {server.base_url}", file=out)
        print(f"demo: {plan.describe()}", file=out, flush=True)
        job = CrawlJob(
            # No token store: each demo run has its own server, which would not know a stored token.
            tokens=TokenProvider(server.config()),
            crawler=DemoItems(base_url=server.base_url),
            out=jsonl,
            state=str(state_file),
            concurrency=args.concurrency,
            rate=None,
            command=command_line(resume_argv),
            restart=command_line(fresh_argv),  # without --resume the demo removes its files itself
            restart_appends=False,
            allow_incomplete=False,
        )
        code, stats, _ = await run_job(job, out)
        if stats is None:  # nothing to do, or stopped before the crawl began
            return code
        auth = plan.auth
        print(
            row(
                "server saw",
                f"{auth.count('password')} login, {auth.count('refresh_token', 'ok')} refresh, "
                f"{auth.count(outcome='invalid_grant')} invalid_grant",
            ),
            file=out,
        )
    outcome = verify_output(jsonl, plan.api)
    verdict = "complete" if outcome.complete else f"INCOMPLETE: {outcome.expected:,} expected"
    print(row("demo check", f"{outcome.distinct:,} distinct records: {verdict}"), file=out, flush=True)
    if code != ExitCode.OK:
        return code
    if not outcome.complete:
        return ExitCode.INCOMPLETE
    if args.incremental_records <= 0:
        return ExitCode.OK
    from ..testing.changes import incremental_demo

    print("\ndemo: incremental sync (a second source; run 2 fetches only what changed)", file=out, flush=True)
    changed = max(1, args.incremental_records // 100)
    return await incremental_demo(out, records=args.incremental_records, changed=changed, out_dir=args.out)
