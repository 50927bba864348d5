"""Test a connection: one password login, then one refresh whenever a refresh token came back.

:func:`check_connection` is what ``oauthpw-async check`` runs, as a library function for
platforms that test a connection before saving it. Its :class:`CheckResult` is secret-free
(tokens are described masked, with a short fingerprint), serialisable with
:meth:`CheckResult.as_dict`, and maps onto the command's exit codes (:class:`ExitCode`, defined in
:mod:`oauthpw_async.exit_codes` and re-exported here).

This module imports no HTTP client: the aiohttp endpoint is loaded only when no endpoint
is passed in, so the check runs on any anyio backend with an in-memory endpoint.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ._httputil import safe_url
from .clock import SYSTEM_CLOCK, Clock
from .config import PasswordGrantConfig
from .errors import (
    ConfigError,
    OAuthPWError,
    TokenError,
)
from .exchange import exchange
from .exit_codes import EXIT_CODE_MEANINGS, ExitCode, exit_code_for, exit_codes_text  # re-exported: public here
from .grant import Grant, Instant, Token, TokenRequest, TokenResponse, build_password_request, build_refresh_request
from .grant import parse_token_response as _parse
from .retry import RetryPolicy
from .store import StoredToken

if TYPE_CHECKING:
    from .sources import TokenSource
    from .store import TokenStore
    from .transport import TokenEndpoint

__all__ = [
    "CHECK_RETRY",
    "EXIT_CODE_MEANINGS",
    "CheckResult",
    "CheckStep",
    "ExitCode",
    "ProbeResult",
    "check_connection",
    "exit_code_for",
    "exit_codes_text",
    "probe_api",
]

log = logging.getLogger("oauthpw_async.check")

CHECK_RETRY = RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=5.0, max_wait=30.0, deadline=60.0)
"""Retries of one token request in a check: one retry of a transient failure, never of a rejection."""


def _error_dict(error: OAuthPWError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, TokenError):
        out.update(
            status=error.status,
            error_code=error.error_code,
            grant=error.grant,
            transient=error.transient,
            retry_after=error.retry_after,
            hint=error.hint,
        )
    if isinstance(error, ConfigError):
        out["problems"] = [{"field": p.field, "message": p.message} for p in error.problems]
    return out


@attrs.frozen
class CheckStep:
    """One token request of a check: what was sent where, and what came back (masked)."""

    #: ``"password"`` (the login) or ``"refresh_token"``.
    grant: Grant
    #: Where it was sent, without query or user info.
    url: str
    #: Whether a token came back.
    ok: bool
    #: HTTP requests sent for this step (retries of transient failures included).
    attempts: int
    #: Seconds from the first request to the answer (retry waits included).
    seconds: float
    #: :meth:`Token.describe` of the token that came back: masked, with a fingerprint.
    token: dict[str, Any] | None = None
    #: The refresh token in this answer: ``issued`` / ``none`` on a login;
    #: ``rotated`` (a new one), ``kept`` (the same or none sent back) on a refresh.
    refresh_token: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return attrs.asdict(self)


@attrs.frozen
class CheckResult:
    """What a connection check tried and what came back, without any secret.

    ``error`` is the typed error that ended the check (``None`` when it passed);
    :attr:`exit_code` is what ``oauthpw-async check`` exits with.
    """

    access_token_url: str
    refresh_token_url: str
    username: str | None
    steps: tuple[CheckStep, ...] = ()
    #: Why no refresh was tried (empty when one was).
    refresh_skipped: str = ""
    error: OAuthPWError | None = attrs.field(default=None, eq=False)
    #: Whether the newest token was saved to the token store passed in.
    stored: bool = False

    @property
    def ok(self) -> bool:
        """Whether the login (and the refresh, when tried) succeeded."""
        return self.error is None

    @property
    def exit_code(self) -> ExitCode:
        """The exit code of ``oauthpw-async check`` for this result."""
        return exit_code_for(self.error)

    @property
    def login(self) -> CheckStep | None:
        """The password login step, if it was sent."""
        return next((s for s in self.steps if s.grant == "password"), None)

    @property
    def refresh(self) -> CheckStep | None:
        """The refresh step, if it was sent."""
        return next((s for s in self.steps if s.grant == "refresh_token"), None)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (what ``check --json`` prints)."""
        return {
            "ok": self.ok,
            "exit_code": int(self.exit_code),
            "access_token_url": self.access_token_url,
            "refresh_token_url": self.refresh_token_url,
            "username": self.username,
            "steps": [s.as_dict() for s in self.steps],
            "refresh_skipped": self.refresh_skipped or None,
            "stored": self.stored,
            "error": _error_dict(self.error) if self.error is not None else None,
        }

    @classmethod
    def from_config_error(cls, error: ConfigError, source: str = "") -> CheckResult:
        """The result of a check that could not start: the configuration itself is invalid."""
        return cls(access_token_url=source, refresh_token_url="", username=None, error=error)


