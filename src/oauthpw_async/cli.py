"""The ``oauthpw-async`` command: check a connection, run a crawler, run the demo, serve the test server.

Exit codes: 0 success; 2 bad configuration or usage; 3 credentials rejected; 4 client
rejected; 5 server unreachable or failing; 6 request rejected otherwise (grant type,
scope, parameters); 7 crawl failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from . import state_cli
from .config import PasswordGrantConfig, load_config
from .crawler import Crawler, CrawlStats, JsonLinesSink, ListSink
from .errors import (
    ConfigError,
    CrawlError,
    DefinitiveTokenError,
    InvalidClient,
    InvalidCredentials,
    TokenError,
    TokenResponseError,
    TransientTokenError,
    UsageError,
)
from .exchange import exchange
from .grant import build_password_request, build_refresh_request, parse_token_response
from .provider import TokenProvider
from .retry import RetryPolicy
from .transport import AiohttpTokenEndpoint

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_CONFIG, EXIT_CREDENTIALS, EXIT_CLIENT, EXIT_SERVER, EXIT_REJECTED, EXIT_CRAWL = 0, 2, 3, 4, 5, 6, 7
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

log = logging.getLogger("oauthpw_async.cli")


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _token_exit(exc: TokenError) -> int:
    if isinstance(exc, InvalidCredentials):
        return EXIT_CREDENTIALS
    if isinstance(exc, InvalidClient):
        return EXIT_CLIENT
    if isinstance(exc, (TransientTokenError, TokenResponseError)):
        return EXIT_SERVER
    if isinstance(exc, DefinitiveTokenError):
        return EXIT_REJECTED
    return EXIT_SERVER


# --- check ---------------------------------------------------------------------------------------


async def _check(config: PasswordGrantConfig, out: TextIO) -> int:
    endpoint = AiohttpTokenEndpoint(config)
    policy = RetryPolicy(max_attempts=2)
    try:
        request = build_password_request(config)
        print(f"logging in to {config.access_token_url} as {config.username or '(no username)'} ...", file=out)
        token = await exchange(
            endpoint, request, lambda r, s: parse_token_response(config, request, r, s), policy=policy
        )
        print("login OK", file=out)
        _print_token(token.describe(), out)
        if token.refresh_token is not None and config.refresh_token_url:
            refresh = build_refresh_request(config, token.refresh_token)
            new = await exchange(
                endpoint,
                refresh,
                lambda r, s: parse_token_response(config, refresh, r, s, previous=token),
                policy=policy,
            )
            rotated = new.refresh_token is not None and new.refresh_token != token.refresh_token
            print(
                f"refresh OK at {config.refresh_token_url} (refresh token {'rotated' if rotated else 'kept'})", file=out
            )
            _print_token(new.describe(), out)
        elif token.refresh_token is None:
            print("no refresh token was issued: renewals will be password logins", file=out)
        return EXIT_OK
    except TokenError as exc:
        _err(str(exc))
        return _token_exit(exc)
    finally:
        await endpoint.aclose()


def _print_token(info: dict[str, Any], out: TextIO) -> None:
    for key, value in info.items():
        if key == "extra":
            for k, v in value.items():
                print(f"  {k:<16} {v}", file=out)
        else:
            print(f"  {key:<16} {value}", file=out)


# --- progress --------------------------------------------------------------------------------------


class Progress:
    """A live table on a terminal (rich), a plain line every few seconds elsewhere."""

    def __init__(self, tokens: TokenProvider, *, live: bool, every: float = 2.0, stream: TextIO = sys.stderr) -> None:
        self.tokens = tokens
        self.every = every
        self.stream = stream
        self._last = 0.0
        self._printed = ""
        self._live: Any = None
        self._started = time.monotonic()
        if live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # rich is the optional 'cli' extra
                live = False
            else:
                self._live = Live(console=Console(file=stream), refresh_per_second=8, transient=False)
        self.live = live

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def figures(self, stats: CrawlStats) -> dict[str, str]:
        """The figures shown, as text."""
        elapsed = max(1e-6, time.monotonic() - self._started)
        t = self.tokens.stats
        eta = stats.eta_seconds()
        expected = stats.expected_records
        return {
            "records": f"{stats.records:,}" + (f" / {expected:,}" if expected else ""),
            "pages": f"{stats.pages:,}",
            "requests/s": f"{stats.requests / elapsed:,.0f}",
            "retries": str(stats.retries),
            "401s": str(stats.unauthorized),
            "token logins/refreshes": f"{t.logins}/{t.refreshes}",
            "rate-limit pauses": str(stats.rate_limit_pauses),
            "partitions": f"{stats.partitions_done}/{stats.partitions_total}",
            "elapsed": f"{elapsed:,.1f}s",
            "ETA": f"{eta:,.0f}s" if eta is not None else "-",
        }

    def __call__(self, stats: CrawlStats) -> None:
        """Show ``stats`` (rate-limited, so it can be called on every page)."""
        now = time.monotonic()
        if self._live is not None:
            if now - self._last >= 0.1:
                self._last = now
                self._live.update(self._table(stats))
            return
        if now - self._last >= self.every:
            self._last = now
            figures = self.figures(stats)
            figures.pop("elapsed")
            line = ", ".join(f"{k} {v}" for k, v in figures.items())
            if line != self._printed:  # the final call repeats nothing already shown
                self._printed = line
                print(f"progress: {line}, elapsed {time.monotonic() - self._started:,.1f}s", file=self.stream)

    def final(self, stats: CrawlStats) -> None:
        """Show the last state."""
        if self._live is not None:
            self._live.update(self._table(stats))
        else:
            self._last = 0.0
            self(stats)

    def _table(self, stats: CrawlStats) -> Any:
        from rich.table import Table

        table = Table(title="crawl", show_header=False, min_width=48)
        for k, v in self.figures(stats).items():
            table.add_row(k, v)
        return table


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


async def _run_crawl(
    config: PasswordGrantConfig,
    crawler: Crawler,
    *,
    out: str | None,
    state: str | None,
    concurrency: int,
    rate: float | None,
    live: bool,
    on_tokens: Callable[[TokenProvider], None] | None = None,
    full_refresh: bool = False,
) -> tuple[int, CrawlStats | None, TokenProvider | None]:
    """Run one crawl with signal handling; returns (exit code, stats, provider)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[int] = []

    def on_signal(signum: int) -> None:
        got.append(signum)
        if task is not None:
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    sink: Any = JsonLinesSink(out) if out else ListSink()
    tokens = TokenProvider(config)
    progress = Progress(tokens, live=live)
    stats: CrawlStats | None = None
    try:
        async with tokens:
            if on_tokens is not None:
                on_tokens(tokens)
            with progress:
                stats = await crawler.crawl(
                    tokens,
                    sink,
                    concurrency=concurrency,
                    rate=rate,
                    state=state,
                    on_progress=progress,
                    full_refresh=full_refresh,
                )
                progress.final(stats)
        return EXIT_OK, stats, tokens
    except asyncio.CancelledError:
        if not got:
            raise
        print(
            f"\ninterrupted: positions are checkpointed{' in ' + state if state else ''}; run again to resume",
            file=sys.stderr,
        )
        return (EXIT_SIGTERM if got[0] == signal.SIGTERM else EXIT_SIGINT), stats, tokens
    except TokenError as exc:
        _err(str(exc))
        return _token_exit(exc), stats, tokens
    except CrawlError as exc:
        _err(str(exc))
        return EXIT_CRAWL, stats, tokens
    finally:
        if isinstance(sink, JsonLinesSink):
            sink.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass


