"""The fleet side of the command line: ``crawl --coordinator``, ``crawl --workers N``, ``fleet status|reset``.

Kept apart from the other commands; :mod:`oauthpw_async.cli` calls :func:`add_crawl_options`, :func:`add_parser`,
:func:`check_crawl_options`, :func:`worker_for`, :func:`run_workers` and :func:`run`. Importing this
module needs no Redis client: the fleet extra is loaded only when a fleet is used.

The token key that seals the shared token in Redis comes from the environment variable
``OAUTHPW_FLEET_KEY`` (never from a file or the command line), the same on every worker. The
Redis password may come from ``OAUTHPW_REDIS_PASSWORD`` instead of the URL, so that it is not in
the process list; local workers (``--workers N``) always get it that way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from ..errors import OAuthPWError, UsageError
from ..fleet.redis_url import PASSWORD_VARIABLE, check_credentials, redis_where, with_env_password

if TYPE_CHECKING:
    from ..crawler import Crawler, CrawlStats, Sink
    from ..fleet import RedisLink
    from ..fleet.coordinator import Coordinator
    from ..fleet.crawl import FleetCrawl
    from ..fleet.partitions import FleetStatus
    from ..provider import TokenProvider
    from ..sources import StaticToken
    from ..store import TokenStore

__all__ = [
    "KEY_VARIABLE",
    "PASSWORD_VARIABLE",
    "FleetWorker",
    "add_crawl_options",
    "add_parser",
    "check_crawl_options",
    "redis_url",
    "run",
    "run_workers",
    "worker_for",
    "worker_output",
]

#: The environment variable holding the key that seals the fleet's shared token in Redis.
KEY_VARIABLE = "OAUTHPW_FLEET_KEY"
#: Incremental crawls: workers given the same value work in the same round (``--workers N`` sets one).
ROUND_VARIABLE = "OAUTHPW_FLEET_ROUND"


def redis_url(value: str) -> str:
    """The ``--coordinator`` URL, checked, with the password of ``OAUTHPW_REDIS_PASSWORD`` if it has none.

    Raises:
        ConfigError: the URL holds a user name or password that is not percent-encoded.
        UsageError: not a ``redis://``, ``rediss://`` or ``unix://`` URL with a host (or a socket path).
    """
    check_credentials(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise UsageError(
            "--coordinator takes a Redis URL: redis://[user:password@]host:port/db (rediss:// for TLS, "
            f"unix:///path/to/socket); the password may come from {PASSWORD_VARIABLE} instead"
        )
    return with_env_password(value)


def _without_password(value: str) -> tuple[str, str | None]:
    """A Redis URL without its password, and the password (``None`` if it had none)."""
    parts = urlsplit(value)
    if parts.password is None:
        return value, None
    where = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    netloc = f"{user}@{where}" if user else where
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


_MAKE_KEY = 'python -c "from oauthpw_async.fleet import generate_key; print(generate_key())"'


# --- options -------------------------------------------------------------------------------------------


def _coordinator_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--coordinator",
        required=required,
        metavar="URL",
        help="Redis URL of the fleet (redis://[user:password@]host:port/db, rediss:// for TLS; the password "
        f"may come from {PASSWORD_VARIABLE} instead)"
        + ("" if required else "; run as one worker of a fleet crawling the same crawl (default: one process alone)"),
    )
    p.add_argument(
        "--crawl-name", metavar="NAME", help="the fleet crawl's name, the same on every worker (default: --crawler)"
    )
    p.add_argument("--namespace", default="oauthpw", metavar="PREFIX", help="prefix of every Redis key of the fleet")


def add_crawl_options(p: argparse.ArgumentParser) -> None:
    """The ``crawl`` options that make a run one worker of a fleet (or start several)."""
    _coordinator_options(p, required=False)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="start N worker processes of this crawl here, each writing its own file (--out with -w0, -w1... "
        "before the suffix); needs --coordinator and --out",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="fleet: a worker silent this long (dead or stalled) loses its partitions to the others, who resume "
        "them from their last checkpoint",
    )
    p.add_argument(
        "--partitions-at-once",
        type=int,
        default=4,
        metavar="N",
        help="fleet: partitions this worker crawls at the same time (claims it holds)",
    )


def add_parser(sub: Any, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> None:
    """Add the ``fleet`` command (``status`` and ``reset``) to the CLI's subcommands."""
    p = sub.add_parser("fleet", help="show or reset a fleet crawl's shared state in Redis")
    commands = p.add_subparsers(dest="fleet_command", required=True)
    status = commands.add_parser(
        "status",
        help="partitions, positions, owners, completeness, and the shared token's state (masked), from any host",
        formatter_class=formatter_class,
    )
    _coordinator_options(status, required=True)
    status.add_argument("--crawler", metavar="MODULE:CLASS", help="the crawler (names the crawl) (default: none)")
    status.add_argument(
        "--config",
        help="connection file: also show its shared token (generation only), lease and login budget "
        "(default: crawl only)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document (nothing secret in it)")
    reset = commands.add_parser(
        "reset",
        help="forget the crawl's partitions and positions in Redis, so it runs again from the start (the "
        "shared tokens, login budget and rejected-password latch are kept unless --tokens)",
        formatter_class=formatter_class,
    )
    _coordinator_options(reset, required=True)
    reset.add_argument("--crawler", metavar="MODULE:CLASS", help="the crawler (names the crawl) (default: none)")
    reset.add_argument(
        "--failed",
        action="store_true",
        help="only queue the failed partitions again (from where they failed; ones walked to their end "
        "from their start), once what failed them is fixed; running workers pick them up (default: whole crawl)",
    )
    reset.add_argument(
        "--tokens",
        action="store_true",
        help="clear the namespace's shared token records (e.g. one sealed by a worker with the wrong "
        "OAUTHPW_FLEET_KEY): the next worker that needs a token logs in once; the login budget and the "
        "rejected-password latch are kept; with --crawler or --crawl-name the crawl is reset too "
        "(default: tokens kept)",
    )


