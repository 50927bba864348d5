"""oauthpw_async: OAuth 2.0 password-grant tokens shared by thousands of async fetch tasks.

The public API is re-exported here; see the README for a tour.
"""

from __future__ import annotations

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
    OAuthPWError,
    RefreshTokenRejected,
    TokenError,
    TokenRedirectError,
    TokenRequestRejected,
    TokenResponseError,
    TokenTransportError,
    TransientTokenError,
    UnauthorizedError,
    UnsupportedGrantType,
)
from .grant import (
    Instant,
    Token,
    TokenRequest,
    TokenResponse,
    build_password_request,
    build_refresh_request,
    parse_token_response,
)
from .provider import ProviderClosed, RefreshPolicy, TokenEvent, TokenProvider, TokenStats
from .store import FileTokenStore, MemoryTokenStore, TokenStore
from .transport import AiohttpTokenEndpoint, RetryPolicy, TokenEndpoint, exchange

__all__ = [
    "AiohttpTokenEndpoint",
    "Clock",
    "ConfigError",
    "CrawlError",
    "CredentialsLockedOut",
    "DefinitiveTokenError",
    "FieldProblem",
    "FileTokenStore",
    "HTTPStatusError",
    "Instant",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidRequest",
    "InvalidScope",
    "MemoryTokenStore",
    "OAuthPWError",
    "PasswordGrantConfig",
    "ProviderClosed",
    "RefreshPolicy",
    "RefreshTokenRejected",
    "RetryPolicy",
    "Secret",
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
    "build_password_request",
    "build_refresh_request",
    "exchange",
    "load_config",
    "parse_token_response",
]
