"""The ``oauthpw-async`` command: check a connection, run a crawler, run the demo, serve the test server.

Records go to stdout as JSON Lines unless --out names a file; progress, logs and summaries go
to stderr whenever stdout carries records. Secrets never appear in any output. The exit codes
are :data:`oauthpw_async.check.EXIT_CODE_MEANINGS` (``--help`` prints them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import shlex
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import attrs
import orjson

from . import state_cli
from .check import (
    CheckResult,
    ExitCode,
    ProbeResult,
    check_connection,
    exit_code_for,
    exit_codes_text,
    probe_api,
)
from .crawler import Crawler, CrawlStats, JsonLinesSink, Sink, StreamSink
from .crawler.checkpoint import Checkpoints
from .crawler.sinks import STREAM
from .errors import ConfigError, CrawlError, OAuthPWError, StateError, TokenError, UsageError
from .fleet import command as fleet_command  # imports no Redis client until a fleet is used
from .fleet.errors import FleetError
from .integrations import command as integrations  # imports an integration only when used
from .provider import RefreshPolicy, TokenProvider
from .report import (
    Progress,
    RunSummary,
    format_check,
    format_interrupted,
    format_nothing_to_do,
    format_summary,
    print_lines,
    row,
)
from .sources import StaticToken, load_token_source
from .store import FileTokenStore, MemoryTokenStore

__all__ = ["build_parser", "main"]

log = logging.getLogger("oauthpw_async.cli")

#: The logger of the crawl engine, incremental sync and checkpoints: its warnings concern the data.
DATA_LOGGER = "oauthpw_async.crawler"


class _DataWarnings(logging.Handler):
    """Keeps the warnings about the data a crawl logged, for its summary (bounded; the log has them all)."""

    LIMIT = 100

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < self.LIMIT:
            self.messages.append(record.getMessage())


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _command(argv: Sequence[str]) -> str:
    """The command line as the user would type it again."""
    return shlex.join(["oauthpw-async", *argv])


def _silence_stdout() -> None:
    """Point stdout at /dev/null after its reader left, so exit-time flushes cannot fail.

    The approach the Python documentation gives for SIGPIPE (library/signal.html, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# --- check ---------------------------------------------------------------------------------------


async def _check(args: argparse.Namespace) -> int:
    probe_url = _probe_url(args)
    try:
        source = load_token_source(args.config)  # a password grant or a static token, as crawl takes it
    except ConfigError as exc:
        if args.json:
            print(orjson.dumps(CheckResult.from_config_error(exc).as_dict()).decode(), flush=True)
        _err(str(exc))
        return ExitCode.USAGE
    if isinstance(source, StaticToken):
        if args.token_store:
            raise UsageError("--token-store keeps renewed tokens; a static token is never renewed, so drop it")
        return await _check_static(source, probe_url, as_json=args.json)
    config = source.config
    store = FileTokenStore(args.token_store) if args.token_store else None
    # With --probe the check's token is kept (in memory at least) so the probe sends no second login.
    kept = store if store is not None or probe_url is None else MemoryTokenStore()
    result = await check_connection(config, store=kept)
    if store is None:
        result = attrs.evolve(result, stored=False)
    probe = None
    if probe_url is not None and result.error is None:
        async with TokenProvider(config, store=kept) as tokens:
            probe = await probe_api(tokens, probe_url)
    if args.json:
        doc = result.as_dict()
        if probe is not None:
            doc["probe"] = probe.as_dict()
            doc["ok"] = doc["ok"] and probe.error is None
            doc["exit_code"] = int(probe.exit_code) if result.error is None else doc["exit_code"]
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode(), flush=True)
    else:
        print_lines(format_check(result), sys.stdout)
        if probe is not None:
            print(_probe_line(probe), flush=True)
    if result.error is not None:
        _err(str(result.error))
        return result.exit_code
    if probe is not None and probe.error is not None:
        _err(str(probe.error))
        return probe.exit_code
    return ExitCode.OK


def _probe_url(args: argparse.Namespace) -> str | None:
    target = args.probe
    if not isinstance(target, str):
        return None
    if target.startswith(("https://", "http://")):
        return target
    if not args.base_url:
        raise UsageError("--probe with a path needs --base-url (or give --probe a whole http(s):// URL)")
    return str(args.base_url).rstrip("/") + "/" + target.lstrip("/")


