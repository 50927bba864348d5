"""``oauthpw-async crawl``: run a crawler with checkpoints, signal handling, progress and a summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from ..crawler import Crawler, CrawlStats, JsonLinesSink, Sink, StreamSink
from ..crawler.checkpoint import Checkpoints
from ..crawler.sinks import STREAM
from ..errors import CrawlError, StateError, TokenError, UsageError
from ..exit_codes import ExitCode, exit_code_for
from ..fleet.errors import FleetError
from ..provider import RefreshPolicy, TokenProvider
from ..sources import StaticToken, load_token_source
from ..store import FileTokenStore
from . import fleet as fleet_command
from . import integrations, state
from ._common import DATA_LOGGER, DataWarnings, command_line, err, silence_stdout
from ._help import para, subcommand
from .report import Progress, RunSummary, format_interrupted, format_nothing_to_do, format_summary, print_lines

if TYPE_CHECKING:
    from .fleet import FleetWorker

__all__ = ["CrawlJob", "add_parser", "load_crawler", "run", "run_job"]


def add_parser(sub: Any) -> None:
    """The ``crawl`` subcommand and its options (the fleet's and the integrations' among them)."""
    p = subcommand(
        sub,
        "crawl",
        help="run a crawler: JSON Lines to stdout or --out, resumable with --state",
        description=para(
            "Run a Crawler subclass. Records go to stdout as JSON Lines (progress and the "
            "summary to stderr) unless --out names a file. With --state, positions are saved after each "
            "page and the same command resumes after Ctrl-C, SIGTERM, a closed pipe or a crash. With "
            "--format singer it is a Singer tap: --discover prints its catalog, --catalog (or --properties) "
            "selects what it sends, --state resumes from the last STATE."
        ),
    )
    p.add_argument("--config", required=True, help="connection file (.json or .toml)")
    p.add_argument("--crawler", required=True, metavar="MODULE:CLASS", help="the Crawler subclass to run")
    p.add_argument("--base-url", help="API root (default: the crawler's base_url)")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="JSON Lines file to append records to, fsynced before each checkpoint; '-' for stdout (default: stdout)",
    )
    p.add_argument(
        "--state", metavar="PATH", help="checkpoint file: resume from it, save positions to it (default: none)"
    )
    p.add_argument(
        "--token-store",
        metavar="PATH",
        help="keep the token in this file (0600) across runs, so a resumed or scheduled crawl does not "
        "log in with the password each time (default: in memory only)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="API requests in flight at once")
    p.add_argument("--rate", type=float, help="requests per second per host (default: no limit)")
    p.add_argument(
        "--token-wait",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="while token requests are paused (the login budget, a rate limit of the token endpoint), requests "
        "wait this long for them to resume, then the crawl fails",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="exit 0 even when the crawl finished incomplete (default: exit 8)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: ignore the positions saved in --state (also one saved by another crawl) (default: resume)",
    )
    p.add_argument(
        "--full-refresh",
        action="store_true",
        help="incremental crawlers: ignore the saved cursors and read everything (default: only what changed)",
    )
    fleet_command.add_crawl_options(p)  # --coordinator, --workers... (README "Running a fleet")
    integrations.add_crawl_options(p)  # --format


def load_crawler(spec: str) -> type[Crawler]:
    """The Crawler subclass ``module:Class`` names (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--crawler must be module:Class, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load crawler {spec!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Crawler)):
        raise UsageError(f"{spec} is not a Crawler subclass")
    return obj


@attrs.frozen
class _Before:
    """What the state file said before this run."""

    resumed: bool = False
    done: int = 0
    #: Incremental crawlers: the number of the run that begins now (``None``: a resume, or not incremental).
    incremental_run: int | None = None


def _state_before(state: str | None, names: Sequence[str], *, incremental: bool, out: Path | None) -> _Before:
    """What the state file says before this run: a resume, or (incremental crawlers) a new run and its number."""
    if not state or not Path(state).exists():
        return _Before(incremental_run=1 if incremental else None)
    try:
        cp = Checkpoints(state)
        cp.read()
    except StateError:
        return _Before()  # the crawl itself reports it, with what to do
    done = sum(1 for n in names if cp.is_done(n))
    started = any(cp.is_done(n) or cp.pages(n) or cp.resume_from(n) is not None for n in names)
    recorded = cp.document()["fingerprint"].get("output")
    moved_output = out is not None and recorded not in (None, STREAM, str(out.resolve()))
    if not incremental:
        if moved_output and done == len(names):  # a finished crawl, now into a new output: it starts anew
            return _Before()
        return _Before(resumed=started, done=done)
    runs = max((int((cp.cursor(n) or {}).get("runs", 0)) for n in names), default=0)
    if not started or done == len(names) or moved_output:  # a new run begins (into a new output, maybe)
        return _Before(incremental_run=runs + 1)
    return _Before(resumed=True, done=done)