def crawl_name(args: argparse.Namespace) -> str:
    """The crawl's name: ``--crawl-name``, else the ``--crawler`` value."""
    name = args.crawl_name or getattr(args, "crawler", None)
    if not name:
        raise UsageError("name the crawl: --crawl-name NAME or --crawler MODULE:CLASS")
    return str(name)


def check_crawl_options(args: argparse.Namespace) -> None:
    """Refuse option combinations a fleet cannot honour, saying what to do instead."""
    if args.workers < 1 or args.partitions_at_once < 1 or not args.idle_timeout > 0:
        raise UsageError("--workers and --partitions-at-once must be at least 1, --idle-timeout positive")
    if args.coordinator is None:
        if args.workers > 1:
            raise UsageError("--workers needs --coordinator: the workers share the crawl through Redis")
        return
    args.coordinator = redis_url(args.coordinator)
    if args.state:
        raise UsageError("a fleet keeps its positions in Redis (--coordinator): leave out --state")
    if args.restart:
        raise UsageError(
            "to crawl again from the start, run `oauthpw-async fleet reset` once (while no worker runs), "
            "then start the workers"
        )
    if args.full_refresh:
        raise UsageError(
            "a fleet forgets its cursors with `oauthpw-async fleet reset` (once, while no worker runs): the "
            "workers started after it read every partition in full; leave out --full-refresh"
        )
    if args.workers > 1 and args.out in (None, "-"):
        raise UsageError("--workers needs --out PATH: each worker writes its own file (PATH with -w0, -w1...)")


def worker_output(out: str, index: int) -> str:
    """Worker ``index``'s file for ``--out out``: ``records.jsonl`` -> ``records-w0.jsonl``."""
    path = Path(out)
    return str(path.with_name(f"{path.stem}-w{index}{path.suffix}"))


# --- one worker ----------------------------------------------------------------------------------------


def _token_key() -> str:
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise UsageError(
            f"a fleet shares its token sealed with a key: set {KEY_VARIABLE} to the same key on every worker "
            f"(make one with {_MAKE_KEY}) and keep it in your secret store"
        )
    return key


