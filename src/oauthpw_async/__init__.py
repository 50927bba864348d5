"""oauthpw_async: OAuth 2.0 password-grant tokens shared by thousands of async fetch tasks.

The public API is re-exported here; see the README for a tour. Importing the package (or
its sans-IO modules :mod:`oauthpw_async.config` and :mod:`oauthpw_async.grant`) does not
import aiohttp: the names that need it (the aiohttp token endpoint, the crawler) are loaded
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._httputil import rate_limit_delay
from ._secret import Secret
from .clock import Clock, SystemClock
from .config import PasswordGrantConfig, load_config
from .errors import (
    ConfigError,
    CrawlError,
    CredentialsLockedOut,
    DefinitiveTokenError,
    FieldProblem,
    HTTPStatusError,
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    LoginResponseError,
    OAuthPWError,
    PageShapeError,
    ProviderClosed,
    RefreshTokenRejected,
    SecretExposureError,
    StateError,
    TokenError,
    TokenRedirectError,
    TokenRequestRejected,
    TokenResponseError,
    TokenTransportError,
    TransientTokenError,
    UnauthorizedError,
    UnsupportedGrantType,
    UsageError,
)
from .exchange import exchange
from .grant import (
    Instant,
    Token,
    TokenRequest,
    TokenResponse,
    build_password_request,
    build_refresh_request,
    parse_token_response,
)
from .provider import RefreshPolicy, TokenEvent, TokenProvider, TokenStats
from .retry import Retrying, RetryPolicy
from .store import FileTokenStore, MemoryTokenStore, TokenStore

if TYPE_CHECKING:
    from .crawler import (
        CallableSink,
        Crawler,
        CrawlStats,
        Cursor,
        JsonLinesSink,
        LinkHeader,
        ListSink,
        NextUrl,
        ODataNextLink,
        Offset,
        Page,
        PageNumber,
        PageRequest,
        Paginator,
        Partition,
        PartitionStats,
        Sink,
    )
    from .transport import AiohttpTokenEndpoint, TokenEndpoint

# Names whose modules import aiohttp, loaded on first attribute access (PEP 562).
_LAZY = {
    "AiohttpTokenEndpoint": "transport",
    "TokenEndpoint": "transport",
    **dict.fromkeys(
        [
            "CallableSink",
            "CrawlStats",
            "Crawler",
            "Cursor",
            "JsonLinesSink",
            "LinkHeader",
            "ListSink",
            "NextUrl",
            "ODataNextLink",
            "Offset",
            "Page",
            "PageNumber",
            "PageRequest",
            "Paginator",
            "Partition",
            "PartitionStats",
            "Sink",
        ],
        "crawler",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oauthpw_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AiohttpTokenEndpoint",
    "CallableSink",
    "Clock",
    "ConfigError",
    "CrawlError",
    "CrawlStats",
    "Crawler",
    "CredentialsLockedOut",
    "Cursor",
    "DefinitiveTokenError",
    "FieldProblem",
    "FileTokenStore",
    "HTTPStatusError",
    "Instant",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidRequest",
    "InvalidScope",
    "JsonLinesSink",
    "LinkHeader",
    "ListSink",
    "LoginResponseError",
    "MemoryTokenStore",
    "NextUrl",
    "OAuthPWError",
    "ODataNextLink",
    "Offset",
    "Page",
    "PageNumber",
    "PageRequest",
    "PageShapeError",
    "Paginator",
    "Partition",
    "PartitionStats",
    "PasswordGrantConfig",
    "ProviderClosed",
    "RefreshPolicy",
    "RefreshTokenRejected",
    "RetryPolicy",
    "Retrying",
    "Secret",
    "SecretExposureError",
    "Sink",
    "StateError",
    "SystemClock",
    "Token",
    "TokenEndpoint",
    "TokenError",
    "TokenEvent",
    "TokenProvider",
    "TokenRedirectError",
    "TokenRequest",
    "TokenRequestRejected",
    "TokenResponse",
    "TokenResponseError",
    "TokenStats",
    "TokenStore",
    "TokenTransportError",
    "TransientTokenError",
    "UnauthorizedError",
    "UnsupportedGrantType",
    "UsageError",
    "build_password_request",
    "build_refresh_request",
    "exchange",
    "load_config",
    "parse_token_response",
    "rate_limit_delay",
]