def _count_records(path: Path) -> int:
    """Lines in a JSON Lines file, read in blocks (the file may be large)."""
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count


@attrs.frozen
class CrawlJob:
    """One crawl as the command runs it."""

    #: The connection's token source, not opened yet (a password grant or a static token).
    tokens: TokenProvider | StaticToken
    crawler: Crawler
    out: Path | None  # None: stdout
    state: str | None
    concurrency: int
    rate: float | None
    #: The same command again (printed to resume).
    command: str
    #: How to start over when there is nothing left to do.
    restart: str
    #: Whether that command appends to the existing output.
    restart_appends: bool
    allow_incomplete: bool
    #: Ignore the saved positions (``--restart``): the state file is started afresh.
    fresh: bool = False
    #: Incremental crawlers: ignore the saved cursors (``--full-refresh``).
    full_refresh: bool = False
    #: One worker of a fleet (``--coordinator``): positions and partitions in Redis.
    fleet: FleetWorker | None = None
    #: ``--format``: JSON Lines, or a protocol's messages (README "Data platforms").
    format: str = "jsonl"
    #: ``--format singer --catalog``: what the catalog selects (``None``: everything).
    catalog: object = None

    @property
    def positions(self) -> str | None:
        """Where positions are saved, for messages (the state file or the fleet's Redis)."""
        return self.fleet.where if self.fleet is not None else self.state


Outcome = tuple[int, CrawlStats | None, TokenProvider | StaticToken | None]
"""What a crawl ends with: its exit code, its figures (if it got going) and its token source."""


def _nothing_to_do(job: CrawlJob, before: _Before, names: Sequence[str], report: TextIO) -> bool:
    """Whether a finished (non-incremental) crawl has nothing left to do; if so, says so."""
    if not (job.state and names and before.done == len(names) and not job.crawler.is_incremental):
        return False
    total = _count_records(job.out) if job.out is not None and job.out.exists() else None
    print_lines(
        format_nothing_to_do(
            job.state,
            len(names),
            str(job.out) if job.out else None,
            total,
            job.restart,
            appends=job.restart_appends,
        ),
        report,
    )
    return True


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM cancel the running task once (an orderly stop); yields the signals received."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[int] = []

    def on_signal(signum: int) -> None:
        got.append(signum)
        if len(got) == 1 and task is not None:  # a second signal must not cut the orderly stop short
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        yield got
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
                if got:  # stopping already: further signals must not kill us before the exit code is set
                    signal.signal(signum, signal.SIG_IGN)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass


async def _crawl_into(job: CrawlJob, sink: Sink, progress: Progress) -> CrawlStats:
    """The crawl itself: a fleet worker's partitions, or the whole crawl with its state file."""
    tokens = job.tokens
    async with job.fleet or contextlib.nullcontext(), tokens:
        with progress:
            if job.fleet is not None:  # one worker of a fleet: the partitions it claims
                stats = await job.fleet.run(
                    job.crawler, tokens, sink, concurrency=job.concurrency, on_progress=progress
                )
            else:
                stats = await job.crawler.crawl(
                    tokens,
                    sink,
                    concurrency=job.concurrency,
                    rate=job.rate,
                    state=Checkpoints(job.state, restart=True) if job.fresh and job.state else job.state,
                    on_progress=progress,
                    full_refresh=job.full_refresh,
                )
            progress.final(stats)
    return stats


@attrs.define
class _Run:
    """How one crawl went, for its summary."""

    progress: Progress
    started: float
    data_warnings: DataWarnings
    stats: CrawlStats | None = None
    outcome: str = "finished"
    code: int = ExitCode.OK


