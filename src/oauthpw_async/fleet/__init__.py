"""Fleet coordination through Redis: many crawler processes on one credential.

Install with ``pip install "oauthpw-async[fleet]"`` (coredis and cryptography). Building blocks,
each one atomic in Redis (Lua scripts):

* :class:`SharedTokenState`: the encrypted token record, compare-and-set by generation, and a
  pub/sub notification of every new generation;
* :class:`Lease`: one renewing process at a time (fencing number, renewed while it works);
* :class:`LoginBudget` and :class:`CredentialsLatch`: fleet-wide lockout protection;
* :class:`HostRateLimiter`: one request rate per host for the fleet (GCRA) and a shared pause;
* :class:`PartitionQueue`: a crawl's partitions on a Redis Stream consumer group, fenced
  checkpoints, takeover of a dead worker's partitions, fleet-wide completeness;
* :class:`Coordinator`: all of them for one credential over one connection;
* :class:`RedisLink`: that one Redis connection alone (key names, scripts, typed errors), for
  tools that read or reset a fleet's records without a credential (``oauthpw-async fleet``);
* :class:`FleetCrawl`: a crawler run as one worker of a fleet (claimed partitions, fenced
  positions, shared politeness), on :class:`FleetCheckpoints` and :class:`SharedHostGovernor`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ClaimLost,
    CoordinatorRefused,
    CoordinatorUnavailable,
    FleetError,
    FleetKeyMismatch,
    SharedStateUnreadable,
)

if TYPE_CHECKING:
    from ._redis import RedisLink
    from .cipher import TokenCipher, generate_key
    from .coordinator import Coordinator
    from .crawl import CrawlStateLost, FleetCheckpoints, FleetCrawl, SharedHostGovernor
    from .lease import Lease, LeaseHandle
    from .logins import CredentialsLatch, LatchState, LoginBudget
    from .partitions import Claim, FleetStatus, PartitionQueue, PartitionStatus
    from .ratelimit import HostRateLimiter, RateDecision
    from .tokens import PublishResult, RefreshPermit, SharedToken, SharedTokenState

# Loaded on first use: the errors are importable (by the provider) without the fleet extra installed.
_LAZY = {
    "TokenCipher": "cipher",
    "generate_key": "cipher",
    "Coordinator": "coordinator",
    "CrawlStateLost": "crawl",
    "FleetCheckpoints": "crawl",
    "FleetCrawl": "crawl",
    "SharedHostGovernor": "crawl",
    "Lease": "lease",
    "LeaseHandle": "lease",
    "CredentialsLatch": "logins",
    "LatchState": "logins",
    "LoginBudget": "logins",
    "Claim": "partitions",
    "FleetStatus": "partitions",
    "PartitionQueue": "partitions",
    "PartitionStatus": "partitions",
    "HostRateLimiter": "ratelimit",
    "RateDecision": "ratelimit",
    "RedisLink": "_redis",
    "PublishResult": "tokens",
    "RefreshPermit": "tokens",
    "SharedToken": "tokens",
    "SharedTokenState": "tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Claim",
    "ClaimLost",
    "Coordinator",
    "CoordinatorRefused",
    "CoordinatorUnavailable",
    "CrawlStateLost",
    "CredentialsLatch",
    "FleetCheckpoints",
    "FleetCrawl",
    "FleetError",
    "FleetKeyMismatch",
    "FleetStatus",
    "HostRateLimiter",
    "LatchState",
    "Lease",
    "LeaseHandle",
    "LoginBudget",
    "PartitionQueue",
    "PartitionStatus",
    "PublishResult",
    "RateDecision",
    "RedisLink",
    "RefreshPermit",
    "SharedHostGovernor",
    "SharedStateUnreadable",
    "SharedToken",
    "SharedTokenState",
    "TokenCipher",
    "generate_key",
]
