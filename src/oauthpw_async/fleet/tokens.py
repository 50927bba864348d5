"""The token a fleet shares: one encrypted record per credential, written by compare-and-set.

The record is a Redis hash ``{gen, tid, blob, spent, kid, by}``:

* ``gen``: the generation, +1 on every publish; a writer names the generation its token was
  renewed from, and the write succeeds only if that is still the current one (or the record is
  gone, e.g. after Redis lost its data). A stale lease holder can never overwrite a newer token.
* ``tid``: a random id of the token, so a reader can tell "same token" without decrypting it.
* ``blob``: the token, AES-GCM sealed (:class:`TokenCipher`) and bound to credential and generation.
* ``spent``: set by the lease holder just before it sends this generation's refresh token. A
  holder that died mid-refresh may have used it, and with rotating refresh tokens a second use
  revokes the whole session (reuse detection): its successor logs in with the password instead.
* ``kid`` and ``by``: the public id of the key that sealed it (:func:`~oauthpw_async.fleet.cipher.key_id`)
  and the process that wrote it (host and pid), so that a process holding another key can tell a
  record sealed elsewhere from a damaged one, and name who sealed it. Every watcher also subscribes
  to a channel named after its key id, so ``PUBSUB NUMSUB`` counts the live processes per key.

Every publish also sends the new generation on a pub/sub channel, in the same Lua call, so
watchers learn of it at once; a watcher that was disconnected re-reads the record.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

import anyio
import attrs
import coredis.exceptions
import orjson
from anyio.abc import TaskStatus

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TokenResponseError
from ..grant import Token
from ..record import BadTokenRecord, TokenRecord
from ._redis import UNAVAILABLE, RedisLink, as_text
from .cipher import TokenCipher
from .errors import CoordinatorRefused, CoordinatorUnavailable, FleetKeyMismatch, damaged
from .lease import Lease, LeaseHandle

__all__ = ["PublishResult", "RefreshPermit", "SharedToken", "SharedTokenState", "token_from_record", "token_to_record"]

log = logging.getLogger("oauthpw_async.fleet")

_PUBLISH = """
local raw = redis.call('HGET', KEYS[1], 'gen')
local cur = 0
if raw then
  cur = tonumber(raw)
  if not cur then return {-1, 0} end
end
local expected = tonumber(ARGV[1])
if cur ~= 0 and cur ~= expected then return {0, cur} end
local gen = tonumber(ARGV[6])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', gen, 'tid', ARGV[2], 'blob', ARGV[3], 'spent', '0', 'kid', ARGV[7], 'by', ARGV[8])
local ttl = tonumber(ARGV[5])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('PUBLISH', ARGV[4], gen)
return {1, gen}
"""

_UNSPEND = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'spent', '0')
return 1
"""

_CLAIM_REFRESH = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 1 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if cur == 0 or cur ~= tonumber(ARGV[1]) then return 2 end
if redis.call('HGET', KEYS[1], 'spent') == '1' then return 3 end
redis.call('HSET', KEYS[1], 'spent', '1')
return 0
"""


class RefreshPermit(enum.Enum):
    """Whether the lease holder may send the shared refresh token (:meth:`SharedTokenState.claim_refresh`)."""

    #: Marked as spent: send it now (and publish what comes back).
    GRANTED = 0
    #: The caller does not hold the lease (it expired): do not send anything.
    NOT_HOLDER = 1
    #: The record changed or is gone (a newer token, or Redis lost its data): read it again;
    #: with no record, log in with the password (the old refresh token may be spent).
    CHANGED = 2
    #: An earlier holder marked it and did not publish (it died or lost Redis mid-request):
    #: it may have been used, so log in with the password instead.
    SPENT = 3


@attrs.frozen
class SharedToken:
    """The fleet's current token as read from Redis.

    ``record`` carries wall-clock times: a process puts it on its monotonic clock
    (:meth:`TokenRecord.token`) before use, as the provider does with a token store's.
    """

    generation: int
    token_id: str
    #: The token with wall-clock times.
    record: TokenRecord
    #: The refresh token of this generation may already have been sent (see :class:`RefreshPermit`).
    refresh_spent: bool

    @property
    def token(self) -> Token:
        """The token on the wall clock's time line (monotonic times are epoch seconds): for showing it."""
        return self.record.token()


@attrs.frozen
class PublishResult:
    """What a compare-and-set publish did."""

    published: bool
    #: The new generation when published; otherwise the newer generation found in Redis.
    generation: int
    #: The id of the published token (empty when refused).
    token_id: str = ""


def token_to_record(token: Token) -> bytes:
    """A token as JSON with wall-clock times (what is sealed into the shared record)."""
    return orjson.dumps(TokenRecord.of(token).as_json())


def token_from_record(blob: bytes) -> TokenRecord:
    """The token record that :func:`token_to_record` wrote (validated as a token store validates its file).

    Raises:
        SharedStateUnreadable: the record is not one :func:`token_to_record` writes (a field missing or of
            another type, a token or header value that cannot go into an ``Authorization`` header).
    """
    try:
        rec = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise damaged("the shared token record opened, but its token") from None
    try:
        return TokenRecord.from_json(rec)
    except BadTokenRecord as exc:
        raise damaged(f"the shared token record opened, but its token ({exc})") from None