def _probe_line(probe: ProbeResult) -> str:
    answer = f"HTTP {probe.status}" if probe.status is not None else "no answer"
    verdict = "OK" if probe.error is None else "FAILED"
    return f"probe GET {probe.url}: {answer} in {probe.seconds:.2f}s: {verdict}"


async def _check_static(source: StaticToken, probe_url: str | None, *, as_json: bool) -> int:
    """``check`` on a static-token connection: the file is valid (it loaded); with a probe, one API call."""
    cfg = source.config
    probe = await probe_api(source, probe_url) if probe_url is not None else None
    code = probe.exit_code if probe is not None else ExitCode.OK
    if as_json:
        doc = {
            "ok": code == ExitCode.OK,
            "exit_code": int(code),
            "kind": "static token",
            "token_from": cfg.token_from,
            "auth_scheme": None if cfg.use_raw_token else cfg.auth_scheme,
            "probe": probe.as_dict() if probe is not None else None,
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode(), flush=True)
    else:
        scheme = "sent as the whole Authorization header" if cfg.use_raw_token else f"scheme {cfg.auth_scheme}"
        print(f"static token from {cfg.token_from} ({scheme}): the connection file is valid", flush=True)
        if probe is None:
            print("no token request to test (a static token is never renewed); --probe URL calls the API", flush=True)
        else:
            print(_probe_line(probe), flush=True)
    if probe is not None and probe.error is not None:
        _err(str(probe.error))
    return code


# --- crawl ---------------------------------------------------------------------------------------


def _load_crawler(spec: str) -> type[Crawler]:
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
class _CrawlJob:
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
    fleet: fleet_command.FleetWorker | None = None
    #: ``--format``: JSON Lines, or a protocol's messages (README "Data platforms").
    format: str = "jsonl"
    #: ``--format singer --catalog``: what the catalog selects (``None``: everything).
    catalog: object = None

    @property
    def positions(self) -> str | None:
        """Where positions are saved, for messages (the state file or the fleet's Redis)."""
        return self.fleet.where if self.fleet is not None else self.state


async def _crawl(job: _CrawlJob, report: TextIO) -> tuple[int, CrawlStats | None, TokenProvider | StaticToken | None]:
    """Run one crawl with signal handling, print its summary; returns (exit code, stats, provider)."""
    names = [p.name for p in job.crawler.partitions()]
    incremental = job.crawler.is_incremental and job.fleet is None  # a fleet's summary gives its round
    before = _state_before(None if job.fresh else job.state, names, incremental=incremental, out=job.out)
    out_name = str(job.out) if job.out is not None else "stdout"
    if job.state and names and before.done == len(names) and not job.crawler.is_incremental:
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
        return ExitCode.OK, None, None

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
    sink: Sink | None = None
    tokens = job.tokens
    data_warnings = _DataWarnings()
    logging.getLogger(DATA_LOGGER).addHandler(data_warnings)
    progress = integrations.progress_for(tokens) or Progress(tokens, live=sys.stderr.isatty())
    started = time.monotonic()
    stats: CrawlStats | None = None
    outcome = "finished"
    code: int = ExitCode.OK
    try:
        # Opened inside the try: a locked or unwritable output is a crawl error (exit 7), not a traceback.
        sink = integrations.sink_for(job.format, job.crawler, job.state, job.catalog)
        sink = sink or (JsonLinesSink(job.out) if job.out is not None else StreamSink(sys.stdout.buffer))
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
        if not stats.complete and not job.allow_incomplete:
            code = ExitCode.INCOMPLETE
    except asyncio.CancelledError:
        if not got:
            raise
        outcome = "interrupted"
        code = ExitCode.TERMINATED if got[0] == signal.SIGTERM else ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout left (`| head`): stop quietly; the page being written was not checkpointed.
        _silence_stdout()
        print(format_interrupted(job.positions, job.command, "stdout was closed"), file=sys.stderr, flush=True)
        return ExitCode.BROKEN_PIPE, progress.last, tokens
    except (TokenError, CrawlError, FleetError) as exc:
        _err(str(exc))
        outcome = "failed"
        code = exit_code_for(exc)
    finally:
        logging.getLogger(DATA_LOGGER).removeHandler(data_warnings)
        await integrations.finish(sink)
        if isinstance(sink, JsonLinesSink):
            sink.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
                if got:  # stopping already: further signals must not kill us before the exit code is set
                    signal.signal(signum, signal.SIG_IGN)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
    shown = stats or progress.last
    if shown is not None:
        total = _count_records(job.out) if job.out is not None and job.out.exists() else None
        summary = RunSummary(
            stats=shown,
            tokens=tokens.stats,
            elapsed=time.monotonic() - started,
            output=out_name,
            output_records=total,
            resumed=before.resumed,
            already_done=before.done,
            outcome=outcome,
            data_warnings=tuple(data_warnings.messages),
            data_warning_count=data_warnings.count,
            incremental_run=before.incremental_run,
        )
        print_lines(format_summary(summary), report)
        for key, value in state_cli.cursor_rows(shown):  # incremental crawlers: cursor before -> after
            print(f"  {key:<18} {value}", file=report)
        if job.fleet is not None:
            print_lines(job.fleet.summary(), report)
    if outcome == "interrupted":
        print(format_interrupted(job.positions, job.command), file=sys.stderr, flush=True)
    elif code == ExitCode.INCOMPLETE:
        _err("the crawl finished INCOMPLETE (see above); pass --allow-incomplete to accept that")
    return code, stats, tokens


