"""``oauthpw-async check``: log in once, refresh once, show what came back (masked); ``--probe`` one API call."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import attrs
import orjson

from ..check import CheckResult, ProbeResult, check_connection, probe_api
from ..errors import ConfigError, UsageError
from ..exit_codes import ExitCode
from ..provider import TokenProvider
from ..sources import StaticToken, load_token_source
from ..store import FileTokenStore, MemoryTokenStore
from ._common import err
from ._help import para, subcommand
from .report import format_check, print_lines

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """The ``check`` subcommand and its options."""
    p = subcommand(
        sub,
        "check",
        help="log in once, refresh once when a refresh token came back, show what came back (masked)",
        description=para(
            "Log in once with the password, then refresh once whenever a refresh token came back "
            "(at the Refresh Token URL, or the Access Token URL when none is set), and show each answer "
            "with secrets masked. A rejected password is never retried. A static-token connection (the file crawl "
            "takes) is validated; --probe then tries either kind of token on one API URL."
        ),
    )
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


async def run(args: argparse.Namespace) -> int:
    """Run ``check``; returns the exit code."""
    probe_url = _probe_url(args)
    try:
        source = load_token_source(args.config)  # a password grant or a static token, as crawl takes it
    except ConfigError as exc:
        if args.json:
            print(orjson.dumps(CheckResult.from_config_error(exc).as_dict()).decode(), flush=True)
        err(str(exc))
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
        err(str(result.error))
        return result.exit_code
    if probe is not None and probe.error is not None:
        err(str(probe.error))
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
        err(str(probe.error))
    return code