async def check_connection(
    config: PasswordGrantConfig,
    *,
    store: TokenStore | None = None,
    endpoint: TokenEndpoint | None = None,
    retry: RetryPolicy = CHECK_RETRY,
    clock: Clock = SYSTEM_CLOCK,
) -> CheckResult:
    """Log in once with the password, then refresh once whenever a refresh token came back.

    The refresh goes to the Refresh Token URL (the Access Token URL when none is set). A
    rejected login is never retried (no account lockout); transient failures are retried
    once (``retry``). With ``store``, the newest token is saved there, so a crawl with the
    same store starts without a password login.

    Never raises for a failed check: the typed error is in :attr:`CheckResult.error`.

    Args:
        config: the connection to test.
        store: a token store to keep the newest token in (e.g. :class:`FileTokenStore`).
        endpoint: how token requests are sent; :class:`AiohttpTokenEndpoint` by default.
        retry: retries of each token request.
        clock: time source for timings and retry waits.
    """
    base = CheckResult(
        access_token_url=safe_url(config.access_token_url),
        refresh_token_url=safe_url(config.effective_refresh_url),
        username=config.username,
    )
    owned = endpoint is None
    try:
        if endpoint is None:
            from .transport import AiohttpTokenEndpoint  # aiohttp only when it is used

            endpoint = AiohttpTokenEndpoint(config)
    except ConfigError as exc:  # e.g. an unreadable CA bundle, found when TLS is set up
        return attrs.evolve(base, error=exc)
    try:
        return await _login_then_refresh(base, config, endpoint, store, retry, clock)
    finally:
        if owned:
            aclose = getattr(endpoint, "aclose", None)
            if aclose is not None:
                await aclose()


async def _login_then_refresh(
    base: CheckResult,
    config: PasswordGrantConfig,
    endpoint: TokenEndpoint,
    store: TokenStore | None,
    retry: RetryPolicy,
    clock: Clock,
) -> CheckResult:
    """The check's steps: a login, then a refresh when the login issued a refresh token; the newest kept."""
    login, token, error = await _step(config, endpoint, build_password_request(config), None, retry, clock)
    steps = [login]
    if token is None:
        return attrs.evolve(base, steps=tuple(steps), error=error)
    newest = token
    skipped = ""
    if token.refresh_token is None:
        skipped = "no refresh token was issued: renewals will be password logins"
    else:
        refresh_request = build_refresh_request(config, token.refresh_token)
        refresh, new, error = await _step(config, endpoint, refresh_request, token, retry, clock)
        steps.append(refresh)
        if new is not None:
            newest = new
    stored = await _keep_newest(store, config.credential_key, newest) if store is not None else False
    return attrs.evolve(base, steps=tuple(steps), refresh_skipped=skipped, error=error, stored=stored)


async def _keep_newest(store: TokenStore, key: str, token: Token) -> bool:
    """Save the check's newest token; whether it was stored.

    The check's login is a renewal like any other: one generation past what the store holds, so
    the store never goes back. A file store fsyncs: off the event loop.
    """
    previous = await anyio.to_thread.run_sync(store.load, key)
    generation = previous.generation + 1 if previous is not None else 1
    return await anyio.to_thread.run_sync(store.save, key, StoredToken(token, generation))


