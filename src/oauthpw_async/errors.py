"""One exception hierarchy; each message says what to check or do next.

Messages never contain a password, client secret or token: bodies quoted in them
are scrubbed, then shortened (see :func:`oauthpw_async._httputil.excerpt`).

Which token errors are definitive (never retried, and for the provider a stop until reset):
every :class:`DefinitiveTokenError`. A password login that answers 2xx without a usable token
(an HTML sign-in page, ``{"success": false}``) is one of them, :class:`LoginResponseError`:
sending the password again cannot help and may count as another failed login. The same answer
to a *refresh* stays a plain :class:`TokenResponseError` (no password is at stake; the provider
backs off and tries again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = [
    "ConfigError",
    "CrawlError",
    "CredentialsLockedOut",
    "DefinitiveTokenError",
    "FieldProblem",
    "FileLocked",
    "ForeignOriginError",
    "HTTPStatusError",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidRequest",
    "InvalidScope",
    "LoginBudgetExhausted",
    "LoginResponseError",
    "OAuthPWError",
    "OutputLocked",
    "PageShapeError",
    "ProviderClosed",
    "RefreshTokenRejected",
    "SecretExposureError",
    "SinkError",
    "StateError",
    "StateLocked",
    "StateMismatch",
    "StateWriteError",
    "StaticTokenRejected",
    "StorageError",
    "TokenConnectError",
    "TokenEndpointRateLimited",
    "TokenError",
    "TokenRedirectError",
    "TokenRequestRejected",
    "TokenRequestsPaused",
    "TokenResponseError",
    "TokenTransportError",
    "TransientTokenError",
    "UnauthorizedError",
    "UnsafeTokenStore",
    "UnsupportedGrantType",
    "UsageError",
]


class OAuthPWError(Exception):
    """Base class of every error this package raises."""


class UsageError(OAuthPWError, ValueError):
    """A function, class or command was called with an argument it cannot accept."""


class SecretExposureError(OAuthPWError, TypeError):
    """An operation would copy a secret out of its wrapper (pickling a :class:`Secret`)."""


class ProviderClosed(OAuthPWError, RuntimeError):
    """The token provider was used outside ``async with`` or after it closed."""


# --- configuration ----------------------------------------------------------------------


@attrs.frozen
class FieldProblem:
    """One thing wrong with one configuration field."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(OAuthPWError, ValueError):
    """The connection configuration is invalid; :attr:`problems` lists every bad field."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"invalid connection configuration ({n} problem{'' if n == 1 else 's'}):\n{lines}")


# --- token endpoint ---------------------------------------------------------------------


class TokenError(OAuthPWError):
    """A token could not be obtained.

    Attributes:
        status: HTTP status of the token endpoint's answer, if there was one.
        error_code: the OAuth ``error`` code the server sent, if any.
        grant: ``"password"`` or ``"refresh_token"``: which request failed.
    """

    #: Whether the same request may succeed if sent again later.
    transient: bool = False
    #: Short advice for the admin; subclasses override it.
    hint: str = "check the connection settings"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        grant: str = "password",
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.grant = grant
        self.retry_after = retry_after
        if hint is not None:
            self.hint = hint
        self.detail = message
        super().__init__(self._render())

    def __reduce__(self) -> tuple[object, ...]:
        message, kwargs = self._constructed_with()
        return (_rebuild, (type(self), message, kwargs))

    def _constructed_with(self) -> tuple[str, dict[str, object]]:
        """The message and keyword arguments that build this error again (a pickled copy)."""
        kwargs: dict[str, object] = {
            "status": self.status,
            "error_code": self.error_code,
            "grant": self.grant,
            "retry_after": self.retry_after,
            "hint": self.hint,
        }
        return self.detail, kwargs

    def _render(self) -> str:
        parts = [self.detail]
        if self.status is not None:
            parts.append(f"(HTTP {self.status}")
            parts[-1] += f", error={self.error_code})" if self.error_code else ")"
        elif self.error_code:
            parts.append(f"(error={self.error_code})")
        return " ".join(parts) + f": {self.hint}"


def _rebuild(cls: type[TokenError], detail: str, kwargs: dict[str, object]) -> TokenError:
    return cls(detail, **kwargs)  # type: ignore[arg-type]


class DefinitiveTokenError(TokenError):
    """The server gave a definitive answer; sending the same request again cannot help."""


class InvalidCredentials(DefinitiveTokenError):
    """The username or password was rejected (or the account is locked).

    Never retried automatically: enterprise servers lock accounts after a few
    failed logins. The provider refuses further logins until it is reset.
    """

    hint = (
        "check Username and Password (and that the account is not locked or expired); "
        "no further login is attempted until the provider is reset, to avoid an account lockout"
    )


class InvalidClient(DefinitiveTokenError):
    """The client id, client secret or client authentication method was rejected."""

    hint = (
        "check Client Id and Client Secret, and the client authentication method "
        "(client_auth: body, basic, basic_plain or none)"
    )


class UnsupportedGrantType(DefinitiveTokenError):
    """The server does not accept the grant type that was sent."""

    hint = "the server does not accept this grant_type: set Grant Type to the value it expects"


class InvalidScope(DefinitiveTokenError):
    """The requested scope is unknown or not allowed."""

    hint = "check the scope (or a scope in Body Parameters)"


class InvalidRequest(DefinitiveTokenError):
    """The server found the token request malformed (some servers also say this for a bad password)."""

    hint = (
        "check Body Parameters, Headers, Grant Type and the body encoding (form or json); "
        "some servers also answer a wrong password this way"
    )


class TokenRequestRejected(DefinitiveTokenError):
    """Another definitive 4xx answer from the token endpoint."""

    hint = "check the Access Token URL and the request fields the server expects"


class RefreshTokenRejected(DefinitiveTokenError):
    """The refresh token was rejected (expired, revoked or already used).

    The provider answers this by logging in again with the password, once.
    """

    hint = "the refresh token is no longer valid; a new password login is needed"


class TokenResponseError(TokenError):
    """The token endpoint answered with something that is not a usable token response."""

    hint = (
        "check that the Access Token URL points at the token endpoint itself and, for a "
        "non-standard response, set token_path or token_response"
    )


class LoginResponseError(TokenResponseError, DefinitiveTokenError):
    """A password login answered 2xx without a usable token (a sign-in page, ``success: false``...).

    Definitive: the password is not sent again automatically, since a server answering like this
    may be counting failed logins. Still a :class:`TokenResponseError` for code that catches that.
    """


class TokenRedirectError(DefinitiveTokenError):
    """The token endpoint answered with a redirect; credentials are never sent on to it."""

    hint = "set the Access Token URL to the final address (credentials are not sent to a redirect)"


class TransientTokenError(TokenError):
    """A failure that may pass: 5xx, 429, 408, a timeout or a connection error."""

    transient = True
    hint = "the server is unavailable or throttling; the request is retried with backoff"

    @property
    def may_have_been_processed(self) -> bool:
        """Whether the server may have acted on the request although it failed.

        408, 429 and 503 say the request was not acted on (RFC 9110 15.5.9, 15.6.4; RFC 6585 4), as
        do the OAuth codes ``temporarily_unavailable`` (RFC 6749 4.1.2.1) and ``slow_down`` (RFC 8628
        3.5), whatever the status; a 500, 502 or 504 may come after the work was done (a gateway
        timing out on it, say).
        """
        if self.error_code in ("temporarily_unavailable", "slow_down"):
            return False
        return self.status not in (408, 429, 503)


class TokenTransportError(TransientTokenError):
    """No answer came from the token endpoint: a timeout, or the connection was lost.

    The request may have reached the server and been processed (:attr:`may_have_been_processed`):
    a refresh token sent this way may already be used up, so while the server may rotate refresh
    tokens it is never sent again (the provider logs in with the password instead).
    """

    hint = "check the Access Token URL, the network and TLS settings"

    @property
    def may_have_been_processed(self) -> bool:
        """The request may have reached the server: no answer says it was not acted on."""
        return True


class TokenConnectError(TokenTransportError):
    """The token endpoint could not be connected to (refused, DNS, TLS handshake): nothing was sent."""

    @property
    def may_have_been_processed(self) -> bool:
        """Nothing was sent."""
        return False


class CredentialsLockedOut(InvalidCredentials):
    """Raised at once, without a request, after an earlier login was definitively rejected."""


class StaticTokenRejected(InvalidCredentials):
    """The API refused a static token (a personal access token or API key) with 401.

    A static token cannot be renewed, so nothing is retried: every later request with it
    fails at once with this error, without being sent, until the token is replaced.
    """

    hint = (
        "replace the token (it is expired, revoked, or not valid for this API) and run again; "
        "requests with it are not sent again until it is replaced"
    )


def _utc(epoch: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return "a time too far ahead to print"


class TokenRequestsPaused(TransientTokenError):
    """No token request is sent before :attr:`retry_at`; raised at once, without a request.

    Attributes:
        retry_at: epoch seconds from which token requests are sent again.
        resume_in: seconds from when the error was raised until then (also :attr:`retry_after`).
    """

    def __init__(self, message: str, *, retry_at: float, retry_after: float, **kwargs: Any) -> None:
        self.retry_at = retry_at
        self._message = message
        when = f"{message}; next attempt at {_utc(retry_at)} (in {math.ceil(max(0.0, retry_after)):.0f}s)"
        super().__init__(when, retry_after=retry_after, **kwargs)

    @property
    def resume_in(self) -> float:
        """Seconds to wait, counted from when the error was raised."""
        return self.retry_after or 0.0

    def _constructed_with(self) -> tuple[str, dict[str, object]]:
        _, kwargs = super()._constructed_with()
        return self._message, {**kwargs, "retry_at": self.retry_at}


class LoginBudgetExhausted(TokenRequestsPaused):
    """The credential's password logins for this window are spent (see ``LoginBudget``).

    Servers that answer a wrong password with a 5xx, a 429 or an HTML page cannot be told from
    an outage, so logins are capped per window whatever the answers were: no account lockout.
    """

    hint = (
        "password logins failed (an error status, a throttle, a page that is not a token) or their tokens were "
        "refused right away: check the Access Token URL, the account and the server; logins resume by themselves"
    )


class TokenEndpointRateLimited(TokenRequestsPaused):
    """The token endpoint asked to wait (``Retry-After`` or a rate-limit reset header) longer than ``max_wait``."""

    hint = "the server is throttling this client; wait, or lower the request rate of every client using this account"


class UnsafeTokenStore(ConfigError):
    """A token store file that others could read or replace: a symlink, or open to group or others.

    Raised when the provider starts; the file holds live credentials, so it is never used as is.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__([FieldProblem("token store", f"{path}: {problem}")])

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.problem))


