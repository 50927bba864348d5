"""Errors of the fleet coordinator, in the package's one hierarchy (:class:`OAuthPWError`)."""

from __future__ import annotations

from typing import ClassVar

from ..errors import OAuthPWError
from ..renewal import RetryMeaning

__all__ = [
    "CLEAR_TOKENS",
    "COORDINATOR_RETRY",
    "ClaimLost",
    "CoordinatorRefused",
    "CoordinatorUnavailable",
    "FleetError",
    "FleetKeyMismatch",
    "SharedStateUnreadable",
    "damaged",
]


#: Longest wait before asking an unreachable Redis again (it is cheap; the token endpoint is not asked).
COORDINATOR_RETRY = 2.0


class FleetError(OAuthPWError):
    """Something the fleet coordinator (Redis) refused or could not do."""

    #: A token renewal that failed with it backs off as for any transient failure.
    renewal_retry: ClassVar[RetryMeaning] = RetryMeaning()


class CoordinatorUnavailable(FleetError, ConnectionError):
    """Redis could not be reached or did not answer in time.

    A process keeps serving a token it already holds; it never renews without the
    fleet's lease, because a rotating refresh token used twice revokes the whole fleet's
    session. Check that Redis is running and reachable at the configured URL, or choose
    local renewal explicitly (``on_unavailable="renew_locally"``).
    """

    #: Not a server hint: the provider backs off as for any transient failure.
    retry_after: float | None = None
    #: No HTTP answer was involved.
    status: int | None = None
    #: Redis, not the token endpoint: asked again within :data:`COORDINATOR_RETRY` seconds, so
    #: callers learn of the outage (or of its end) within seconds instead of after a long backoff.
    renewal_retry: ClassVar[RetryMeaning] = RetryMeaning(max_delay=COORDINATOR_RETRY)

    def __init__(self, message: str, *, where: str) -> None:
        #: ``host:port`` of the Redis server (never its password).
        self.where = where
        self.detail = message
        super().__init__(
            f"{message} (Redis at {where}): check that Redis is running and reachable; the fleet does not renew "
            "tokens without it unless local renewal was chosen"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Copied for every waiter of a failed renewal, and pickled across processes.
        return (_unavailable, (self.detail, self.where))


def _unavailable(detail: str, where: str) -> CoordinatorUnavailable:
    return CoordinatorUnavailable(detail, where=where)


class CoordinatorRefused(FleetError):
    """Redis answered but refused what the fleet asked, for a reason that does not pass by itself.

    The credentials in the Redis URL are wrong or missing, the Redis user lacks a permission
    (ACL), the server is older than Redis 6.2, or a key of the fleet's namespace holds other data.
    The message says which and what to change; :attr:`code` is Redis's error code (``WRONGPASS``,
    ``NOPERM``, ...). Like :class:`CoordinatorUnavailable`, a process keeps serving the token it
    holds and never renews without the fleet.
    """

    #: Not a server hint: the provider backs off as for any failed renewal.
    retry_after: float | None = None
    #: No HTTP answer was involved.
    status: int | None = None
    #: A set-up to fix: callers hear of it at once, and Redis is asked again after a growing pause.
    renewal_retry: ClassVar[RetryMeaning] = RetryMeaning(latch=True)

    def __init__(self, message: str, *, code: str, where: str) -> None:
        #: Redis's error code (the first word of its answer), or the client's error name.
        self.code = code
        #: ``host:port/db`` of the Redis server (never its password).
        self.where = where
        self.detail = message
        super().__init__(f"{message} (Redis at {where}, {code})")

    def __reduce__(self) -> tuple[object, ...]:
        return (_refused, (self.detail, self.code, self.where))


def _refused(detail: str, code: str, where: str) -> CoordinatorRefused:
    return CoordinatorRefused(detail, code=code, where=where)


class SharedStateUnreadable(FleetError, ValueError):
    """A record of the fleet in Redis cannot be opened or is not what the fleet writes there.

    A token record sealed with another key (see :class:`FleetKeyMismatch`), or a record that was
    damaged or written by something else (a generation that is not a number, a latch that is not
    JSON, a token that cannot go into a header, a position that does not open). The message says
    which record; ``oauthpw-async fleet reset --tokens`` clears the shared token records (the next
    worker logs in once), ``fleet reset`` a crawl's partitions and positions.
    """

    #: A set-up to fix (the key does not open the record): callers hear of it at once, and the
    #: record is read again after a growing pause.
    renewal_retry: ClassVar[RetryMeaning] = RetryMeaning(latch=True)

    def __init__(self, message: str) -> None:
        self.detail = message
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.detail,))


#: What every message about an unreadable token record ends with.
CLEAR_TOKENS = "clear it with `oauthpw-async fleet reset --tokens` (the next worker that needs a token logs in once)"


def damaged(what: str, *, clear: str = CLEAR_TOKENS) -> SharedStateUnreadable:
    """The error for a fleet record that is not what the fleet writes (``what`` names it, never its value)."""
    return SharedStateUnreadable(f"{what} in Redis is damaged or was written by something else: {clear}")


class FleetKeyMismatch(SharedStateUnreadable):
    """The shared token record is sealed with another fleet key than this process holds.

    Every process of a fleet needs the same key (``OAUTHPW_FLEET_KEY``). The processes holding the
    key most live processes hold replace a record sealed with another key, with one login under
    the lease; a process in the minority gets this error, which names both keys by their public
    ids (:func:`~oauthpw_async.fleet.cipher.key_id`, never the keys) and who sealed the record.
    After a key change, list the old key after the new one (``keys=[new, old]``).
    """

    def __init__(
        self,
        message: str,
        *,
        key_id: str,
        record_key_id: str,
        sealed_by: str,
        generation: int = 0,
    ) -> None:
        #: The public id of this process's current key.
        self.key_id = key_id
        #: The public id of the key that sealed the record ("" for a record that does not say).
        self.record_key_id = record_key_id
        #: The process that sealed the record (host and pid), if the record says.
        self.sealed_by = sealed_by
        #: The record's generation.
        self.generation = generation
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_mismatch, (self.detail, self.key_id, self.record_key_id, self.sealed_by, self.generation))


def _mismatch(detail: str, key_id: str, record_key_id: str, sealed_by: str, generation: int) -> FleetKeyMismatch:
    return FleetKeyMismatch(
        detail, key_id=key_id, record_key_id=record_key_id, sealed_by=sealed_by, generation=generation
    )


class ClaimLost(FleetError):
    """The worker no longer owns the partition (another worker took it over after an idle timeout).

    Its writes are refused so that it can never move the position of a partition someone
    else is crawling; stop working on that partition and claim another.
    """

    def __init__(self, partition: str) -> None:
        self.partition = partition
        super().__init__(
            f"partition {partition!r} was taken over by another worker: stop crawling it and claim another "
            "(raise the idle timeout if live workers lose their claims)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (ClaimLost, (self.partition,))
