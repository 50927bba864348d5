"""Token sources: what the crawler and the authorized session take their ``Authorization`` from.

:class:`TokenSource` is the interface; :class:`~oauthpw_async.TokenProvider` (password grant)
and :class:`StaticToken` (a token the admin already has) implement it, and so can a user's
own class. :func:`load_token_source` reads either kind of connection from one file format.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ._secret import Secret
from .clock import SYSTEM_CLOCK, Clock
from .config import _normalise_key, _read_file, load_config
from .errors import ConfigError, FieldProblem, StaticTokenRejected, UsageError
from .grant import Instant, Token
from .provider import TokenProvider, TokenStats
from .static_config import PASSWORD_GRANT_ONLY_FIELDS, STATIC_TOKEN_FIELDS, StaticTokenConfig, load_static_config

__all__ = ["StaticToken", "TokenSource", "load_token_source"]

log = logging.getLogger("oauthpw_async.sources")


@runtime_checkable
class TokenSource(Protocol):
    """Where API requests get their token: the interface the crawler and the session use.

    Implement it to plug in your own source (a vault, a sidecar, another grant). The rules
    the callers rely on:

    * :meth:`get` returns a token valid now; it should not await anything when it has one.
    * :meth:`invalidate` is called with the token a server refused (HTTP 401); it returns
      whether that token was the current one. A source renews at most once per refused
      token, or (when it cannot renew) makes :meth:`get` raise a :class:`TokenError`.
    * :attr:`clock` is the time source used for retries and backoff.

    A source may also have a ``config`` with ``verify_tls`` and ``ca_bundle``: the crawler
    and the session then use those TLS settings for API requests.
    """

    @property
    def clock(self) -> Clock:
        """The clock the source (and the code using it) measures time with."""
        ...

    async def get(self) -> Token:
        """A token valid now."""
        ...

    async def authorization(self) -> str:
        """The ``Authorization`` header value for :meth:`get`'s token."""
        ...

    def invalidate(self, token: Token | None = None) -> bool:
        """Report that ``token`` was refused; returns whether it was the current token."""
        ...