def record_ttl(record: TokenRecord, now_wall: float) -> float | None:
    """How long the record is worth keeping: until its last usable secret expires (``None``: no limit)."""
    if record.refresh_token is None:
        return max(0.001, record.issued_wall + record.lifetime - now_wall)
    rexp = record.refresh_expires_wall
    if rexp is None:
        return None
    return max(0.001, rexp - now_wall)


class SharedTokenState:
    """Read, compare-and-set and watch the shared token of one credential.

    Args:
        link: the coordinator's Redis connection.
        credential_key: :attr:`PasswordGrantConfig.credential_key` (a digest, never the password).
        cipher: seals the record with the user's key.
        clock: the clock the watcher's heartbeat is on.
    """

    def __init__(
        self, link: RedisLink, credential_key: str, cipher: TokenCipher, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._link = link
        self.clock = clock
        self.credential_key = credential_key
        self._cipher = cipher
        self.key = link.key(f"cred:{credential_key}", "token")
        self.channel = link.channel(f"cred:{credential_key}", "token-published")
        #: Written into every record this process publishes (never a secret).
        self.writer = f"{socket.gethostname()} pid {os.getpid()}"

    @property
    def key_id(self) -> str:
        """The public id of the key this process seals with."""
        return self._cipher.key_id

    def key_channel(self, key_id: str) -> str:
        """The channel every watcher holding the key ``key_id`` subscribes to (to be counted, never published on)."""
        return self._link.channel(f"cred:{self.credential_key}", f"key:{key_id}")

    async def key_holders(self, *key_ids: str) -> dict[str, int]:
        """Live watchers per key id (``PUBSUB NUMSUB`` on their key channels)."""
        channels = {self.key_channel(k): k for k in key_ids}
        counts = await self._link.call(self._link.client.pubsub_numsub(*channels))
        return {channels[as_text(c)]: int(n) for c, n in counts.items() if as_text(c) in channels}

    async def read(self) -> SharedToken | None:
        """The current shared token, or ``None`` if there is none (never published, expired, or lost).

        Raises:
            CoordinatorUnavailable: Redis did not answer.
            FleetKeyMismatch: the record was sealed with a key this process does not hold.
            SharedStateUnreadable: the record is damaged or was written by something else.
        """
        gen, tid, blob, spent, kid, by = await self._link.call(
            self._link.client.hmget(self.key, ["gen", "tid", "blob", "spent", "kid", "by"])
        )
        if gen is None and blob is None:
            return None
        try:
            gen_text, tid_text, spent_text = as_text(gen or b""), as_text(tid or b""), as_text(spent or b"0")
            kid_text, by_text = as_text(kid or b""), as_text(by or b"")
        except UnicodeDecodeError:
            raise damaged("the shared token record") from None
        if not gen_text.isascii() or not gen_text.isdigit() or blob is None or spent_text not in ("0", "1"):
            raise damaged("the shared token record (its generation, spent mark or sealed token)")
        generation = int(gen_text)
        plaintext = self._cipher.open_for(blob, self._cipher.associated_data(self.credential_key, generation))
        if plaintext is None:
            if kid_text in self._cipher.key_ids:  # sealed with our key, yet it does not open
                raise damaged(f"the shared token record (generation {generation})")
            raise FleetKeyMismatch(
                f"the shared token record (generation {generation}) is sealed with fleet key id "
                f"{kid_text or 'unknown'}{f' by {by_text}' if by_text else ''}, and this process "
                f"({self.writer}) holds key id {self.key_id}: every process of a fleet needs the same "
                "OAUTHPW_FLEET_KEY",
                key_id=self.key_id,
                record_key_id=kid_text,
                sealed_by=by_text,
                generation=generation,
            )
        record = token_from_record(plaintext)
        return SharedToken(generation, tid_text, record, refresh_spent=spent_text == "1")

    async def publish(self, token: Token, *, renewed_from: int, now_wall: float, at_least: int = 0) -> PublishResult:
        """Write ``token`` as the next generation if ``renewed_from`` is still current (or no record exists).

        ``renewed_from`` is the generation the caller read before renewing (0: none). When another
        process published first, nothing is written and the result names the newer generation:
        read it and use that token instead. The new generation is above ``at_least`` too: after
        Redis went back to an older state, generations keep rising past every one already seen.
        """
        generation = max(renewed_from, at_least) + 1
        record = TokenRecord.of(token)
        document = record.as_json()
        try:  # what the fleet could not read back is never written: it would stop every worker
            TokenRecord.from_json(document)
        except BadTokenRecord as exc:
            raise TokenResponseError(f"the token endpoint answered a token that cannot be kept: {exc}") from None
        blob = self._cipher.seal(orjson.dumps(document), credential_key=self.credential_key, generation=generation)
        ttl = record_ttl(record, now_wall)
        tid = secrets.token_hex(8)
        ttl_ms = 0 if ttl is None else max(1, math.ceil(ttl * 1000))
        ok, gen = await self._link.script(
            _PUBLISH,
            [self.key],
            [renewed_from, tid, blob, self.channel, ttl_ms, generation, self.key_id, self.writer],
        )
        if int(ok) < 0:
            raise damaged("the shared token record's generation")
        return PublishResult(bool(ok), int(gen), tid if ok else "")

    async def claim_refresh(self, generation: int, lease: Lease, handle: LeaseHandle) -> RefreshPermit:
        """Mark this generation's refresh token as about to be sent, if ``handle`` holds ``lease``.

        Call it right before sending the refresh request; only :attr:`RefreshPermit.GRANTED`
        allows sending it.
        """
        code = await self._link.script(_CLAIM_REFRESH, [self.key, lease.key], [generation, handle.value])
        return RefreshPermit(int(code))

    async def unspend(self, generation: int, lease: Lease, handle: LeaseHandle) -> bool:
        """Undo :meth:`claim_refresh` when the server answered without using the refresh token (5xx, 429).

        Fenced like the claim: only while ``handle`` holds ``lease`` and ``generation`` is current.
        Returns whether the mark was cleared.
        """
        return bool(await self._link.script(_UNSPEND, [self.key, lease.key], [generation, handle.value]))

    async def clear(self) -> None:
        """Delete the shared token (e.g. after the credential's password changed)."""
        await self._link.call(self._link.client.delete([self.key]))

    async def watch(
        self,
        on_change: Callable[[int | None], Awaitable[None] | None],
        *,
        heartbeat: float = 5.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change(generation)`` for every publish, until cancelled.

        ``on_change(None)`` is called after every (re)subscription (publishes may have been
        missed while disconnected) and for other news on the channel (the login latch
        tripped): read the record again. Run it in a task group with
        ``await tg.start(state.watch, callback)``; it reconnects by itself after Redis restarts.

        Every ``heartbeat`` seconds the watcher pings itself on a channel of its own; a
        subscription that hears nothing for three heartbeats is dropped and made again (a
        client can announce a resubscription after a restart that never delivers).

        Raises:
            CoordinatorUnavailable: Redis could not be reached (for the first subscription, or the
                client gave up reconnecting).
        """
        private = f"{self.channel}:ping:{secrets.token_hex(6)}"
        started = False
        while True:
            round_ = _Subscription(self, on_change, private, heartbeat)
            async with anyio.create_task_group() as tg:
                tg.start_soon(round_.run)
                if not started:
                    await round_.settled.wait()
                    if round_.subscribed:
                        started = True
                        task_status.started()
            if round_.failure is not None:
                raise round_.failure


class _Subscription:
    """One subscription of a watcher: its messages, its self-ping, why it ended."""

    def __init__(
        self,
        state: SharedTokenState,
        on_change: Callable[[int | None], Awaitable[None] | None],
        private: str,
        heartbeat: float,
    ) -> None:
        self.state, self.on_change, self.private, self.heartbeat = state, on_change, private, heartbeat
        self.heard = state.clock.monotonic()
        self.settled = anyio.Event()  # subscribed, or failed
        self.subscribed = False
        self.failure: CoordinatorUnavailable | CoordinatorRefused | None = None

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ping, tg.cancel_scope)
                await self._listen()
                tg.cancel_scope.cancel()
        finally:
            self.settled.set()

    async def _listen(self) -> None:
        link = self.state._link
        try:
            channels = [self.state.channel, self.private, self.state.key_channel(self.state.key_id)]
            async with link.client.pubsub(channels=channels) as pubsub:
                async for message in pubsub:
                    self.heard = self.state.clock.monotonic()
                    if as_text(message["channel"]) != self.state.channel:
                        continue  # its own ping, or the key channel (only there to be counted)
                    kind = message["type"]
                    if kind == "subscribe":
                        result = self.on_change(None)
                        self.subscribed = True
                        self.settled.set()
                    elif kind == "message":
                        data = as_text(message["data"])
                        result = self.on_change(int(data) if data.isdigit() else None)  # e.g. latch news
                    else:
                        continue
                    if result is not None:
                        await result
        # The client's pub/sub runs tasks of its own: its errors may come grouped (and beside a
        # cancellation, which then goes on as it should).
        except* UNAVAILABLE as group:  # the client gave up reconnecting
            self.failure = self.failure or link.unavailable(_first(group))
        except* coredis.exceptions.RedisError as group:  # refused: credentials, ACL on channels
            self.failure = self.failure or link.refused(_first(group))

    async def _ping(self, scope: anyio.CancelScope) -> None:
        link = self.state._link
        clock = self.state.clock
        while clock.monotonic() - self.heard < 3 * self.heartbeat:
            await clock.sleep(self.heartbeat)
            with contextlib.suppress(CoordinatorUnavailable):
                await link.call(link.client.publish(self.private, "ping"))
        log.info("token watcher heard nothing for %.0fs; subscribing again", 3 * self.heartbeat)
        scope.cancel()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (possibly nested) group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
