"""The one Redis connection of a coordinator: key names, Lua scripts, and error translation.

Every Redis call of the fleet goes through :meth:`RedisLink.call` or :meth:`RedisLink.script`,
so a lost or stalled Redis always surfaces as :class:`CoordinatorUnavailable`, never as a
client library's own exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import coredis
import coredis.exceptions
from coredis.commands.script import Script
from coredis.retry import NoRetryPolicy

from .errors import CoordinatorUnavailable

__all__ = ["UNAVAILABLE", "RedisLink", "as_text", "redis_where"]

T = TypeVar("T")

#: What a lost, refused or stalled connection raises in the client library.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # refused, lost, or the server still loading its data
    coredis.exceptions.ReadOnlyError,  # a replica answering during a failover
    TimeoutError,  # a stalled server (the command timeout)
    OSError,
)


def redis_where(url: str) -> str:
    """``host:port/db`` of a Redis URL, without user name or password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{host}:{port}{parts.path or ''}"


class RedisLink:
    """A coredis client opened for the life of a coordinator, plus the fleet's key scheme.

    Commands are not retried by the client library: a fleet operation such as a budget
    charge or a fencing increment must not run twice because a reply was lost. Callers
    decide what a :class:`CoordinatorUnavailable` means for them.

    Keys of one scope (a credential, a crawl, a host) share a Redis Cluster hash tag so that
    one Lua script may touch all of them.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "oauthpw",
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.where = redis_where(url)
        self.namespace = namespace
        self.command_timeout = command_timeout
        self.client: coredis.Redis[bytes] = coredis.Redis.from_url(
            url,
            connect_timeout=connect_timeout,
            stream_timeout=command_timeout,
            retry_policy=NoRetryPolicy(),
        )
        self._scripts: dict[str, Script[bytes]] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    def key(self, scope: str, name: str) -> str:
        """The key ``name`` of ``scope`` (``{namespace}:{scope}:name``, the scope as hash tag)."""
        return f"{self.namespace}:{{{scope}}}:{name}"

    def channel(self, scope: str, name: str) -> str:
        """A pub/sub channel name for ``scope`` (channels are not keys; same naming for clarity)."""
        return self.key(scope, name)

    async def __aenter__(self) -> RedisLink:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self.client)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # The client's task group closes cleanly; an exception from the body propagates
            # as itself instead of wrapped in the client's ExceptionGroup.
            await stack.__aexit__(None, None, None)

    def unavailable(self, exc: BaseException) -> CoordinatorUnavailable:
        """The typed error for a failed Redis call (the cause's type name only, never its text)."""
        return CoordinatorUnavailable(f"Redis did not answer ({type(exc).__name__})", where=self.where)

    async def call(self, request: Awaitable[T]) -> T:
        """Await one client request, translating connection failures and timeouts."""
        try:
            return await request
        except UNAVAILABLE as exc:
            raise self.unavailable(exc) from None

    async def script(self, source: str, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> Any:
        """Run a Lua script atomically (EVALSHA, loading it again after a server restart)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return await self.call(script(keys=list(keys), args=list(args)))


def as_text(value: Any) -> str:
    """A Redis reply (bytes or str) as text."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
