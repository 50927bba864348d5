"""oauthpw_async: OAuth 2.0 password-grant tokens shared by thousands of async fetch tasks.

The public API is re-exported here, and the crawler's in :mod:`oauthpw_async.crawler`; see the
README for a tour. Importing the package (or its sans-IO modules :mod:`oauthpw_async.config` and
:mod:`oauthpw_async.grant`) does not import aiohttp: the aiohttp token endpoint is loaded on first
use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._httputil import rate_limit_delay
from ._secret import Secret
from .check import CheckResult, check_connection
from .clock import Clock, SystemClock
from .config import PasswordGrantConfig, load_config
from .errors import (
    ConfigError,
    CrawlError,
    CredentialsLockedOut,
    DefinitiveTokenError,
    FieldProblem,
    FileLocked,
    ForeignOriginError,
    HTTPStatusError,
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    LoginBudgetExhausted,
    LoginResponseError,
    OAuthPWError,
    OutputLocked,
    PageShapeError,
    ProviderClosed,
    RefreshTokenRejected,
    SecretExposureError,
    SinkError,
    StateError,
    StateLocked,
    StateMismatch,
    StateWriteError,
    StaticTokenRejected,
    StorageError,
    TokenConnectError,
    TokenEndpointRateLimited,
    TokenError,
    TokenRedirectError,
    TokenRequestRejected,
    TokenRequestsPaused,
    TokenResponseError,
    TokenTransportError,
    TransientTokenError,
    UnauthorizedError,
    UnsafeTokenStore,
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
from .provider import LoginBudget, RefreshPolicy, TokenEvent, TokenProvider, TokenStats
from .retry import Retrying, RetryPolicy
from .sources import StaticToken, TokenSource, load_token_source
from .static_config import StaticTokenConfig
from .store import FileTokenStore, MemoryTokenStore, StoredToken, TokenStore

if TYPE_CHECKING:
    from .session import APIResponse, AuthorizedSession, SessionStats
    from .transport import AiohttpTokenEndpoint, TokenEndpoint

# Names whose module imports aiohttp, loaded on first attribute access (PEP 562). The crawler's
# names live in :mod:`oauthpw_async.crawler`.
_LAZY = {
    "AiohttpTokenEndpoint": "transport",
    "TokenEndpoint": "transport",
    "APIResponse": "session",
    "AuthorizedSession": "session",
    "SessionStats": "session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oauthpw_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "APIResponse",
    "AiohttpTokenEndpoint",
    "AuthorizedSession",
    "CheckResult",
    "Clock",
    "ConfigError",
    "CrawlError",
    "CredentialsLockedOut",
    "DefinitiveTokenError",
    "FieldProblem",
    "FileLocked",
    "FileTokenStore",
    "ForeignOriginError",
    "HTTPStatusError",
    "Instant",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidRequest",
    "InvalidScope",
    "LoginBudget",
    "LoginBudgetExhausted",
    "LoginResponseError",
    "MemoryTokenStore",
    "OAuthPWError",
    "OutputLocked",
    "PageShapeError",
    "PasswordGrantConfig",
    "ProviderClosed",
    "RefreshPolicy",
    "RefreshTokenRejected",
    "RetryPolicy",
    "Retrying",
    "Secret",
    "SecretExposureError",
    "SessionStats",
    "SinkError",
    "StateError",
    "StateLocked",
    "StateMismatch",
    "StateWriteError",
    "StaticToken",
    "StaticTokenConfig",
    "StaticTokenRejected",
    "StorageError",
    "StoredToken",
    "SystemClock",
    "Token",
    "TokenConnectError",
    "TokenEndpoint",
    "TokenEndpointRateLimited",
    "TokenError",
    "TokenEvent",
    "TokenProvider",
    "TokenRedirectError",
    "TokenRequest",
    "TokenRequestRejected",
    "TokenRequestsPaused",
    "TokenResponse",
    "TokenResponseError",
    "TokenSource",
    "TokenStats",
    "TokenStore",
    "TokenTransportError",
    "TransientTokenError",
    "UnauthorizedError",
    "UnsafeTokenStore",
    "UnsupportedGrantType",
    "UsageError",
    "build_password_request",
    "build_refresh_request",
    "check_connection",
    "exchange",
    "load_config",
    "load_token_source",
    "parse_token_response",
    "rate_limit_delay",
]
