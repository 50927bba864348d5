"""The token a :class:`~oauthpw_async.provider.TokenProvider` holds, as one state machine.

What the provider holds is in one of four states; every change is a named event, and an
event the table does not allow raises :class:`LifecycleError` (a bug, never a server's doing):

<!-- table -->
| state | event | next state |
|---|---|---|
| CLOSED | close | CLOSED |
| CLOSED | forget | CLOSED |
| CLOSED | install | CLOSED |
| CLOSED | invalidate | CLOSED |
| CLOSED | open | EMPTY, HELD, SERVING |
| EMPTY | close | CLOSED |
| EMPTY | forget | EMPTY |
| EMPTY | install | SERVING |
| HELD | close | CLOSED |
| HELD | forget | EMPTY |
| HELD | install | SERVING |
| SERVING | close | CLOSED |
| SERVING | expire | HELD |
| SERVING | forget | EMPTY |
| SERVING | install | SERVING |
| SERVING | invalidate | HELD |
<!-- end table -->

* **CLOSED**: outside ``async with`` (before it, or after it). Nothing is handed out; a renewal that
  finishes after the close (it was shielded) still installs its token, with its expiry but no
  refresh time. ``open`` goes to whichever state the token held says (none: EMPTY; one kept only
  for its refresh token: HELD; one with an expiry: SERVING).
* **EMPTY**: no token (none yet, or ``reset()`` to another configuration: ``forget``).
* **SERVING**: a token with its refresh time and expiry. By the clock it is FRESH before
  :attr:`Lifecycle.refresh_at` (handed out at once), STALE before :attr:`Lifecycle.expires_at`
  (handed out, one background renewal) and EXPIRED after (callers wait for the renewal); the
  clock moves it, not an event. A token that arrived while CLOSED has no refresh time: STALE at once.
* **HELD**: a token never handed out, kept for its refresh token only: it was refused
  (``invalidate``), or restored from the store already expired (``expire``).

``install`` is every new token (a renewal, the store, another process's); ``drop_refresh_token``
changes the token held, never the state. In every state but SERVING (and a CLOSED one with a
late token) both times are ``-inf``: nothing is handed out without a renewal.
"""

from __future__ import annotations

import enum
import math

import attrs

from .grant import Token

__all__ = ["NEVER", "TRANSITIONS", "Event", "Lifecycle", "LifecycleError", "State", "table"]

#: The time of a deadline that has always passed.
NEVER = -math.inf


class State(enum.Enum):
    """What the provider holds (see the module's table)."""

    CLOSED = "CLOSED"
    EMPTY = "EMPTY"
    SERVING = "SERVING"
    HELD = "HELD"


class Event(enum.Enum):
    """A change of what the provider holds."""

    OPEN = "open"
    CLOSE = "close"
    INSTALL = "install"
    INVALIDATE = "invalidate"
    EXPIRE = "expire"
    FORGET = "forget"


S, E = State, Event

#: ``(state, event) -> the states it may lead to`` (one, but for ``open``); nothing else is allowed.
TRANSITIONS: dict[tuple[State, Event], frozenset[State]] = {
    (S.CLOSED, E.OPEN): frozenset({S.EMPTY, S.HELD, S.SERVING}),
    (S.CLOSED, E.CLOSE): frozenset({S.CLOSED}),
    (S.CLOSED, E.INSTALL): frozenset({S.CLOSED}),
    (S.CLOSED, E.INVALIDATE): frozenset({S.CLOSED}),
    (S.CLOSED, E.FORGET): frozenset({S.CLOSED}),
    (S.EMPTY, E.INSTALL): frozenset({S.SERVING}),
    (S.EMPTY, E.FORGET): frozenset({S.EMPTY}),
    (S.EMPTY, E.CLOSE): frozenset({S.CLOSED}),
    (S.SERVING, E.INSTALL): frozenset({S.SERVING}),
    (S.SERVING, E.INVALIDATE): frozenset({S.HELD}),
    (S.SERVING, E.EXPIRE): frozenset({S.HELD}),
    (S.SERVING, E.FORGET): frozenset({S.EMPTY}),
    (S.SERVING, E.CLOSE): frozenset({S.CLOSED}),
    (S.HELD, E.INSTALL): frozenset({S.SERVING}),
    (S.HELD, E.FORGET): frozenset({S.EMPTY}),
    (S.HELD, E.CLOSE): frozenset({S.CLOSED}),
}


