"""The exit codes of the ``oauthpw-async`` command: the one table ``--help`` prints and the docs are generated from.

:class:`ExitCode` names each code, :data:`EXIT_CODE_MEANINGS` says what it means and
:func:`exit_code_for` maps an error onto it. It is library code (no argument parsing):
:class:`oauthpw_async.check.CheckResult` and the Airbyte integration report the same codes.
"""

from __future__ import annotations

import enum
import textwrap

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

__all__ = ["EXIT_CODE_MEANINGS", "ExitCode", "exit_code_for", "exit_codes_text"]


class ExitCode(enum.IntEnum):
    """Exit codes of the ``oauthpw-async`` command; what each means is :data:`EXIT_CODE_MEANINGS`."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    CREDENTIALS = 3
    CLIENT = 4
    SERVER = 5
    REJECTED = 6
    CRAWL_FAILED = 7
    INCOMPLETE = 8
    INTERRUPTED = 130
    BROKEN_PIPE = 141
    TERMINATED = 143


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success; for a crawl: finished and complete (or nothing left to do)",
    ExitCode.UNEXPECTED: "an unexpected error (a bug in a crawler or in this package): the traceback says where",
    ExitCode.USAGE: "bad configuration or usage (connection file, options, --crawler)",
    ExitCode.CREDENTIALS: "credentials rejected (username or password, a refused static token, or the account is "
    "locked)",
    ExitCode.CLIENT: "client rejected (client id or secret, client authentication method)",
    ExitCode.SERVER: "token server unreachable or failing (5xx, 429, timeout, unusable answer, login budget spent)",
    ExitCode.REJECTED: "token request rejected otherwise (grant type, scope, parameters, a redirect)",
    ExitCode.CRAWL_FAILED: "crawl failed (an API request failed for good, a damaged state file, a bad page)",
    ExitCode.INCOMPLETE: "crawl finished but INCOMPLETE (a page budget, a cycle, fewer records than announced); "
    "the summary names each partition and why; --allow-incomplete exits 0 instead",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); positions saved: the same command resumes",
    ExitCode.BROKEN_PIPE: "stdout closed by its reader (| head), as for a process ended by SIGPIPE; positions saved: "
    "the same command resumes",
    ExitCode.TERMINATED: "terminated (SIGTERM); positions saved: the same command resumes",
}
"""What each exit code means: the one table that ``--help`` prints and the docs are generated from."""


def exit_codes_text(width: int = 96) -> str:
    """The exit-code table as plain text, for ``--help``."""
    lines = []
    for code, meaning in EXIT_CODE_MEANINGS.items():
        wrapped = textwrap.wrap(meaning, width - 7) or [""]
        lines.append(f"  {int(code):<4} {wrapped[0]}")
        lines += [f"       {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def exit_code_for(error: BaseException | None) -> ExitCode:
    """The exit code an error maps to (``OK`` for ``None``).

    Transient token errors (5xx, 429, timeouts, the provider's login budget) are the
    server's side; definitive ones name what to fix: credentials, client, or the request.
    """
    if error is None:
        return ExitCode.OK
    if isinstance(error, ConfigError):
        return ExitCode.USAGE
    if isinstance(error, InvalidCredentials):
        return ExitCode.CREDENTIALS
    if isinstance(error, InvalidClient):
        return ExitCode.CLIENT
    if isinstance(error, (TransientTokenError, TokenResponseError)):
        return ExitCode.SERVER
    if isinstance(error, DefinitiveTokenError):
        return ExitCode.REJECTED
    if isinstance(error, TokenError):
        return ExitCode.SERVER
    if isinstance(error, CrawlError):  # an API request failed for good, a damaged state file...
        return ExitCode.CRAWL_FAILED
    if isinstance(error, UsageError):
        return ExitCode.USAGE
    return ExitCode.CRAWL_FAILED