# --- API requests (crawler) -------------------------------------------------------------


class CrawlError(OAuthPWError):
    """A crawl could not go on."""


class StateError(CrawlError, ValueError):
    """A crawl state file cannot be used (damaged, or written by another crawl); it says what to do."""


class PageShapeError(CrawlError, TypeError):
    """A page's body does not have the shape the crawler declared (e.g. ``records_path`` is not a list)."""


class HTTPStatusError(CrawlError):
    """An API request answered with a status that is not retried (or retries ran out)."""

    def __init__(self, message: str, *, status: int, url: str, excerpt: str = "", data: object = None) -> None:
        self.status = status
        #: The URL without its query (safe to print).
        self.url = url
        #: A short, scrubbed excerpt of the body.
        self.excerpt = excerpt
        #: The decoded JSON body, when it was JSON (for hooks such as ``Crawler.position_expired``;
        #: never part of the message).
        self.data = data
        text = f"{message}: HTTP {status} for {url}"
        if excerpt:
            text += f" (body: {excerpt!r})"
        super().__init__(text)


class UnauthorizedError(HTTPStatusError):
    """API requests are refused with 401 even with renewed tokens: the account lost access to the API."""


class ForeignOriginError(CrawlError):
    """A link or redirect leads to an origin the token must not be sent to.

    The message names the origin (never the token). List it in ``allowed_origins`` if it is
    yours, or let the crawler follow such links without credentials.
    """

    def __init__(self, message: str, *, origin: str) -> None:
        self.origin = origin
        super().__init__(message)