async def _run_crawl_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
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
    crawler = _load_crawler(args.crawler)(base_url=args.base_url)
    fleet = None
    if args.coordinator:  # one worker of a fleet: the token too is shared when it is renewable
        fleet, tokens = fleet_command.worker_for(args, tokens, store)
    out = None if args.out in (None, "-") else Path(args.out)
    command = _command(argv)
    job = _CrawlJob(
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
        print(state_cli.full_refresh_notice(args.state), file=sys.stderr if out is None else sys.stdout)
    # Records on stdout: everything else on stderr, so the output pipes cleanly.
    code, _, _ = await _crawl(job, sys.stderr if out is None else sys.stdout)
    return code


# --- demo and serve --------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .demo import DemoItems, demo_files, plan_demo, verify_output
    from .testing import LocalServer

    plan = plan_demo(args.records, args.token_lifetime)
    jsonl, state_file = demo_files(Path(args.out), resume=args.resume)
    resume_argv = [*argv] if args.resume else [*argv, "--resume"]
    fresh_argv = [a for a in argv if a != "--resume"]
    out = sys.stdout
    async with LocalServer(plan.auth, api=plan.api) as server:
        print(f"demo: local authorization server and API on {server.base_url}", file=out)
        print(f"demo: {plan.describe()}", file=out, flush=True)
        job = _CrawlJob(
            # No token store: each demo run has its own server, which would not know a stored token.
            tokens=TokenProvider(server.config()),
            crawler=DemoItems(base_url=server.base_url),
            out=jsonl,
            state=str(state_file),
            concurrency=args.concurrency,
            rate=None,
            command=_command(resume_argv),
            restart=_command(fresh_argv),  # without --resume the demo removes its files itself
            restart_appends=False,
            allow_incomplete=False,
        )
        code, stats, _ = await _crawl(job, out)
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
    from .testing.changes import incremental_demo

    print("\ndemo: incremental sync (a second source; run 2 fetches only what changed)", file=out, flush=True)
    changed = max(1, args.incremental_records // 100)
    return await incremental_demo(out, records=args.incremental_records, changed=changed, out_dir=args.out)


def _api_fault(text: str) -> tuple[int, int, str | None]:
    """``STATUS[:RETRY_AFTER]@N`` as (request index, status, Retry-After)."""
    fault, at, index = text.partition("@")
    status, _, retry_after = fault.partition(":")
    try:
        n = int(index) if at else 0
        code = int(status)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STATUS[:RETRY_AFTER]@N, e.g. 429:2@100; got {text!r}") from None
    if not 400 <= code <= 599 or n < 0:
        raise argparse.ArgumentTypeError(f"the status must be 400-599 and N at least 0; got {text!r}")
    return n, code, retry_after or None


async def _serve(args: argparse.Namespace) -> int:
    from .testing import AuthServerState, Fault, LocalServer
    from .testing.api import ApiFault, DemoAPI

    state = AuthServerState(
        token_lifetime=args.token_lifetime, latency=args.token_latency, lockout_after=args.lockout_after
    )
    for _, status, retry_after in args.token_fault:
        state.inject(Fault("status", status=status, retry_after=retry_after))
    api = DemoAPI(per_project=max(1, args.records // 3), max_page_size=args.page_size, latency=args.api_latency)
    pending = sorted(args.api_fault)

    def inject(served: int) -> None:
        while pending and served >= pending[0][0]:
            _, status, retry_after = pending.pop(0)
            api.inject(ApiFault("status", status=status, retry_after=retry_after))

    api.on_request = inject
    out = sys.stdout
    async with LocalServer(state, api=api, port=args.port) as server:
        conf = server.connection()
        print(f"serving on {server.base_url} (token endpoint {server.token_url}; API under /api/)", file=out)
        print("test credentials (local test server only) as a config file:", file=out)
        print(orjson.dumps(conf, option=orjson.OPT_INDENT_2).decode(), file=out, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    return ExitCode.OK


# --- entry point -----------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's default shown (unless it has none to show)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default is not argparse.SUPPRESS
            and action.default != []
        ):
            text += " (default: %(default)s)"
        return text


SERVE_DESCRIPTION = """\
Serve a test authorization server and a protected, paginated JSON API on 127.0.0.1, to try a
crawler or an integration without a real system. It prints a connection file for itself (test
credentials of this local server only), then serves until Ctrl-C or SIGTERM (exit 0).

Routes:
  POST /oauth/token        the token endpoint: grant_type=password or refresh_token; client id and
                           secret in the form body or HTTP Basic. Answers {"access_token",
                           "token_type": "Bearer", "expires_in", "refresh_token"}; refresh tokens
                           are single use (each refresh returns a new one). Errors are RFC 6749
                           JSON {"error", "error_description"}: 400 invalid_grant (wrong password;
                           the account locks after --lockout-after failures), 401 invalid_client,
                           400 unsupported_grant_type, 400 invalid_request.
  GET  /api/<style>/items  one page of ?project=alpha|beta|gamma (default alpha); each item is
                           {"id", "project", "title", "hash"}; at most --page-size per page.
  GET  /api/items/<id>     one item's detail: {"id", "body", "priority"}.
  GET  /api/ping           {"ok": true}.
Every /api route wants "Authorization: Bearer <access token>" and answers 401
{"error": "invalid_token"} with a WWW-Authenticate header to an expired or unknown token.

Pagination styles (<style>): request parameters -> response
  offset   offset, limit       {"items", "total", "offset"} and a Link rel="next" header
  cursor   cursor, limit       {"data", "meta": {"has_more", "next_cursor"}}
  page     page, per_page      {"results", "page", "total_pages", "count"}
  nexturl  after, limit        {"records", "totalSize", "done", "nextRecordsUrl"} (a relative URL)
  odata    $skip, $top         {"value", "@odata.nextLink"} (an absolute URL)
  link     page, per_page      a bare JSON list and a Link rel="next" header

Fault switches: --token-fault, --api-fault, --token-latency, --api-latency, --lockout-after.
"""


_DESCRIPTION = (
    "Check a connection, run a crawler, show or reset its state, run one worker of a fleet, run the demo, "
    "or serve the test server. Records go to stdout as JSON Lines unless --out names a file; progress, logs "
    "and summaries go to stderr whenever stdout carries records. Secrets never appear in any output."
)


def _para(text: str) -> str:
    return textwrap.fill(text, width=96)


def _add_verbose(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log each token request (grant, URL without query, attempt) and each retry; never a secret "
        "(warnings about the data are shown without it)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option)."""
    parser = argparse.ArgumentParser(
        prog="oauthpw-async",
        description=_para(_DESCRIPTION),
        epilog="exit codes (every subcommand):\n" + exit_codes_text(),
        formatter_class=_HelpFormatter,
    )
    _add_verbose(parser, default=False)
    integrations.add_global_options(parser)  # --log-format
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{check,crawl,state,fleet,demo,serve,schema,airbyte}"
    )
    # On a subcommand, -v must not reset a -v given before it: its default is "not given".
    quiet = argparse.SUPPRESS

    p = sub.add_parser(
        "check",
        help="log in once, refresh once when a refresh token came back, show what came back (masked)",
        description=_para(
            "Log in once with the password, then refresh once whenever a refresh token came back "
            "(at the Refresh Token URL, or the Access Token URL when none is set), and show each answer "
            "with secrets masked. A rejected password is never retried. A static-token connection (the file crawl "
            "takes) is validated; --probe then tries either kind of token on one API URL."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_verbose(p, default=quiet)
    p.add_argument("--config", required=True, help="connection file (.json or .toml)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document (secrets masked)")
    p.add_argument(
        "--token-store",
        metavar="PATH",
        help="keep the newest token in this file (0600) so crawls using it start without a login (default: not kept)",
    )
    p.add_argument(
        "--probe",
        metavar="URL",
        help="then GET this API URL (or a path under --base-url) with the token and report the status, never the "
        "token; a static-token connection is checked this way (default: no API call)",
    )
    p.add_argument("--base-url", metavar="URL", help="the API base URL a --probe path is joined to (default: none)")

    p = sub.add_parser(
        "crawl",
        help="run a crawler: JSON Lines to stdout or --out, resumable with --state",
        description=_para(
            "Run a Crawler subclass. Records go to stdout as JSON Lines (progress and the "
            "summary to stderr) unless --out names a file. With --state, positions are saved after each "
            "page and the same command resumes after Ctrl-C, SIGTERM, a closed pipe or a crash. With "
            "--format singer it is a Singer tap: --discover prints its catalog, --catalog (or --properties) "
            "selects what it sends, --state resumes from the last STATE."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_verbose(p, default=quiet)
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
        "wait this long for them to resume, then the crawl fails (default: 900)",
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
    state_cli.add_parser(sub)
    fleet_command.add_parser(sub, _HelpFormatter)
    integrations.add_parsers(sub, _HelpFormatter)  # airbyte, schema

    p = sub.add_parser(
        "demo",
        help="crawl the built-in demo server end to end, with progress",
        description=_para(
            "Start a local authorization server and API, crawl them end to end while short-lived "
            "tokens expire and refresh and a few 429s and 5xx are injected, then check the output."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_verbose(p, default=quiet)
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

    p = sub.add_parser(
        "serve",
        help="run the local test server (token endpoint and paginated API) on 127.0.0.1",
        description=SERVE_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _add_verbose(p, default=quiet)
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--token-lifetime", type=float, default=60.0, metavar="SECONDS", help="access token lifetime")
    p.add_argument("--records", type=int, default=3000, help="dataset size, split over the three projects")
    p.add_argument("--page-size", type=int, default=100, help="largest page the API returns")
    p.add_argument("--lockout-after", type=int, default=5, help="failed logins after which the account locks")
    p.add_argument("--token-latency", type=float, default=0.0, metavar="SECONDS", help="delay of every token answer")
    p.add_argument("--api-latency", type=float, default=0.0, metavar="SECONDS", help="delay of every API answer")
    p.add_argument(
        "--token-fault",
        type=_api_fault,
        action="append",
        default=[],
        metavar="STATUS[:RETRY_AFTER]",
        help="answer the next token request with this status (and Retry-After); repeat for more, in order "
        "(default: none)",
    )
    p.add_argument(
        "--api-fault",
        type=_api_fault,
        action="append",
        default=[],
        metavar="STATUS[:RETRY_AFTER]@N",
        help="answer the API request after the first N with this status (and Retry-After); repeatable (default: none)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    integrations.configure_logging(args)  # --log-format json
    if not args.verbose:
        logging.getLogger("oauthpw_async").setLevel(logging.ERROR)
        # What concerns the data (a partition restarted or incomplete, records moved or dropped as already
        # written, cursors ignored) always reaches stderr: -v adds detail, it does not unlock these.
        logging.getLogger(DATA_LOGGER).setLevel(logging.WARNING)
        # The Redis client logs its connection failures with tracebacks; the fleet reports them typed.
        logging.getLogger("coredis").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    try:
        if args.command == "check":
            return asyncio.run(_check(args))
        if args.command == "crawl":
            return asyncio.run(_run_crawl_command(args, argv))
        if args.command == "state":
            return state_cli.run(args, sys.stdout)
        if args.command == "fleet":
            return fleet_command.run(args, sys.stdout)
        if args.command in integrations.COMMANDS:
            return asyncio.run(integrations.run(args))
        if args.command == "demo":
            return asyncio.run(_demo(args, argv))
        return asyncio.run(_serve(args))
    except OAuthPWError as exc:  # ConfigError, UsageError, StateError raised before or outside a crawl
        _err(str(exc))
        return exit_code_for(exc)
    except BrokenPipeError:  # the reader of stdout left (`| head`): no traceback
        _silence_stdout()
        return ExitCode.BROKEN_PIPE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
