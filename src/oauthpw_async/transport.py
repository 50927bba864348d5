"""Sending token requests: the endpoint protocol, its aiohttp implementation, and retries.

The retry loop is anyio-only and talks to any :class:`TokenEndpoint`, so the provider
runs on asyncio and trio; :class:`AiohttpTokenEndpoint` is the default on asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import attrs

from .clock import SYSTEM_CLOCK, Clock
from .config import PasswordGrantConfig
from .errors import TokenRedirectError, TokenResponseError, TokenTransportError, TransientTokenError
from .grant import Instant, Token, TokenRequest, TokenResponse

log = logging.getLogger("oauthpw_async.transport")


class TokenEndpoint(Protocol):
    """Sends one token request and returns the raw answer. No retries, no parsing."""

    async def send(self, request: TokenRequest) -> TokenResponse:
        """Send ``request``; raise :class:`TokenTransportError` when no answer came back."""
        ...


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        if p.port:
            host = f"{host}:{p.port}"
        return urlunsplit((p.scheme, host, p.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def ssl_context(config: PasswordGrantConfig) -> ssl.SSLContext | bool:
    """TLS settings from the config: default verification, a CA bundle, or none."""
    if not config.verify_tls:
        return False
    if config.ca_bundle:
        return ssl.create_default_context(cafile=config.ca_bundle)
    return True


class AiohttpTokenEndpoint:
    """Token requests over aiohttp: never follows redirects, caps the body it reads.

    Pass a ``session`` to share a connection pool; otherwise one is made on first use
    and closed by :meth:`aclose`.
    """

    def __init__(self, config: PasswordGrantConfig, session: aiohttp.ClientSession | None = None) -> None:
        self._config = config
        self._session = session
        self._owns_session = session is None
        self._ssl = ssl_context(config)

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=8)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    async def send(self, request: TokenRequest) -> TokenResponse:
        """Send one token request with the configured total timeout."""
        session = await self._get_session()
        cfg = self._config
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        try:
            async with session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
                ssl=self._ssl,
            ) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                if 300 <= resp.status < 400:
                    where = safe_url(headers.get("location", "")) if headers.get("location") else "nowhere"
                    raise TokenRedirectError(
                        f"token endpoint redirected to {where}", status=resp.status, grant=request.grant
                    )
                declared = resp.content_length
                if declared is not None and declared > cfg.max_response_bytes:
                    raise TokenResponseError(
                        f"token response of {declared} bytes exceeds max_response_bytes",
                        status=resp.status,
                        grant=request.grant,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > cfg.max_response_bytes:
                        raise TokenResponseError(
                            "token response exceeds max_response_bytes; refused",
                            status=resp.status,
                            grant=request.grant,
                        )
                    chunks.append(chunk)
                return TokenResponse(status=resp.status, headers=headers, body=b"".join(chunks))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"failed ({type(exc).__name__})"
            raise TokenTransportError(f"token request to {safe_url(request.url)} {kind}", grant=request.grant) from None

    async def aclose(self) -> None:
        """Close the session if this endpoint made it."""
        if self._owns_session and self._session is not None:
            await self._session.close()


@attrs.frozen
class RetryPolicy:
    """Bounded retries with full-jitter exponential backoff, for transient failures only.

    A definitive answer (rejected password, rejected client, unsupported grant...) is
    never retried: it costs exactly one request.
    """

    #: Total sends for one token request, the first included.
    max_attempts: int = 4
    #: First backoff ceiling, doubled each attempt (full jitter: uniform in [0, ceiling]).
    base_delay: float = 0.5
    #: Largest backoff ceiling.
    max_delay: float = 15.0
    #: A ``Retry-After`` longer than this is not waited for; the error is raised instead.
    max_retry_after: float = 120.0
    #: Total time budget across attempts, in seconds.
    deadline: float = 180.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The delay before retry number ``attempt`` (0-based)."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


async def exchange(
    endpoint: TokenEndpoint,
    request: TokenRequest,
    parse: Callable[[TokenResponse, Instant], Token],
    *,
    policy: RetryPolicy = RetryPolicy(),
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    on_send: Callable[[TokenRequest, int], None] | None = None,
) -> Token:
    """Send ``request`` and parse the answer, retrying transient failures per ``policy``."""
    rng = rng or random.Random()
    start = clock.monotonic()
    attempt = 0
    while True:
        sent = Instant(clock.monotonic(), clock.wall())
        if on_send is not None:
            on_send(request, attempt)
        try:
            return parse(await endpoint.send(request), sent)
        except TransientTokenError as exc:
            attempt += 1
            if attempt >= policy.max_attempts:
                raise
            delay = policy.backoff(attempt - 1, rng)
            if exc.retry_after is not None:
                if exc.retry_after > policy.max_retry_after:
                    raise
                delay = exc.retry_after + rng.uniform(0, policy.base_delay)
            if clock.monotonic() - start + delay > policy.deadline:
                raise
            log.warning("token request (%s) failed, retry %d in %.2fs: %s", request.grant, attempt, delay, exc)
            await clock.sleep(delay)