# Durability: a crawl's output and state files.


class FileLocked(CrawlError):
    """Another crawl, in this process or another, is using this file; :attr:`path` names it.

    Two crawls appending to one output, or saving positions to one state file, lose records
    (one repairs or overwrites what the other is writing), so the second is refused at once.
    """

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"path": self.path}))


class OutputLocked(FileLocked):
    """The output file is being written by another crawl."""


class StateLocked(FileLocked):
    """The state file is in use by another crawl."""


class StateMismatch(StateError):
    """The state file belongs to another crawl (crawler, partitions, pagination or output).

    Resuming from it would skip records. :attr:`differences` maps each differing item to
    ``(recorded, now)``.
    """

    def __init__(self, message: str, *, differences: dict[str, tuple[object, object]]) -> None:
        self.differences = differences
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"differences": self.differences}))


class StorageError(CrawlError):
    """Records or positions could not be written (a full disk, an I/O error, no permission).

    Attributes:
        path: the file.
        errno: the operating system's error number (``errno.ENOSPC``...), if any.
        strerror: its text.

    Nothing is checkpointed past records that were not written: fix the cause and run the
    crawl again to resume.
    """

    def __init__(self, message: str, *, path: str, errno: int | None = None, strerror: str | None = None) -> None:
        self.path = path
        self.errno = errno
        self.strerror = strerror
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {"path": self.path, "errno": self.errno, "strerror": self.strerror}
        return (_rebuild, (type(self), str(self), kwargs))


class SinkError(StorageError):
    """The sink could not open, write or flush its output."""


class StateWriteError(StorageError):
    """The state file could not be saved."""