class FleetWorker:
    """What ``crawl --coordinator`` adds to a crawl: the Redis connection and the fleet's crawl."""

    def __init__(self, connection: Coordinator | RedisLink, crawl: FleetCrawl, where: str) -> None:
        self.connection = connection
        self.crawl = crawl
        #: Where positions are kept, for messages (``Redis at host:port/db, crawl NAME``).
        self.where = where

    async def __aenter__(self) -> FleetWorker:
        await self.connection.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.connection.__aexit__(exc_type, exc, tb)

    async def run(self, crawler: Crawler, tokens: Any, sink: Sink, *, concurrency: int, on_progress: Any) -> CrawlStats:
        """Crawl the partitions this worker claims until the fleet has none left."""
        return await self.crawl.run(crawler, tokens, sink, concurrency=concurrency, on_progress=on_progress)

    def summary(self) -> list[str]:
        """Lines for the crawl summary: this worker's share and the fleet's state."""
        cp = self.crawl.checkpoints
        lines = [f"  {'fleet':<18} {self.where}; this worker {cp.consumer}"]
        if cp.incremental:
            begun = "the first (no cursor yet)" if cp.round == 1 else "every partition from its cursor"
            lines.append(f"  {'':<18} incremental round {cp.round}, {begun}")
        lines.append(
            f"  {'':<18} walked {len(cp.finished)} partition(s) to their end, stopped {len(cp.taken_over)} "
            "taken over by another worker"
        )
        status = cp.last_status
        if status is not None:
            lines.append(f"  {'':<18} {_counts(status)}")
        return lines


def worker_for(
    args: argparse.Namespace, tokens: TokenProvider | StaticToken, store: TokenStore | None
) -> tuple[FleetWorker, TokenProvider | StaticToken]:
    """The fleet worker for ``crawl --coordinator`` and the token source to use (sharing its token if renewable).

    A password-grant ``tokens`` is replaced by a provider of the same connection (and ``store``)
    that renews through the fleet; a static token is used as it is.
    """
    from ..fleet import RedisLink
    from ..fleet.coordinator import Coordinator
    from ..fleet.crawl import FleetCrawl
    from ..provider import TokenProvider

    name = crawl_name(args)
    key = _token_key()  # seals the shared token and the crawl's positions
    connection: Coordinator | RedisLink
    if isinstance(tokens, TokenProvider):
        fleet = Coordinator.for_config(tokens.config, args.coordinator, token_key=key, namespace=args.namespace)
        tokens = TokenProvider(tokens.config, store=store, coordinator=fleet, refresh=tokens.refresh_policy)
        connection = fleet
    else:  # a static token: nothing to renew, only the crawl is shared
        connection = RedisLink(args.coordinator, namespace=args.namespace)
    crawl = FleetCrawl(
        connection,
        name,
        rate=args.rate,
        idle_timeout=args.idle_timeout,
        partitions_at_once=args.partitions_at_once,
        token_key=None if isinstance(connection, Coordinator) else key,
        round_name=os.environ.get(ROUND_VARIABLE, "").strip() or None,
    )
    return FleetWorker(connection, crawl, f"Redis at {redis_where(args.coordinator)}, crawl {name}"), tokens


# --- several local workers ------------------------------------------------------------------------------


def _child_argv(argv: Sequence[str], out: str, coordinator: str) -> list[str]:
    """``argv`` without ``--workers``, with ``--out`` set to ``out`` and ``--coordinator`` to ``coordinator``.

    Options may be abbreviated as argparse allows (``--coord``): ``argv`` parsed already, so a
    prefix names one option only.
    """
    replaced = ("--workers", "--out", "--coordinator")
    child: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if len(name) > 2 and name.startswith("--") and any(option.startswith(name) for option in replaced):
            skip = not eq
            continue
        child.append(arg)
    return [*child, "--out", out, "--coordinator", coordinator]


