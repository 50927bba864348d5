"""The provider's side of its :class:`~oauthpw_async.store.TokenStore`: reading, restoring, writing.

A :class:`StoreKeeper` counts the generations of one credential's tokens, moves a stored token
(kept on the wall clock) onto this process's monotonic clock, and writes every renewed token.
What the provider then does with a restored token (serve it, or hold it for its refresh token)
is a lifecycle event of the provider's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import attrs

from .errors import ConfigError, OAuthPWError
from .grant import Token
from .store import MemoryTokenStore, StoredToken, TokenStore

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["STORE_FUTURE_TOLERANCE", "StoreKeeper"]

log = logging.getLogger("oauthpw_async.provider")

#: A stored token issued further ahead than this on the wall clock is not trusted (a clock
#: that jumped back, or a forged file); a smaller lead is clamped to "issued now".
STORE_FUTURE_TOLERANCE = 3600.0


class StoreKeeper:
    """One provider's token store, and the generation of the token it holds."""

    __slots__ = ("_generation", "store")

    def __init__(self, store: TokenStore | None) -> None:
        self.store: TokenStore = store or MemoryTokenStore()
        #: Generation of the current token in the store: one more per renewal.
        self._generation = 0

    def load(self, key: str) -> StoredToken | None:
        """The stored token of ``key``; ``None`` if there is none or it cannot be read.

        Raises:
            ConfigError: the store is unsafe (a setup error, raised before anything starts).
        """
        try:
            return self.store.load(key)
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("token store could not be read, logging in instead: %s", type(exc).__name__)
            return None

    def restore(self, stored: StoredToken, clock: Clock) -> Token | None:
        """``stored``'s token on ``clock``'s monotonic time; ``None`` if it claims to come from the future."""
        now_wall = clock.wall()
        record = stored.record
        if record.issued_wall > now_wall + STORE_FUTURE_TOLERANCE:
            log.warning(
                "the stored token claims to be issued %.0fs in the future (a clock change or a damaged "
                "store); ignored, logging in instead",
                record.issued_wall - now_wall,
            )
            return None
        # A token from slightly ahead (a clock step) counts as issued now: never longer than its lifetime.
        if record.issued_wall > now_wall:
            record = attrs.evolve(record, issued_wall=now_wall)
        self._generation = max(self._generation, stored.generation)
        return record.token(clock)  # the store keeps wall-clock times: onto this process's monotonic clock

    def renewed(self, token: Token) -> StoredToken:
        """``token`` as the next generation (a renewal)."""
        self._generation += 1
        return StoredToken(token, self._generation)

    def other_credential(self) -> None:
        """The provider now renews another credential's token: its generations start again."""
        self._generation = 0

    async def save(self, key: str, entry: StoredToken) -> None:
        """Write ``entry`` (a failure is logged, never raised; a newer stored token is kept)."""
        store = self.store
        try:
            if isinstance(store, MemoryTokenStore):  # no I/O: no worker thread
                saved = store.save(key, entry)
            else:
                # Shielded: closing the provider waits for the write instead of losing the newest token.
                with anyio.CancelScope(shield=True):
                    saved = await anyio.to_thread.run_sync(store.save, key, entry)
        except Exception as exc:
            log.warning(
                "token store could not be written: %s", exc if isinstance(exc, OAuthPWError) else type(exc).__name__
            )
        else:
            if not saved:
                log.info("token store holds a newer token (another process renewed); kept it")
