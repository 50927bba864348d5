"""``oauthpw-async serve``: the local test server (token endpoint and paginated API) on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import orjson

from ..exit_codes import ExitCode
from ._help import subcommand

__all__ = ["SERVE_DESCRIPTION", "add_parser", "api_fault", "run"]

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
"""The ``serve`` help: its routes, pagination styles and fault switches."""


def add_parser(sub: Any) -> None:
    """The ``serve`` subcommand and its options."""
    p = subcommand(
        sub,
        "serve",
        help="run the local test server (token endpoint and paginated API) on 127.0.0.1",
        description=SERVE_DESCRIPTION,
    )
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--token-lifetime", type=float, default=60.0, metavar="SECONDS", help="access token lifetime")
    p.add_argument("--records", type=int, default=3000, help="dataset size, split over the three projects")
    p.add_argument("--page-size", type=int, default=100, help="largest page the API returns")
    p.add_argument("--lockout-after", type=int, default=5, help="failed logins after which the account locks")
    p.add_argument("--token-latency", type=float, default=0.0, metavar="SECONDS", help="delay of every token answer")
    p.add_argument("--api-latency", type=float, default=0.0, metavar="SECONDS", help="delay of every API answer")
    p.add_argument(
        "--token-fault",
        type=api_fault,
        action="append",
        default=[],
        metavar="STATUS[:RETRY_AFTER]",
        help="answer the next token request with this status (and Retry-After); repeat for more, in order "
        "(default: none)",
    )
    p.add_argument(
        "--api-fault",
        type=api_fault,
        action="append",
        default=[],
        metavar="STATUS[:RETRY_AFTER]@N",
        help="answer the API request after the first N with this status (and Retry-After); repeatable (default: none)",
    )


def api_fault(text: str) -> tuple[int, int, str | None]:
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


async def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGINT or SIGTERM; returns the exit code."""
    from ..testing import AuthServerState, Fault, LocalServer
    from ..testing.api import ApiFault, DemoAPI

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