async def _start_workers(
    args: argparse.Namespace, argv: Sequence[str], outs: Sequence[str], report: TextIO
) -> list[asyncio.subprocess.Process]:
    """Start one worker process a output, each this command with its own ``--out``; says so for each."""
    # The Redis password goes to the workers in their environment, never on their command line.
    coordinator, password = _without_password(args.coordinator)
    env = dict(os.environ)
    if password is not None:
        env[PASSWORD_VARIABLE] = password
    env[ROUND_VARIABLE] = env.get(ROUND_VARIABLE) or secrets.token_hex(8)  # one round for the N workers
    procs = []
    for i, out in enumerate(outs):
        command = [sys.executable, "-m", "oauthpw_async", *_child_argv(argv, out, coordinator)]
        procs.append(
            await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
            )
        )
        print(f"[w{i}] started (pid {procs[-1].pid}): writes {out}", file=report, flush=True)
    return procs


async def run_workers(args: argparse.Namespace, argv: Sequence[str], report: TextIO) -> int:
    """``crawl --workers N``: start N worker processes of the same command, relay their output, wait for all.

    Each worker's lines are prefixed with ``[wK]``; SIGINT/SIGTERM are passed on to every worker (each
    gives its partitions back before it exits). The exit code is the first worker's failure, else 8
    when the fleet finished incomplete, else 0.
    """
    outs = [worker_output(args.out, i) for i in range(args.workers)]
    procs = await _start_workers(args, argv, outs, report)

    async def relay(i: int, stream: asyncio.StreamReader | None, to: TextIO) -> None:
        assert stream is not None
        while line := await stream.readline():
            to.write(f"[w{i}] {line.decode(errors='replace')}")
            to.flush()

    loop = asyncio.get_running_loop()
    stopping: list[int] = []

    def stop(signum: int) -> None:
        stopping.append(signum)
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    started = time.monotonic()
    try:
        relays = [relay(i, p.stdout, report) for i, p in enumerate(procs)]
        relays += [relay(i, p.stderr, sys.stderr) for i, p in enumerate(procs)]
        await asyncio.gather(*relays)
        codes = [await p.wait() for p in procs]
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    elapsed = time.monotonic() - started
    print(f"fleet: {args.workers} worker(s) exited with {codes} after {elapsed:.1f}s; outputs {', '.join(outs)}",
          file=report, flush=True)  # fmt: skip
    if stopping:  # as one crawl would: 130 after Ctrl-C, 143 after SIGTERM (positions saved)
        return 128 + stopping[0]
    failed = [c for c in codes if c not in (0, 8)]
    if failed:  # a worker ended by a signal reports -SIGNUM; as a shell would: 128 + SIGNUM
        return 128 - failed[0] if failed[0] < 0 else failed[0]
    return 8 if 8 in codes else 0


# --- fleet status / reset ---------------------------------------------------------------------------------


def _counts(status: FleetStatus) -> str:
    n = len(status.partitions)
    parts = ", ".join(f"{status.count(s)} {s}" for s in ("done", "failed", "running", "queued"))
    if status.complete:
        verdict = "COMPLETE"
    elif status.finished:
        verdict = f"finished INCOMPLETE ({len(status.incomplete)} partition(s) missing records)"
    elif not status.sealed:
        verdict = "not started" if not n else "partition list not sealed yet"
    else:
        verdict = "in progress"
    return f"{n} partition(s): {parts}; {verdict}"


def _position(position: Any) -> dict[str, Any]:
    return position if isinstance(position, dict) else {}