def _summary(stats: CrawlStats, tokens: TokenProvider, elapsed: float, out: TextIO) -> None:
    t = tokens.stats
    print("summary:", file=out)
    rows = [
        ("records", f"{stats.records:,}"),
        ("pages", f"{stats.pages:,}"),
        ("API requests", f"{stats.requests:,} ({stats.requests / max(elapsed, 1e-6):,.0f}/s)"),
        ("token requests", f"{t.token_requests} ({t.logins} login, {t.refreshes} refresh)"),
        ("retries", str(stats.retries)),
        ("401s", str(stats.unauthorized)),
        ("rate-limit pauses", str(stats.rate_limit_pauses)),
        ("time", f"{elapsed:.1f}s"),
        *state_cli.cursor_rows(stats),  # incremental crawlers: cursor before -> after per partition
    ]
    for k, v in rows:
        print(f"  {k:<18} {v}", file=out)


# --- demo and serve --------------------------------------------------------------------------------


def _demo_files(out_dir: Path, *, resume: bool) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, state_file = out_dir / "demo-records.jsonl", out_dir / "demo-state.json"
    if not resume:
        for f in (jsonl, state_file):
            f.unlink(missing_ok=True)
    return jsonl, state_file


def _distinct_ids(jsonl: Path) -> set[Any]:
    return {orjson.loads(line)["id"] for line in jsonl.read_bytes().splitlines()}


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from .demo import DemoItems
    from .testing import AuthServerState, LocalServer, Quirks
    from .testing.api import ApiFault, DemoAPI

    per_project = max(1, args.records // 3)
    api = DemoAPI(per_project=per_project, max_page_size=100, latency=0.015)
    total_requests = per_project * 3 * 1.01
    plan = [
        (int(total_requests * f), fault)
        for f, fault in [
            (0.15, ApiFault("status", status=429, retry_after="1")),
            (0.35, ApiFault("status", status=500)),
            (0.55, ApiFault("status", status=503, retry_after="0.5")),
            (0.75, ApiFault("status", status=502)),
        ]
    ]

    def inject(n: int) -> None:
        if plan and n >= plan[0][0]:
            api.inject(plan.pop(0)[1])

    api.on_request = inject
    state = AuthServerState(token_lifetime=args.token_lifetime, quirks=Quirks(rotate_refresh_tokens=True))
    jsonl, state_file = _demo_files(Path(args.out), resume=args.resume)
    async with LocalServer(state, api=api) as server:
        config = server.config()
        crawler = DemoItems(base_url=server.base_url)
        print(f"demo: local authorization server and API on {server.base_url}", file=out)
        print(
            f"demo: crawling {api.total:,} records with one detail fetch each; tokens live "
            f"{args.token_lifetime:g}s; a few 429s and 5xx are injected",
            file=out,
        )
        started = time.monotonic()
        code, stats, tokens = await _run_crawl(
            config,
            crawler,
            out=str(jsonl),
            state=str(state_file),
            concurrency=args.concurrency,
            rate=None,
            live=sys.stderr.isatty(),
        )
        elapsed = time.monotonic() - started
        if stats is not None and tokens is not None:
            _summary(stats, tokens, elapsed, out)
        if code != EXIT_OK:
            return code
    ids = _distinct_ids(jsonl)
    complete = ids == api.expected_ids()
    print(
        f"  {'server saw':<18} {state.count('password')} login, {state.count('refresh_token', 'ok')} refresh, "
        f"{state.count(outcome='invalid_grant')} invalid_grant",
        file=out,
    )
    print(
        f"  {'output':<18} {jsonl} ({len(ids):,} distinct records: {'complete' if complete else 'INCOMPLETE'})",
        file=out,
    )
    return EXIT_OK if complete else EXIT_CRAWL


async def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import AuthServerState, LocalServer
    from .testing.api import DemoAPI

    state = AuthServerState(token_lifetime=args.token_lifetime)
    server = LocalServer(state, api=DemoAPI(per_project=args.records // 3), port=args.port)
    async with server:
        conf = {
            "Access Token URL": server.token_url,
            "Client Id": state.client_id,
            "Client Secret": state.client_secret,
            "Username": state.username,
            "Password": state.password,
        }
        print(f"serving on {server.base_url} (token endpoint {server.token_url}; API under /api/)", file=out)
        print("test credentials (local test server only) as a config file:", file=out)
        print(orjson.dumps(conf, option=orjson.OPT_INDENT_2).decode(), file=out)
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    return EXIT_OK


# --- entry point -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option)."""
    parser = argparse.ArgumentParser(
        prog="oauthpw-async", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each token request and retry")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="log in once (and refresh once) and show what came back")
    p.add_argument("--config", required=True, help="connection file (.json or .toml)")

    p = sub.add_parser("crawl", help="run a crawler")
    p.add_argument("--config", required=True, help="connection file (.json or .toml)")
    p.add_argument("--crawler", required=True, help="module:Class of a Crawler subclass")
    p.add_argument("--base-url", help="API root, overriding the crawler's base_url")
    p.add_argument("--out", help="JSON Lines output file (appended to)")
    p.add_argument("--state", help="checkpoint file: resume from it, save positions to it")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, help="requests per second per host")
    p.add_argument("--full-refresh", action="store_true", help="incremental crawlers: ignore the saved cursors")
    state_cli.add_parser(sub)

    p = sub.add_parser("demo", help="crawl the built-in demo server end to end")
    p.add_argument("--records", type=int, default=30000, help="dataset size (default 30000)")
    p.add_argument("--token-lifetime", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", default="demo-output", help="folder for the JSONL and state files")
    p.add_argument("--resume", action="store_true", help="keep earlier demo output and resume")

    p = sub.add_parser("serve", help="run the local test server on 127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token-lifetime", type=float, default=60.0)
    p.add_argument("--records", type=int, default=3000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("oauthpw_async").setLevel(logging.ERROR)
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    out = sys.stdout
    try:
        if args.command == "check":
            return asyncio.run(_check(load_config(args.config), out))
        if args.command == "crawl":
            config = load_config(args.config)
            cls = _load_crawler(args.crawler)
            crawler = cls(base_url=args.base_url)
            started = time.monotonic()
            if args.full_refresh:
                print(state_cli.full_refresh_notice(args.state), file=out)

            async def go() -> int:
                code, stats, tokens = await _run_crawl(
                    config,
                    crawler,
                    out=args.out,
                    state=args.state,
                    concurrency=args.concurrency,
                    rate=args.rate,
                    live=sys.stderr.isatty(),
                    full_refresh=args.full_refresh,
                )
                if stats is not None and tokens is not None:
                    _summary(stats, tokens, time.monotonic() - started, out)
                return code

            return asyncio.run(go())
        if args.command == "state":
            return state_cli.run(args, out)
        if args.command == "demo":
            return asyncio.run(_demo(args, out))
        return asyncio.run(_serve(args, out))
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except UsageError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
