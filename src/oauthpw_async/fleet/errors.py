"""Errors of the fleet coordinator, in the package's one hierarchy (:class:`OAuthPWError`)."""

from __future__ import annotations

from ..errors import OAuthPWError

__all__ = ["ClaimLost", "CoordinatorRefused", "CoordinatorUnavailable", "FleetError", "SharedStateUnreadable"]


class FleetError(OAuthPWError):
    """Something the fleet coordinator (Redis) refused or could not do."""


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
    """A token record in Redis cannot be decrypted with the configured key(s).

    Every process of a fleet needs the same token key; after changing it, pass the old
    key too (``keys=[new, old]``) until the next renewal rewrote the record.
    """


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