async def _step(
    config: PasswordGrantConfig,
    endpoint: TokenEndpoint,
    request: TokenRequest,
    previous: Token | None,
    retry: RetryPolicy,
    clock: Clock,
) -> tuple[CheckStep, Token | None, TokenError | None]:
    attempts = 0

    def on_send(req: TokenRequest, attempt: int) -> None:
        nonlocal attempts
        attempts += 1
        log.debug("token request: grant=%s url=%s attempt=%d", req.grant, safe_url(req.url), attempt + 1)

    def parse(response: TokenResponse, sent: Instant) -> Token:
        return _parse(config, request, response, sent, previous=previous)

    started = clock.monotonic()
    grant = request.grant
    url = safe_url(request.url)
    try:
        # A refresh that may have been used without an answer is not sent again: with rotation the
        # second use would revoke the whole token family (the check then reports the failure).
        resend = grant != "refresh_token"
        token = await exchange(
            endpoint, request, parse, policy=retry, clock=clock, on_send=on_send, resend_unanswered=resend
        )
    except TokenError as exc:
        seconds = round(clock.monotonic() - started, 6)
        log.debug("token request: grant=%s failed after %d attempt(s): %s", grant, attempts, type(exc).__name__)
        return CheckStep(grant, url, False, attempts, seconds), None, exc
    seconds = round(clock.monotonic() - started, 6)
    if previous is None:
        rt = "issued" if token.refresh_token is not None else "none"
    else:
        rotated = token.refresh_token is not None and token.refresh_token != previous.refresh_token
        rt = "rotated" if rotated else "kept"
    return CheckStep(grant, url, True, attempts, seconds, token.describe(), rt), token, None


@attrs.frozen
class ProbeResult:
    """One API request sent with the connection's token (``check --probe``): where, and the answer's status."""

    #: Where it was sent, without query or user info.
    url: str
    #: The final HTTP status (``None``: no answer, or no token to send).
    status: int | None
    #: Seconds from the request to the answer (renewing a refused token included).
    seconds: float
    error: OAuthPWError | None = attrs.field(default=None, eq=False)

    @property
    def exit_code(self) -> ExitCode:
        """The exit code of ``oauthpw-async check --probe`` for this probe."""
        return exit_code_for(self.error)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping, without any secret."""
        return {
            "url": self.url,
            "status": self.status,
            "seconds": self.seconds,
            "error": _error_dict(self.error) if self.error is not None else None,
        }


async def probe_api(
    tokens: TokenSource, url: str, *, timeout: float = 30.0, clock: Clock = SYSTEM_CLOCK
) -> ProbeResult:
    """``GET url`` once with the token of ``tokens`` (renewed once after a 401) and report the status.

    Never raises for a failed probe: a refused static token is a
    :class:`~oauthpw_async.errors.StaticTokenRejected`, a status >= 400 an
    :class:`~oauthpw_async.errors.HTTPStatusError`, both in :attr:`ProbeResult.error`. The
    token never appears in the result.
    """
    from .session import AuthorizedSession  # aiohttp only when it is used

    parts = urllib.parse.urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # the token goes to this origin only
    started = clock.monotonic()
    status: int | None = None
    error: OAuthPWError | None = None
    try:
        async with (
            AuthorizedSession(tokens, base_url=origin, timeout=timeout, retry=RetryPolicy(max_attempts=1)) as api,
            api.get(url, raise_for_status=False) as resp,
        ):
            status = resp.status
            resp.raise_for_status()
    except OAuthPWError as exc:
        error = exc
        if status is None and isinstance(getattr(exc, "status", None), int):
            status = exc.status  # type: ignore[attr-defined]  # e.g. the 401 that refused a static token
    return ProbeResult(safe_url(url), status, clock.monotonic() - started, error)
