"""Sending one token request: the endpoint protocol and its aiohttp implementation.

No retries and no reading of the token answer here (see :mod:`oauthpw_async.exchange` and
:mod:`oauthpw_async.grant`): an endpoint sends bytes and returns the status, the headers and the
body that came back. It refuses, as typed errors, what no grant could read: a redirect (the
credentials are never sent on to its target), a body over ``max_response_bytes``, and a request
that got no answer (no connection at all is told apart from sent-but-unanswered).
:class:`AiohttpTokenEndpoint` is the default on asyncio; :class:`oauthpw_async.testing.InMemoryEndpoint`
serves tests on any backend.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

import aiohttp

from ._httputil import safe_url
from .config import PasswordGrantConfig
from .errors import (
    ConfigError,
    FieldProblem,
    LoginResponseError,
    TokenConnectError,
    TokenRedirectError,
    TokenResponseError,
    TokenTransportError,
)
from .grant import TokenRequest, TokenResponse

__all__ = ["AiohttpTokenEndpoint", "TokenEndpoint", "ssl_context"]


class TokenEndpoint(Protocol):
    """Sends one token request and returns the raw answer. No retries, no parsing."""

    async def send(self, request: TokenRequest) -> TokenResponse:
        """Send ``request``; raise :class:`TokenTransportError` when no answer came back."""
        ...


def ssl_context(config: PasswordGrantConfig) -> ssl.SSLContext | bool:
    """TLS settings from the config: default verification, a CA bundle, or none.

    The CA bundle is read here, when it is first used, not when the config is built.

    Raises:
        ConfigError: the CA bundle cannot be read or holds no usable certificate.
    """
    if not config.verify_tls:
        return False
    if config.ca_bundle:
        try:
            return ssl.create_default_context(cafile=config.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(
                [FieldProblem("ca_bundle", f"cannot be used ({reason}): give a PEM file of CA certificates")]
            ) from None
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
                # A login answered with something unusable is definitive: the password is not sent again.
                too_large = LoginResponseError if request.grant == "password" else TokenResponseError
                if declared is not None and declared > cfg.max_response_bytes:
                    raise too_large(
                        f"token response of {declared} bytes exceeds max_response_bytes",
                        status=resp.status,
                        grant=request.grant,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > cfg.max_response_bytes:
                        raise too_large(
                            "token response exceeds max_response_bytes; refused",
                            status=resp.status,
                            grant=request.grant,
                        )
                    chunks.append(chunk)
                return TokenResponse(status=resp.status, headers=headers, body=b"".join(chunks))
        except aiohttp.ClientConnectorError as exc:  # no connection (refused, DNS, TLS): nothing was sent
            what = f"token request to {safe_url(request.url)} could not connect ({type(exc).__name__})"
            raise TokenConnectError(what, grant=request.grant) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:  # sent, maybe processed, no answer
            kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"failed ({type(exc).__name__})"
            raise TokenTransportError(f"token request to {safe_url(request.url)} {kind}", grant=request.grant) from None

    async def aclose(self) -> None:
        """Close the session if this endpoint made it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
