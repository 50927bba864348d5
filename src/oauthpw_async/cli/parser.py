"""The argument parser of ``oauthpw-async``: the top level, then each command's own ``add_parser``."""

from __future__ import annotations

import argparse

from ..exit_codes import exit_codes_text
from . import check, crawl, demo, integrations, serve, state
from . import fleet as fleet_command
from ._help import HelpFormatter, add_verbose, para

__all__ = ["DESCRIPTION", "build_parser"]

DESCRIPTION = (
    "Check a connection, run a crawler, show or reset its state, run one worker of a fleet, run the demo, "
    "or serve the test server. Records go to stdout as JSON Lines unless --out names a file; progress, logs "
    "and summaries go to stderr whenever stdout carries records. Secrets never appear in any output."
)
"""What ``oauthpw-async --help`` says first."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option)."""
    parser = argparse.ArgumentParser(
        prog="oauthpw-async",
        description=para(DESCRIPTION),
        epilog="exit codes (every subcommand):\n" + exit_codes_text(),
        formatter_class=HelpFormatter,
    )
    add_verbose(parser, default=False)
    integrations.add_global_options(parser)  # --log-format
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{check,crawl,state,fleet,demo,serve,schema,airbyte}"
    )
    check.add_parser(sub)
    crawl.add_parser(sub)
    state.add_parser(sub)
    fleet_command.add_parser(sub, HelpFormatter)
    integrations.add_parsers(sub, HelpFormatter)  # airbyte, schema
    demo.add_parser(sub)
    serve.add_parser(sub)
    return parser