async def _token_state(args: argparse.Namespace) -> dict[str, Any] | None:
    """The credential's shared token (generation, whether it opens with the key), lease, budget, latch."""
    if not args.config:
        return None
    from ..fleet.cipher import generate_key
    from ..fleet.coordinator import Coordinator
    from ..fleet.errors import FleetKeyMismatch, damaged
    from ..sources import StaticToken, load_token_source

    source = load_token_source(args.config)
    if isinstance(source, StaticToken):
        return {"shared": False, "why": "a static token is not renewed, so nothing is shared"}
    key = os.environ.get(KEY_VARIABLE, "").strip()
    fleet = Coordinator.for_config(
        source.config, args.coordinator, token_key=key or generate_key(), namespace=args.namespace
    )
    async with fleet:
        client = fleet.link.client
        gen, spent, kid, by = await fleet.link.call(client.hmget(fleet.tokens.key, ["gen", "spent", "kid", "by"]))
        record_ttl = await fleet.link.call(client.pttl(fleet.tokens.key))
        opens: bool | None = None
        if gen is not None and key:
            try:
                opens = await fleet.tokens.read() is not None
            except FleetKeyMismatch:
                opens = False
        if gen is not None and not gen.isdigit():
            raise damaged("the shared token record's generation")
        lease = await fleet.link.call(client.get(fleet.lease.key))
        lease_ttl = await fleet.link.call(client.pttl(fleet.lease.key))
        latch = await fleet.rejected.state()
        holder, _, fence = (lease.decode() if lease else "").rpartition(":")
        return {
            "shared": True,
            "credential_key": fleet.credential_key,
            "generation": int(gen) if gen is not None else None,
            "refresh_token_spent": (spent or b"0") == b"1" if gen is not None else None,
            "record_expires_in": round(record_ttl / 1000, 1) if record_ttl and record_ttl > 0 else None,
            "opens_with_key": opens,
            "sealed_with_key_id": kid.decode(errors="replace") if kid else None,
            "sealed_by": by.decode(errors="replace") if by else None,
            "key_id": fleet.cipher.key_id if key else None,
            "lease_holder": holder or None,
            "lease_fence": int(fence) if fence.isdigit() else None,
            "lease_expires_in": round(lease_ttl / 1000, 1) if lease and lease_ttl > 0 else None,
            "logins_in_window": await fleet.logins.used(),
            "login_limit": fleet.logins.limit,
            "logins_stopped": None
            if latch is None
            else {"status": latch.status, "error_code": latch.error_code, "since": latch.since, "by": latch.by},
        }


def _token_lines(info: dict[str, Any] | None) -> list[str]:
    if info is None:
        return ["token              (give --config to show the connection's shared token)"]
    if not info["shared"]:
        return [f"token              not shared: {info['why']}"]
    if info["generation"] is None:
        token = "none in Redis (the next worker to need one logs in)"
    else:
        token = f"generation {info['generation']} (value sealed, never shown)"
        if info["refresh_token_spent"]:
            token += "; its refresh token was sent (a renewal is under way or its sender died)"
        if info["record_expires_in"] is not None:
            token += f"; record kept {info['record_expires_in']}s more"
        if info["sealed_with_key_id"]:
            token += f"; sealed with key id {info['sealed_with_key_id']} by {info['sealed_by']}"
        if info["opens_with_key"] is not None:
            token += f"; opens with {KEY_VARIABLE} (key id {info['key_id']}): "
            token += "yes" if info["opens_with_key"] else "NO (another key: see `fleet reset --tokens`)"
    lease = "free"
    if info["lease_holder"]:
        lease = f"held by {info['lease_holder']} (fence {info['lease_fence']}), {info['lease_expires_in']}s left"
    stopped = info["logins_stopped"]
    latch = "open" if stopped is None else (
        f"CLOSED: a login was rejected (HTTP {stopped['status']} {stopped['error_code']}) by {stopped['by']}; "
        "fix the password, then reset it (TokenProvider.reset())"
    )  # fmt: skip
    limit = f" of {info['login_limit']}"
    return [
        f"token              {token}",
        f"renewal lease      {lease}",
        f"unconfirmed logins {info['logins_in_window']}{limit} in the current window (a token re-arms them); "
        f"logins {latch}",
    ]


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    from ..fleet import RedisLink
    from ..fleet.crawl import FleetCrawl

    name = crawl_name(args)
    link = RedisLink(args.coordinator, namespace=args.namespace)
    async with link:
        status = await FleetCrawl(link, name, token_key=_token_key()).status()
    tokens = await _token_state(args)
    if args.json:
        doc = {
            "crawl": name,
            "redis": redis_where(args.coordinator),
            "sealed": status.sealed,
            "complete": status.complete,
            "finished": status.finished,
            "round": status.round,
            "partitions": [
                {
                    "name": p.name,
                    "state": p.state,
                    "pages": _position(p.position).get("pages", 0),
                    "records": _position(p.position).get("records", 0),
                    "next": _position(p.position).get("next"),
                    "problems": _position(p.position).get("problems", []),
                    "owner": p.owner,
                    "fence": p.fence,
                    "claims": p.claims,
                    "reason": p.reason,
                }
                for p in status.partitions
            ],
            "token": tokens,
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode(), file=out)
    else:
        print(f"crawl              {name} (Redis at {redis_where(args.coordinator)})", file=out)
        print(f"partitions         {_counts(status)}", file=out)
        if status.round > 1:  # an incremental crawl's rounds (every partition from its cursor each time)
            print(f"round              {status.round}", file=out)
        for p in status.partitions:
            pos = _position(p.position)
            line = f"  {p.name:<16} {p.state:<8} {pos.get('pages', 0):>6} pages {pos.get('records', 0):>9,} records"
            if p.owner:
                line += f"  owner {p.owner} (fence {p.fence})"
            if p.claims > 1:
                line += f"  claimed {p.claims} times"
            print(line, file=out)
            for problem in pos.get("problems") or ([p.reason] if p.reason else []):
                print(f"  {'':<16} problem: {problem}", file=out)
        for line in _token_lines(tokens):
            print(line, file=out)
    return 0