def table() -> str:
    """:data:`TRANSITIONS` as a Markdown table (the module docstring and the docs show it)."""
    rows = ["| state | event | next state |", "|---|---|---|"]
    for (state, event), targets in sorted(TRANSITIONS.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value)):
        rows.append(f"| {state.value} | {event.value} | {', '.join(sorted(t.value for t in targets))} |")
    return "\n".join(rows)


class LifecycleError(RuntimeError):
    """An event the table does not allow in the current state: a bug in the provider."""


@attrs.define
class Lifecycle:
    """The token held, its refresh time and expiry (monotonic), and the state they are in."""

    state: State = State.CLOSED
    #: The current token (possibly expired, or HELD for its refresh token).
    token: Token | None = None
    #: Before it: FRESH; ``-inf`` unless SERVING.
    refresh_at: float = NEVER
    #: After it the token is never handed out; ``-inf`` unless SERVING (or a late token while CLOSED).
    expires_at: float = NEVER

    def _go(self, event: Event, target: State) -> None:
        allowed = TRANSITIONS.get((self.state, event))
        if allowed is None or target not in allowed:
            raise LifecycleError(f"{event.value} is not allowed in state {self.state.value}")
        self.state = target

    @property
    def servable(self) -> bool:
        """Whether the token held has an expiry: SERVING, or a late token while CLOSED (served once open).

        Otherwise (EMPTY, HELD, CLOSED without one) nothing is handed out without a renewal.
        """
        return self.expires_at != NEVER

    def allows(self, event: Event) -> bool:
        """Whether ``event`` may happen in the current state."""
        return (self.state, event) in TRANSITIONS

    def open(self) -> None:
        """The provider opened: the state follows from what it holds."""
        held = State.EMPTY if self.token is None else State.HELD
        self._go(Event.OPEN, State.SERVING if self.servable else held)

    def close(self) -> None:
        """The provider closed: nothing is handed out (the token stays readable)."""
        self._go(Event.CLOSE, State.CLOSED)
        self.refresh_at = self.expires_at = NEVER

    def install(self, token: Token, *, refresh_at: float, expires_at: float) -> None:
        """A new token, handed out until ``expires_at`` (no refresh time while CLOSED)."""
        closed = self.state is State.CLOSED
        self._go(Event.INSTALL, State.CLOSED if closed else State.SERVING)
        self.token = token
        self.expires_at = expires_at
        self.refresh_at = NEVER if closed else refresh_at

    def invalidate(self) -> bool:
        """The token handed out was refused: keep it for its refresh token only; whether it took effect."""
        if self.token is None or not self.servable:
            return False
        self._go(Event.INVALIDATE, State.CLOSED if self.state is State.CLOSED else State.HELD)
        self.refresh_at = self.expires_at = NEVER
        return True

    def expire(self, token: Token) -> None:
        """The token just installed had expired already: keep ``token`` for its refresh token only."""
        self._go(Event.EXPIRE, State.HELD)
        self.token = token
        self.refresh_at = self.expires_at = NEVER

    def forget(self) -> None:
        """Another configuration: no token."""
        self._go(Event.FORGET, State.CLOSED if self.state is State.CLOSED else State.EMPTY)
        self.token = None
        self.refresh_at = self.expires_at = NEVER

    def drop_refresh_token(self, token: Token | None) -> None:
        """Never present ``token``'s refresh token again, if it is still the one held (no change of state)."""
        if token is not None and self.token is token:
            self.token = attrs.evolve(token, refresh_token=None, refresh_expires_at=None)
