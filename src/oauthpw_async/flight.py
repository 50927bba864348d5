"""The single flight of a :class:`~oauthpw_async.provider.TokenProvider`: at most one renewal at a time.

Every caller that needs a token while one is being renewed waits for that renewal instead of
starting its own. The renewal runs in the provider's task group, so a cancelled caller never
cancels it; each waiter gets the token, or its own copy of the renewal's error.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from .errors import ProviderClosed

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .grant import Token

__all__ = ["Flight", "SingleFlight"]


class Flight:
    """One token request in flight and everyone waiting for it."""

    __slots__ = ("done", "error", "token")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.token: Token | None = None
        #: What waiters get unless the renewal ends otherwise (it was cancelled: the provider closed).
        self.error: BaseException | None = ProviderClosed("the token provider closed")

    async def wait(self) -> Token:
        """The renewed token, once the renewal is done; raises (a copy of) its error if it failed."""
        await self.done.wait()
        if self.token is not None:
            return self.token
        assert self.error is not None
        # Each waiter raises its own copy: one shared exception object raised by thousands of
        # tasks would pile every waiter's traceback onto it.
        err = copy.copy(self.error)
        err.__traceback__ = None
        raise err


class SingleFlight:
    """The renewal in flight, if any (:attr:`current`)."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Flight | None = None

    def start(
        self,
        tg: TaskGroup,
        renew: Callable[[], Awaitable[Token]],
        then: Callable[[Token], Awaitable[None]],
    ) -> Flight:
        """Run ``renew()`` in ``tg`` as the flight; once its waiters are woken, ``then(token)`` if it worked."""
        flight = Flight()
        self.current = flight
        tg.start_soon(self._run, flight, renew, then)
        return flight

    async def _run(
        self, flight: Flight, renew: Callable[[], Awaitable[Token]], then: Callable[[Token], Awaitable[None]]
    ) -> None:
        try:
            flight.token = await renew()
            flight.error = None
        except Exception as exc:
            flight.error = exc
        finally:
            if self.current is flight:
                self.current = None
            flight.done.set()
        if flight.token is not None:
            await then(flight.token)
