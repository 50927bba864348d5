"""The ``oauthpw-async`` command: check a connection, run a crawler, run the demo, serve the test server.

Records go to stdout as JSON Lines unless --out names a file; progress, logs and summaries go
to stderr whenever stdout carries records. Secrets never appear in any output. The exit codes
are :data:`oauthpw_async.exit_codes.EXIT_CODE_MEANINGS` (``--help`` prints them).

One module a command (:mod:`.check`, :mod:`.crawl`, :mod:`.state`, :mod:`.fleet`, :mod:`.demo`,
:mod:`.serve`, :mod:`.integrations`), each with its ``add_parser`` and ``run``; :mod:`.parser`
puts the parser together and :mod:`.report` formats what the commands print. The library
modules import nothing from here; importing this package imports no Redis client and no
integration (the fleet and the integrations are loaded when a command uses them).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from ..errors import OAuthPWError
from ..exit_codes import ExitCode, exit_code_for
from . import check, crawl, demo, integrations, serve, state
from . import fleet as fleet_command
from ._common import DATA_LOGGER, err, silence_stdout
from .parser import build_parser

__all__ = ["build_parser", "main"]


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
            return asyncio.run(check.run(args))
        if args.command == "crawl":
            return asyncio.run(crawl.run(args, argv))
        if args.command == "state":
            return state.run(args, sys.stdout)
        if args.command == "fleet":
            return fleet_command.run(args, sys.stdout)
        if args.command in integrations.COMMANDS:
            return asyncio.run(integrations.run(args))
        if args.command == "demo":
            return asyncio.run(demo.run(args, argv))
        return asyncio.run(serve.run(args))
    except OAuthPWError as exc:  # ConfigError, UsageError, StateError raised before or outside a crawl
        err(str(exc))
        return exit_code_for(exc)
    except BrokenPipeError:  # the reader of stdout left (`| head`): no traceback
        silence_stdout()
        return ExitCode.BROKEN_PIPE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
