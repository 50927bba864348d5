"""How ``--help`` looks: the formatter every (sub)command uses, wrapped paragraphs, the shared ``-v``."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["HelpFormatter", "add_verbose", "para", "subcommand"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
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


def para(text: str) -> str:
    """A description paragraph, wrapped for the terminal."""
    return textwrap.fill(text, width=96)


def add_verbose(parser: argparse.ArgumentParser, *, default: object) -> None:
    """``-v/--verbose``; on a subcommand pass ``argparse.SUPPRESS`` so it keeps a ``-v`` given before it."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log each token request (grant, URL without query, attempt) and each retry; never a secret "
        "(warnings about the data are shown without it)",
    )


def subcommand(sub: Any, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser: the shared formatter, the description as given, and ``-v``.

    On a subcommand, ``-v`` must not reset a ``-v`` given before it: its default is "not given".
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter
    )
    add_verbose(parser, default=argparse.SUPPRESS)
    return parser