async def run_job(job: CrawlJob, report: TextIO) -> Outcome:
    """Run one crawl with signal handling, print its summary; returns (exit code, stats, provider)."""
    names = [p.name for p in job.crawler.partitions()]
    incremental = job.crawler.is_incremental and job.fleet is None  # a fleet's summary gives its round
    before = _state_before(None if job.fresh else job.state, names, incremental=incremental, out=job.out)
    if _nothing_to_do(job, before, names, report):
        return ExitCode.OK, None, None
    tokens = job.tokens
    sink: Sink | None = None
    progress = integrations.progress_for(tokens) or Progress(tokens, live=sys.stderr.isatty())
    run = _Run(progress=progress, started=time.monotonic(), data_warnings=DataWarnings())
    logging.getLogger(DATA_LOGGER).addHandler(run.data_warnings)
    with _stop_on_signals() as got:
        try:
            # Opened inside the try: a locked or unwritable output is a crawl error (exit 7), not a traceback.
            sink = integrations.sink_for(job.format, job.crawler, job.state, job.catalog)
            sink = sink or (JsonLinesSink(job.out) if job.out is not None else StreamSink(sys.stdout.buffer))
            run.stats = await _crawl_into(job, sink, progress)
            if not run.stats.complete and not job.allow_incomplete:
                run.code = ExitCode.INCOMPLETE
        except asyncio.CancelledError:
            if not got:
                raise
            run.outcome = "interrupted"
            run.code = ExitCode.TERMINATED if got[0] == signal.SIGTERM else ExitCode.INTERRUPTED
        except BrokenPipeError:
            # The reader of stdout left (`| head`): stop quietly; the page being written was not checkpointed.
            silence_stdout()
            print(format_interrupted(job.positions, job.command, "stdout was closed"), file=sys.stderr, flush=True)
            return ExitCode.BROKEN_PIPE, progress.last, tokens
        except (TokenError, CrawlError, FleetError) as exc:
            err(str(exc))
            run.outcome = "failed"
            run.code = exit_code_for(exc)
        finally:
            logging.getLogger(DATA_LOGGER).removeHandler(run.data_warnings)
            await integrations.finish(sink)
            if isinstance(sink, JsonLinesSink):
                sink.close()
    _report(job, before, run, report)
    return run.code, run.stats, tokens


def _report(job: CrawlJob, before: _Before, run: _Run, report: TextIO) -> None:
    """The crawl's summary (when it got going), then what to do next."""
    shown = run.stats or run.progress.last
    if shown is not None:
        total = _count_records(job.out) if job.out is not None and job.out.exists() else None
        summary = RunSummary(
            stats=shown,
            tokens=job.tokens.stats,
            elapsed=time.monotonic() - run.started,
            output=str(job.out) if job.out is not None else "stdout",
            output_records=total,
            resumed=before.resumed,
            already_done=before.done,
            outcome=run.outcome,
            data_warnings=tuple(run.data_warnings.messages),
            data_warning_count=run.data_warnings.count,
            incremental_run=before.incremental_run,
        )
        print_lines(format_summary(summary), report)
        for key, value in state.cursor_rows(shown):  # incremental crawlers: cursor before -> after
            print(f"  {key:<18} {value}", file=report)
        if job.fleet is not None:
            print_lines(job.fleet.summary(), report)
    if run.outcome == "interrupted":
        print(format_interrupted(job.positions, job.command), file=sys.stderr, flush=True)
    elif run.code == ExitCode.INCOMPLETE:
        err("the crawl finished INCOMPLETE (see above); pass --allow-incomplete to accept that")


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``crawl`` (argv: the command line, to print how to resume); returns the exit code."""
    fleet_command.check_crawl_options(args)
    code = await integrations.singer_preflight(args)  # --discover, or a catalog deselecting the stream
    if code is not None:
        return code
    integrations.prepare_crawl(args)
    if args.workers > 1:  # N local worker processes of a fleet, each this command with its own --out
        return await fleet_command.run_workers(args, argv, sys.stdout)
    # A password-grant connection or a static token (Token / Token File), by the fields present.
    store = FileTokenStore(args.token_store) if args.token_store else None
    tokens = load_token_source(args.config, store=store) if store is not None else load_token_source(args.config)
    if not (0 <= args.token_wait < float("inf")):
        raise UsageError(f"--token-wait must be a number of seconds >= 0, got {args.token_wait!r}")
    if isinstance(tokens, TokenProvider):  # how long requests wait out a paused token endpoint (--token-wait)
        tokens = TokenProvider(tokens.config, store=store, refresh=RefreshPolicy(pause_wait=args.token_wait))
    crawler = load_crawler(args.crawler)(base_url=args.base_url)
    fleet = None
    if args.coordinator:  # one worker of a fleet: the token too is shared when it is renewable
        fleet, tokens = fleet_command.worker_for(args, tokens, store)
    out = None if args.out in (None, "-") else Path(args.out)
    command = command_line(argv)
    job = CrawlJob(
        tokens=tokens,
        crawler=crawler,
        out=out,
        state=args.state,
        concurrency=args.concurrency,
        rate=args.rate,
        command=command,
        restart=f"{command} --restart" if args.state and not args.restart else command,
        restart_appends=True,
        allow_incomplete=args.allow_incomplete,
        fresh=args.restart,
        full_refresh=args.full_refresh,
        fleet=fleet,
        format=args.format,
        catalog=args.catalog_choice,
    )
    if args.full_refresh:
        print(state.full_refresh_notice(args.state), file=sys.stderr if out is None else sys.stdout)
    # Records on stdout: everything else on stderr, so the output pipes cleanly.
    code, _, _ = await run_job(job, sys.stderr if out is None else sys.stdout)
    return code
