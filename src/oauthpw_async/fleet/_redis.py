"""The one Redis connection of a coordinator: key names, Lua scripts, and error translation.

Every Redis call of the fleet goes through :meth:`RedisLink.call` or :meth:`RedisLink.script`,
so a lost or stalled Redis always surfaces as :class:`CoordinatorUnavailable`, and a refusal
that does not pass by itself (credentials, ACL, an old server) as :class:`CoordinatorRefused`,
never as a client library's own exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import coredis
import coredis.exceptions
from coredis.commands.script import Script
from coredis.retry import NoRetryPolicy

from ..errors import ConfigError, FieldProblem
from .errors import CoordinatorRefused, CoordinatorUnavailable
from .redis_url import check_credentials, redis_where, with_env_password

__all__ = ["PASSING", "UNAVAILABLE", "RedisLink", "as_text", "error_code"]


T = TypeVar("T")

#: What a lost, refused or stalled connection raises in the client library.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # refused, lost, or the server still loading its data
    coredis.exceptions.ReadOnlyError,  # a replica answering during a failover
    TimeoutError,  # a stalled server (the command timeout)
    OSError,
)

#: Error codes of refusals that pass by themselves: the server loading its data, out of memory
#: (``maxmemory``), unable to persist (``stop-writes-on-bgsave-error``), busy with a script, or
#: failing over. They count as Redis being unavailable for now.
PASSING = frozenset({"LOADING", "OOM", "MISCONF", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY"})

#: What to change, per error code of a refusal that does not pass.
_ADVICE = {
    "WRONGPASS": "Redis refused the user name or password of the Redis URL: correct them",
    "NOAUTH": "Redis requires a password: put it in the Redis URL (redis://user:password@host:port/db)",
    "NOPERM": (
        "the Redis user lacks a permission the fleet needs: allow it the commands it uses (strings, hashes, "
        "streams, sorted sets, pub/sub, scripts) on the keys and channels of the fleet's namespace"
    ),
    "UNKNOWN": "Redis does not know a command the fleet uses: run Redis 6.2 or later",
    "WRONGTYPE": (
        "a key of the fleet's namespace holds other data: give the fleet a namespace of its own, or clear the "
        "fleet's records there (`oauthpw-async fleet reset --tokens`, `fleet reset` for a crawl)"
    ),
}

#: The client library raises these classes for these codes, taking the code off the text.
_CODE_OF_CLASS: tuple[tuple[type[BaseException], str], ...] = (
    (coredis.exceptions.AuthenticationFailureError, "WRONGPASS"),
    (coredis.exceptions.AuthenticationRequiredError, "NOAUTH"),
    (coredis.exceptions.AuthorizationError, "NOPERM"),
    (coredis.exceptions.UnknownCommandError, "UNKNOWN"),
    (coredis.exceptions.WrongTypeError, "WRONGTYPE"),
    (coredis.exceptions.TryAgainError, "TRYAGAIN"),
    (coredis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)


def error_code(exc: BaseException) -> str:
    """Redis's error code for a refusal (``WRONGPASS``, ``OOM``, ...), else the client's class name."""
    for cls, code in _CODE_OF_CLASS:
        if isinstance(exc, cls):
            return code
    text = str(exc)
    # The code leads the text, or follows a script's own prefix: "ERR user_script:3: WRONGTYPE Operation..."
    words = [w.strip("-:@,") for w in text.split()]
    for word in words:
        if word in _ADVICE or word in PASSING:
            return word
    lowered = text.lower()
    if "unknown command" in lowered:
        return "UNKNOWN"
    # Redis 7 words an ACL refusal inside a script without its code: "The user executing the
    # script can't publish to the channel ...", "... no permissions to access ...".
    if "can't publish" in lowered or "can't access" in lowered or "no permissions" in lowered:
        return "NOPERM"
    first = words[0] if words else ""
    return first if first.isupper() and first.isalpha() else type(exc).__name__


class RedisLink:
    """A coredis client opened for the life of a coordinator, plus the fleet's key scheme.

    The password comes from the URL (percent-encoded, :func:`check_credentials`) or, when the URL has
    none, from the environment variable ``OAUTHPW_REDIS_PASSWORD``.

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
        check_credentials(url)
        url = with_env_password(url)
        self.url = url
        self.where = redis_where(url)
        self.namespace = namespace
        self.command_timeout = command_timeout
        try:
            self.client: coredis.Redis[bytes] = coredis.Redis.from_url(
                url,
                connect_timeout=connect_timeout,
                stream_timeout=command_timeout,
                retry_policy=NoRetryPolicy(),
                decode_components=True,  # a user name or password percent-encoded in the URL, as URLs need
            )
        except ValueError:  # the client's message may quote the URL
            raise ConfigError(
                [
                    FieldProblem(
                        "Redis URL", "cannot be read as redis://[user:password@]host:port/db (rediss:// for TLS)"
                    )
                ]
            ) from None
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

    def refused(self, exc: BaseException) -> CoordinatorUnavailable | CoordinatorRefused:
        """The typed error for a refusal: unavailable for now, or refused until the set-up changes.

        Only Redis's error code goes into the message, never its text (which may quote keys or values).
        """
        code = error_code(exc)
        if code in PASSING:
            return CoordinatorUnavailable(f"Redis refused the command for now ({code})", where=self.where)
        advice = _ADVICE.get(code, "Redis refused a command of the fleet; its log says why")
        return CoordinatorRefused(advice, code=code, where=self.where)

    async def call(self, request: Awaitable[T]) -> T:
        """Await one client request, translating connection failures, timeouts and refusals."""
        try:
            return await request
        except UNAVAILABLE as exc:
            raise self.unavailable(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise self.refused(exc) from None

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
