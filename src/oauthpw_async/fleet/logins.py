"""Fleet-wide protection against account lockouts: a login budget and a "password rejected" latch.

Enterprise identity providers lock an account after a handful of failed logins, counted per
account, not per process: N workers each keeping their own budget would try N times as
often. Both are counted in Redis, on the server's clock (``TIME`` inside the Lua script), so
that no process's clock skew widens the window. The budget follows the one rule of
:class:`oauthpw_async.login_budget.LoginBudget`: it counts unconfirmed logins, and a token re-arms it.
"""

from __future__ import annotations

import secrets

import attrs
import orjson

from ..errors import UsageError
from ..login_budget import LoginBudget as BudgetRule
from ._redis import RedisLink
from .errors import damaged

__all__ = ["CredentialsLatch", "LatchState", "LoginBudget"]

# A sliding-window log (one sorted-set member per login, scored by server time in ms).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""

# Seconds since the last confirmed login on the server's clock (-1: none in the window).
_SINCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = redis.call('GET', KEYS[1])
if not at then return -1 end
return now - tonumber(at)
"""

# A token came back: forget the unconfirmed logins, remember when (for one window).
_CONFIRM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], now, 'PX', tonumber(ARGV[1]))
return 1
"""

_USED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]) + 1, '+inf')
"""


class LoginBudget:
    """At most ``limit`` unconfirmed password logins per ``window`` seconds for a whole fleet.

    A login is unconfirmed until a token comes back; :meth:`confirm` then re-arms the budget for
    every process, and for one window ``after_success`` unconfirmed logins are allowed instead
    (the rule of :class:`oauthpw_async.login_budget.LoginBudget`).

    Args:
        link: the coordinator's Redis connection.
        scope: the account (``acct:<account key>``: token URL, client, user), whatever token it asks for:
            an identity provider counts a user's logins, not a scope's.
        limit: unconfirmed logins allowed in any window.
        window: the window in seconds.
        after_success: unconfirmed logins allowed within one window of a confirmed login
            (default: the rule's default, never fewer than ``limit``).
    """

    def __init__(
        self, link: RedisLink, scope: str, *, limit: int = 5, window: float = 900.0, after_success: int | None = None
    ) -> None:
        if limit < 1 or window <= 0:
            raise UsageError("a login budget needs limit >= 1 and a positive window")
        after = BudgetRule().max_after_success if after_success is None else after_success
        self.rule = BudgetRule(max_logins=limit, window=window, max_after_success=max(limit, after))
        self._link = link
        self.limit = limit
        self.window = window
        self.key = link.key(scope, "logins")
        self.confirmed_key = link.key(scope, "logins-confirmed")

    async def current_limit(self) -> int:
        """Unconfirmed logins allowed in the current window (more within one window of a confirmed login)."""
        since_ms = int(await self._link.script(_SINCE, [self.confirmed_key], []))
        return self.rule.limit(None if since_ms < 0 else since_ms / 1000)

    async def take(self) -> float:
        """Charge one login: ``0.0`` if it may go ahead now, else seconds until one may (nothing charged)."""
        limit = await self.current_limit()
        member = secrets.token_hex(8)  # distinct members: two logins in the same millisecond both count
        ok, wait_ms = await self._link.script(_TAKE, [self.key], [limit, self._window_ms, member])
        return 0.0 if ok else max(0.001, int(wait_ms) / 1000)

    async def confirm(self) -> None:
        """A login got a token: the password works; forget the unconfirmed logins of every process."""
        await self._link.script(_CONFIRM, [self.key, self.confirmed_key], [self._window_ms])

    async def used(self) -> int:
        """Unconfirmed logins charged in the current window."""
        return int(await self._link.script(_USED, [self.key], [self._window_ms]))

    async def reset(self) -> None:
        """Forget the logins counted so far (after an admin fixed the account)."""
        await self._link.call(self._link.client.delete([self.key, self.confirmed_key]))

    @property
    def _window_ms(self) -> int:
        return max(1, round(self.window * 1000))


@attrs.frozen
class LatchState:
    """Why the fleet stopped logging in (what the server answered; never the password)."""

    status: int | None
    error_code: str | None
    #: Epoch seconds on the Redis server's clock.
    since: float
    #: Free text naming the process that saw the rejection (e.g. host and pid).
    by: str


_TRIP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('PUBLISH', ARGV[2], 'tripped')
return 1
"""


class CredentialsLatch:
    """Once any process's password login is definitively rejected, no process logs in until :meth:`reset`.

    Tripping publishes on ``channel`` so that watchers stop at once; the latch has no expiry:
    only an explicit reset (after the password was fixed) clears it.
    """

    def __init__(self, link: RedisLink, scope: str, *, channel: str) -> None:
        self._link = link
        self.key = link.key(scope, "rejected")
        self.channel = channel

    async def trip(self, *, status: int | None, error_code: str | None, by: str) -> bool:
        """Close the latch; ``False`` if it was already closed (the first rejection is kept)."""
        info = orjson.dumps({"status": status, "error_code": error_code, "by": by}).decode()
        return bool(await self._link.script(_TRIP, [self.key], [info, self.channel]))

    async def state(self) -> LatchState | None:
        """Why logins are stopped, or ``None`` while they are allowed."""
        raw = await self._link.call(self._link.client.get(self.key))
        if raw is None:
            return None
        try:  # still closed if unreadable: a latch is never taken as open because it was tampered with
            info, _, since = raw.decode().rpartition("|")
            data = orjson.loads(info)
            status, code = data.get("status"), data.get("error_code")
            if not (status is None or type(status) is int) or not (code is None or isinstance(code, str)):
                raise TypeError("not a latch")
            return LatchState(status, code, float(since), str(data.get("by", "")))
        except (ValueError, TypeError, AttributeError):
            raise damaged(
                "the fleet's rejected-password latch", clear="check the password, then call reset() on a provider"
            ) from None

    async def reset(self) -> bool:
        """Allow logins again (after the credentials were fixed); ``True`` if the latch was closed."""
        return bool(await self._link.call(self._link.client.delete([self.key])))