async def _reset(args: argparse.Namespace, out: TextIO) -> int:
    from ..fleet import RedisLink
    from ..fleet.cipher import generate_key
    from ..fleet.crawl import FleetCrawl

    if args.tokens:
        await _reset_tokens(args, out)
        if not (args.crawl_name or args.crawler):
            return 0
    name = crawl_name(args)
    link = RedisLink(args.coordinator, namespace=args.namespace)
    if getattr(args, "failed", False):
        async with link:
            queued = await FleetCrawl(link, name, token_key=_token_key()).requeue_failed()
        shown = ", ".join(queued[:10]) + (", ..." if len(queued) > 10 else "")
        print(f"queued {len(queued)} failed partition(s) again{f' ({shown})' if queued else ''}; running workers "
              "pick them up, or start workers", file=out)  # fmt: skip
        return 0
    async with link:
        crawl = FleetCrawl(link, name, token_key=generate_key())  # positions are dropped unread
        running = [p for p, state in (await crawl.checkpoints.queue.states()).items() if state == "running"]
        await crawl.drop()
    print(f"reset crawl {name} in Redis at {redis_where(args.coordinator)}: the next workers start it over", file=out)
    if running:
        print(
            f"warning: {len(running)} partition(s) were running ({', '.join(running[:5])}); their "
            "workers stop at their next checkpoint",
            file=out,
        )
    return 0


async def _reset_tokens(args: argparse.Namespace, out: TextIO) -> None:
    """Delete every shared token record of the namespace (each credential's next renewal logs in once)."""
    from ..fleet import RedisLink

    link = RedisLink(args.coordinator, namespace=args.namespace)
    async with link:
        pattern = link.key("cred:*", "token")
        cleared = 0
        async for key in link.client.scan_iter(match=pattern, count=500):
            cleared += int(await link.call(link.client.delete([key])))
    print(
        f"cleared {cleared} shared token record(s) in Redis at {redis_where(args.coordinator)} (namespace "
        f"{args.namespace}): the next worker that needs a token logs in once; the login budget and a "
        "rejected-password latch are kept",
        file=out,
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``fleet status`` or ``fleet reset``; returns the exit code (0 once Redis answered)."""
    try:
        args.coordinator = redis_url(args.coordinator)
        if args.fleet_command == "status":
            return asyncio.run(_status(args, out))
        return asyncio.run(_reset(args, out))
    except OAuthPWError as exc:
        from ..exit_codes import exit_code_for

        print(f"error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))