class StaticToken:
    """A token the admin already has (personal access token, API key): never renewed.

    Same interface as :class:`~oauthpw_async.TokenProvider`, so the crawler, the authorized
    session and the command line take either. A 401 for it (reported through
    :meth:`invalidate`) cannot be fixed by retrying: from then on :meth:`get` raises
    :class:`~oauthpw_async.errors.StaticTokenRejected` at once, without any request, until
    :meth:`replace` installs a new token. ``async with`` is accepted (and does nothing), so
    code written for a provider works unchanged.

    Args:
        token: the token (or a :class:`StaticTokenConfig` holding it and its settings).
        auth_scheme: scheme before the token (``Bearer``; ``token`` for GitHub classic tokens).
        use_raw_token: send the value as the whole ``Authorization`` header.
        verify_tls: verify the API's TLS certificate.
        ca_bundle: a PEM file of CAs to trust instead of the system store.
        clock: time source for callers' retries (tests pass a FakeClock).
    """

    def __init__(
        self,
        token: str | Secret | StaticTokenConfig,
        *,
        auth_scheme: str = "Bearer",
        use_raw_token: bool = False,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(token, StaticTokenConfig):
            config = token
        else:
            config = StaticTokenConfig(
                token=token,
                auth_scheme=auth_scheme,
                use_raw_token=use_raw_token,
                verify_tls=verify_tls,
                ca_bundle=ca_bundle,
            )
        self._clock = clock
        #: Counters in the provider's shape (a static token only ever counts ``invalidations``).
        self.stats = TokenStats()
        self._install(config)

    def _install(self, config: StaticTokenConfig) -> None:
        self._config = config
        self._rejected = False
        now = self._clock
        scheme = "raw" if config.use_raw_token else config.auth_scheme
        self._token = Token(
            access_token=config.token,
            authorization=config.authorization,
            token_type=scheme,
            issued=Instant(now.monotonic(), now.wall()),
            lifetime=math.inf,
            lifetime_source="static",
        )

    @property
    def config(self) -> StaticTokenConfig:
        """The token's settings (TLS included); the token itself stays masked."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock callers measure retries with."""
        return self._clock

    @property
    def token(self) -> Token:
        """The token, whether or not it was refused."""
        return self._token

    @property
    def rejected(self) -> bool:
        """Whether an API refused the token (then :meth:`get` raises until :meth:`replace`)."""
        return self._rejected

    async def get(self) -> Token:
        """The token; raises :class:`StaticTokenRejected` once an API has refused it."""
        if self._rejected:
            raise self._error()
        return self._token

    async def authorization(self) -> str:
        """The ``Authorization`` header value."""
        if self._rejected:
            raise self._error()
        return self._token.authorization

    def invalidate(self, token: Token | None = None) -> bool:
        """Record that an API refused ``token`` (``None``: the current one); returns whether it was current."""
        if token is not None and token is not self._token and token.access_token != self._token.access_token:
            return False
        if not self._rejected:
            self._rejected = True
            self.stats.invalidations += 1
            log.error("the static token from %s was refused (HTTP 401): replace it", self._config.token_from)
        return True

    def replace(self, token: str | Secret | StaticTokenConfig) -> None:
        """Install a new token (keeping the other settings unless a config is given)."""
        if isinstance(token, StaticTokenConfig):
            self._install(token)
        else:
            c = self._config
            self._install(
                StaticTokenConfig(
                    token=token,
                    auth_scheme=c.auth_scheme,
                    use_raw_token=c.use_raw_token,
                    verify_tls=c.verify_tls,
                    ca_bundle=c.ca_bundle,
                    token_from="replace()",
                )
            )

    def _error(self) -> StaticTokenRejected:
        # A new exception per caller: one shared object raised by many tasks would collect
        # every caller's traceback.
        return StaticTokenRejected(
            f"the API refused the static token from {self._config.token_from}", status=401, grant="static"
        )

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        state = "rejected" if self._rejected else "ok"
        return f"StaticToken(token_from={self._config.token_from!r}, scheme={self._token.token_type!r}, {state})"


def load_token_source(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **provider_options: Any,
) -> TokenProvider | StaticToken:
    """The token source a connection file (or mapping) describes, not yet opened.

    A connection with ``Token`` / ``Token File`` (or ``API Key``...) is a :class:`StaticToken`;
    otherwise it is a password-grant :class:`~oauthpw_async.TokenProvider` built from
    :func:`~oauthpw_async.load_config`, with ``provider_options`` (``store=``, ``refresh=``...)
    passed on. A static token has nothing to renew or store, so those options are refused for it.
    Use the result as ``async with load_token_source("conn.toml") as tokens:``.

    Raises:
        ConfigError: every bad field at once (a connection with both kinds of field included).
        UsageError: provider options given for a static token.
    """
    data: Mapping[str, Any] = source if isinstance(source, Mapping) else _read_file(Path(source))
    if "connection" in data and isinstance(data["connection"], Mapping):
        data = data["connection"]
    keys = {_normalise_key(str(k)) for k in data}
    if keys & STATIC_TOKEN_FIELDS:
        grant_keys = keys & PASSWORD_GRANT_ONLY_FIELDS
        if grant_keys:
            raise ConfigError(
                [
                    FieldProblem(
                        "token",
                        "a connection is either a static token (Token) or a password grant "
                        f"(Access Token URL, Username, ...), not both; remove {', '.join(sorted(grant_keys))} "
                        "or the token",
                    )
                ]
            )
        if provider_options:
            raise UsageError(
                f"{', '.join(sorted(provider_options))}: a static token is never renewed or stored; "
                "these options apply to a password-grant connection only"
            )
        return StaticToken(load_static_config(data, env=env), clock=clock)
    return TokenProvider(load_config(data, env=env), clock=clock, **provider_options)
