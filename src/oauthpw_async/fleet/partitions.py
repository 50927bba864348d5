"""A crawl's partitions shared by a fleet of workers, on a Redis Stream consumer group.

Each partition is enqueued once (idempotently: every worker may enqueue the whole list at
start) as a stream entry. Workers claim entries with ``XREADGROUP``; an entry stays in the
group's pending list until its partition is done. A worker that stops touching its entries
(it died, or hangs) loses them after ``idle_timeout``: the next claim takes them over with
``XAUTOCLAIM`` and resumes from the last checkpointed position.

Every claim gets a fencing number; the owner (``consumer|fence|entry``) is stored per
partition and every write (checkpoint, done, failed, give back) is a Lua script that first
checks it. A worker that lost its claim therefore can never move a partition's position
again: its write raises :class:`ClaimLost`. Positions are committed after the page's records
reached the sink, so a takeover repeats at most the pages after the last checkpoint
(at-least-once), and never loses one. With a :class:`TokenCipher` (a coordinator's queues have
one) positions are sealed at rest like the shared token, bound to their crawl and partition: a
next-page link that echoes a token is never readable in Redis. A failed partition stays failed (the crawl finishes
incomplete) until :meth:`PartitionQueue.requeue` queues it again.

Incremental crawls add, per partition, a committed cursor (sealed like positions, bound to their
purpose too: a cursor never opens as a position), written with the partition's last position by
one fenced script, and rounds: :meth:`PartitionQueue.next_round` queues every partition again once
all are done or failed, and claims are bound to the round their worker works in.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import attrs
import orjson

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import UsageError
from ._redis import RedisLink, as_text
from ._tasks import in_background
from .cipher import TokenCipher
from .errors import ClaimLost, CoordinatorUnavailable, SharedStateUnreadable, damaged

__all__ = ["Claim", "FleetStatus", "PartitionQueue", "PartitionStatus"]

_GROUP = "workers"
_RESET = "run `oauthpw-async fleet reset` (the crawl starts over)"

# KEYS: specs, state, stream, sealed. ARGV: group, seal flag, then name/spec pairs.
_ENQUEUE = """
redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[1], '0', 'MKSTREAM')
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], 'queued')
    redis.call('XADD', KEYS[3], '*', 'p', ARGV[i])
    added = added + 1
  end
end
if ARGV[2] == '1' then redis.call('SET', KEYS[4], '1') end
return added
"""

# KEYS: stream, state, owner, fence, pos, tries, reason, specs, round.
# ARGV: group, consumer, count, min idle ms, max claims per partition, the round claimed in ('' for any).
_CLAIM = """
local out = {}
if ARGV[6] ~= '' and (redis.call('GET', KEYS[9]) or '1') ~= ARGV[6] then return out end
local function finish(id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
end
local function take(id, pid)
  local st = redis.call('HGET', KEYS[2], pid)
  if st ~= 'queued' and st ~= 'running' then finish(id) return end
  local tries = redis.call('HINCRBY', KEYS[6], pid, 1)
  if tries > tonumber(ARGV[5]) then
    local why = 'claimed ' .. (tries - 1) .. ' times without finishing (workers died or stalled on it)'
    local last = redis.call('HGET', KEYS[7], pid)
    if last then why = why .. '; last error: ' .. last end
    redis.call('HSET', KEYS[2], pid, 'failed')
    redis.call('HSET', KEYS[7], pid, why)
    redis.call('HDEL', KEYS[3], pid)
    finish(id) return
  end
  local fence = redis.call('HINCRBY', KEYS[4], pid, 1)
  redis.call('HSET', KEYS[3], pid, ARGV[2] .. '|' .. fence .. '|' .. id)
  redis.call('HSET', KEYS[2], pid, 'running')
  table.insert(out, {pid, tostring(fence), id, redis.call('HGET', KEYS[8], pid) or '',
                     redis.call('HGET', KEYS[5], pid) or '', tostring(tries)})
end
local count = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return out end
local ac = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', count)
for _, e in ipairs(ac[2]) do
  if e and e[2] then take(e[1], e[2][2]) end
end
if #out < count then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count - #out, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do take(e[1], e[2][2]) end
  end
end
return out
"""

# KEYS: owner, pos, stream. ARGV: name, owner value, position ('' to only touch), group, consumer, entry.
_CHECKPOINT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
redis.call('XCLAIM', KEYS[3], ARGV[4], ARGV[5], 0, ARGV[6], 'JUSTID')
return 1
"""

# KEYS: owner, pos, cursors, stream. ARGV: name, owner value, position, cursor, group, consumer, entry.
_COMMIT_CURSOR = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('XCLAIM', KEYS[4], ARGV[5], ARGV[6], 0, ARGV[7], 'JUSTID')
return 1
"""

# KEYS: state, pos, owner, tries, reason, stream, sealed, round, round name. ARGV: group, round name.
# A worker of the round of that name joins it. Otherwise, only once every partition of the round is done
# or failed (and the list is sealed): each is queued again without its position, the round number grows
# and the round takes the name. Returns the new round, or 0.
_NEXT_ROUND = """
if redis.call('GET', KEYS[9]) == ARGV[2] then return 0 end
if redis.call('GET', KEYS[7]) ~= '1' then return 0 end
local states = redis.call('HGETALL', KEYS[1])
if #states == 0 then return 0 end
for i = 2, #states, 2 do
  if states[i] ~= 'done' and states[i] ~= 'failed' then return 0 end
end
redis.pcall('XGROUP', 'CREATE', KEYS[6], ARGV[1], '0', 'MKSTREAM')
for i = 1, #states, 2 do
  local name = states[i]
  redis.call('HSET', KEYS[1], name, 'queued')
  redis.call('HDEL', KEYS[2], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
  redis.call('HDEL', KEYS[5], name)
  redis.call('XADD', KEYS[6], '*', 'p', name)
end
local round = tonumber(redis.call('GET', KEYS[8]) or '1') + 1
redis.call('SET', KEYS[8], tostring(round))
redis.call('SET', KEYS[9], ARGV[2])
return round
"""

# KEYS: owner, state, stream, reason, tries.
# ARGV: name, owner value, group, entry, final state, reason, '1' if a give-back counts as a claim.
# A reason given with a give-back is the attempt's error, shown until the partition is done.
_FINISH = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
if ARGV[5] == 'queued' then
  if ARGV[7] ~= '1' then redis.call('HINCRBY', KEYS[5], ARGV[1], -1) end
  redis.call('XADD', KEYS[3], '*', 'p', ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
elseif ARGV[5] == 'done' then
  redis.call('HDEL', KEYS[4], ARGV[1])
end
return 1
"""

# KEYS: state, reason, tries, owner, pos, stream. ARGV: group, then name / '1' to forget its position pairs.
_REQUEUE = """
local out = {}
for i = 2, #ARGV, 2 do
  local name = ARGV[i]
  if redis.call('HGET', KEYS[1], name) == 'failed' then
    redis.call('HSET', KEYS[1], name, 'queued')
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[3], name)
    redis.call('HDEL', KEYS[4], name)
    if ARGV[i + 1] == '1' then redis.call('HDEL', KEYS[5], name) end
    redis.call('XADD', KEYS[6], '*', 'p', name)
    table.insert(out, name)
  end
end
return out
"""

# KEYS: specs, state, pos, owner, tries, reason, sealed, round.
_STATUS = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[6]),
        redis.call('GET', KEYS[7]) or '', redis.call('GET', KEYS[8]) or '1'}
"""


class Claim:
    """One worker's hold on one partition, fenced: valid until another worker takes it over."""

    __slots__ = ("attempt", "entry", "fence", "lost", "owner", "partition", "position", "spec")

    def __init__(
        self, partition: str, spec: Any, position: Any, fence: int, entry: str, owner: str, attempt: int
    ) -> None:
        #: The partition's name.
        self.partition = partition
        #: What was enqueued for it (any JSON value).
        self.spec = spec
        #: The last checkpointed position (``None``: start from the beginning).
        self.position = position
        #: Grows with every claim of this partition.
        self.fence = fence
        #: The stream entry this claim holds.
        self.entry = entry
        #: ``consumer|fence|entry``, what Redis checks before every write.
        self.owner = owner
        #: How many times the partition has been claimed, this claim included.
        self.attempt = attempt
        #: Set when a write found the claim taken over.
        self.lost = False

    def __repr__(self) -> str:
        return f"Claim(partition={self.partition!r}, fence={self.fence}, attempt={self.attempt}, lost={self.lost})"


@attrs.frozen
class PartitionStatus:
    """One partition as the fleet sees it."""

    name: str
    #: ``queued``, ``running``, ``done`` or ``failed``.
    state: str
    position: Any
    #: The worker holding it (``None`` unless running).
    owner: str | None
    fence: int
    claims: int
    #: Why it failed; while queued, the error of its last failed attempt (if that attempt counted).
    reason: str | None


@attrs.frozen
class FleetStatus:
    """Every partition of a crawl, readable from any worker."""

    #: Whether the list of partitions is final (no more will be enqueued).
    sealed: bool
    partitions: tuple[PartitionStatus, ...]
    #: The crawl's round: an incremental crawl runs one round after another (see :meth:`PartitionQueue.next_round`).
    round: int = 1

    def count(self, state: str) -> int:
        """Partitions in ``state``."""
        return sum(1 for p in self.partitions if p.state == state)

    @property
    def incomplete(self) -> tuple[PartitionStatus, ...]:
        """Partitions not done (queued, running or failed)."""
        return tuple(p for p in self.partitions if p.state != "done")

    @property
    def complete(self) -> bool:
        """Every partition done, and no more to come."""
        return self.sealed and not self.incomplete

    @property
    def finished(self) -> bool:
        """Nothing left to work on (every partition done or failed): workers may stop."""
        return self.sealed and all(p.state in ("done", "failed") for p in self.partitions)


def _spec(name: str, raw: bytes | str | None) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise damaged(f"what was enqueued for partition {name!r}", clear=_RESET) from None


def _pairs(flat: list[Any]) -> dict[str, bytes]:
    return {as_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


class PartitionQueue:
    """The partitions of one crawl, shared by every worker of a fleet.

    Args:
        link: the coordinator's Redis connection.
        crawl: the crawl's name (one queue per name).
        consumer: this worker's name in the consumer group (default: pid and a random suffix).
        idle_timeout: seconds without a checkpoint or touch after which another worker may take a
            partition over. Keep it well above the time one page takes; :meth:`keep_alive` touches
            claims in the background.
        max_claims: claims of one partition before it is marked failed (a partition that kills
            every worker that tries it must not take the fleet down one by one).
        cipher: seals positions at rest (``None``: plain JSON, for positions that can hold nothing secret).
        clock: the clock :meth:`keep_alive` beats on.
    """

    def __init__(
        self,
        link: RedisLink,
        crawl: str,
        *,
        consumer: str | None = None,
        idle_timeout: float = 60.0,
        max_claims: int = 5,
        cipher: TokenCipher | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if idle_timeout <= 0 or max_claims < 1:
            raise UsageError("a partition queue needs a positive idle_timeout and max_claims >= 1")
        self._link = link
        self.crawl = crawl
        self.consumer = consumer or f"{os.getpid()}-{secrets.token_hex(4)}"
        self.idle_timeout = idle_timeout
        self.max_claims = max_claims
        #: The clock heartbeats wait on.
        self.clock = clock
        scope = f"crawl:{crawl}"
        k = link.key
        self._stream = k(scope, "stream")
        self._specs, self._state, self._pos = k(scope, "specs"), k(scope, "state"), k(scope, "pos")
        self._owner, self._fence, self._tries = k(scope, "owner"), k(scope, "fence"), k(scope, "claims")
        self._reason, self._sealed = k(scope, "reason"), k(scope, "sealed")
        self._cursors, self._round, self._round_name = k(scope, "cursors"), k(scope, "round"), k(scope, "round_name")
        #: The round this worker claims in (``None``: any); see :meth:`next_round`.
        self.in_round: int | None = None
        self._cipher = cipher

    def _seal(self, partition: str, position: Any, what: str = "position") -> bytes:
        data = orjson.dumps(position)
        if self._cipher is None:
            return data
        return self._cipher.seal_for(data, self._bound_to(partition, what))

    def _open(self, partition: str, raw: bytes | str | None, what: str = "position") -> Any:
        """A stored position or cursor (``None`` for none); a typed error for one that does not open or parse."""
        if not raw:
            return None
        stored = raw.encode() if isinstance(raw, str) else raw
        data = stored if self._cipher is None else self._cipher.open_for(stored, self._bound_to(partition, what))
        try:
            if data is None:
                raise ValueError("does not open")
            return orjson.loads(data)
        except ValueError:
            raise damaged(
                f"the {what} of partition {partition!r} of crawl {self.crawl!r}",
                clear="check that every worker has the same OAUTHPW_FLEET_KEY, or run `oauthpw-async fleet "
                "reset` (the crawl starts over)",
            ) from None

    def _bound_to(self, partition: str, what: str = "position") -> bytes:
        return f"oauthpw-fleet-{what}\0{self.crawl}\0{partition}".encode()

    async def enqueue(self, partitions: Mapping[str, Any] | Iterable[tuple[str, Any]], *, seal: bool = True) -> int:
        """Add partitions (name -> spec, any JSON value) not enqueued before; returns how many were new.

        ``seal=True`` says the list is complete, so :attr:`FleetStatus.complete` can become true.
        """
        items = list(partitions.items() if isinstance(partitions, Mapping) else partitions)
        added = 0
        batch = 500  # bounded script arguments; sealing only with the last batch
        for start in range(0, max(len(items), 1), batch):
            chunk = items[start : start + batch]
            last = start + batch >= len(items)
            args: list[str | bytes] = [_GROUP, "1" if seal and last else "0"]
            for name, spec in chunk:
                args += [name, orjson.dumps(spec)]
            added += int(
                await self._link.script(_ENQUEUE, [self._specs, self._state, self._stream, self._sealed], args)
            )
        return added

    async def claim(self, count: int = 1) -> list[Claim]:
        """Up to ``count`` partitions for this worker: taken over from silent workers first, then new ones.

        With :attr:`in_round` set, nothing is claimed once the crawl has moved on to another round.
        """
        in_round = self.in_round
        keys = [self._stream, self._state, self._owner, self._fence, self._pos, self._tries, self._reason]
        rows = await self._link.script(
            _CLAIM,
            [*keys, self._specs, self._round],
            [
                _GROUP,
                self.consumer,
                count,
                max(1, round(self.idle_timeout * 1000)),
                self.max_claims,
                "" if in_round is None else str(in_round),
            ],
        )
        claims = []
        for name, fence, entry, spec, pos, tries in rows:
            name, fence_s, entry_s = as_text(name), as_text(fence), as_text(entry)
            claims.append(
                Claim(
                    name,
                    _spec(name, spec),
                    self._open(name, pos),
                    int(fence_s),
                    entry_s,
                    f"{self.consumer}|{fence_s}|{entry_s}",
                    int(as_text(tries)),
                )
            )
        return claims

    async def checkpoint(self, claim: Claim, position: Any) -> None:
        """Commit ``position`` (any JSON value) for the claimed partition; also keeps the claim alive.

        Raises:
            ClaimLost: another worker took the partition over; stop working on it.
        """
        await self._fenced(
            _CHECKPOINT, claim, [self._owner, self._pos, self._stream], self._seal(claim.partition, position)
        )

    async def commit_cursor(self, claim: Claim, position: Any, cursor: Any) -> None:
        """Commit the claimed partition's incremental ``cursor`` and its ``position`` in one fenced write.

        Raises:
            ClaimLost: another worker took the partition over; stop working on it.
        """
        ok = await self._link.script(
            _COMMIT_CURSOR,
            [self._owner, self._pos, self._cursors, self._stream],
            [
                claim.partition,
                claim.owner,
                self._seal(claim.partition, position),
                self._seal(claim.partition, cursor, "cursor"),
                _GROUP,
                self.consumer,
                claim.entry,
            ],
        )
        if not ok:
            claim.lost = True
            raise ClaimLost(claim.partition)

    async def cursors(self, partition: str | None = None) -> dict[str, Any]:
        """The committed incremental cursors, by partition (only ``partition``'s when given)."""
        client = self._link.client
        if partition is not None:
            raw = await self._link.call(client.hget(self._cursors, partition))
            return {partition: self._open(partition, raw, "cursor")} if raw else {}
        pairs = await self._link.call(client.hgetall(self._cursors))
        return {as_text(k): self._open(as_text(k), v, "cursor") for k, v in pairs.items()}

    async def name_round(self, name: str) -> None:
        """Name the crawl's first round, unless it has a name (workers of one round share its name)."""
        await self._link.call(self._link.client.setnx(self._round_name, name))

    async def next_round(self, name: str) -> int:
        """Begin the crawl's next round, named ``name``, unless the current one has that name or is not finished.

        The next round queues every partition again without its position (cursors stay: an
        incremental crawl's next round reads from them). Atomic: of several workers asking at once,
        one begins the round and the others join it; a worker of the round named ``name`` that
        arrives after it finished has nothing to do. Returns the new round, or 0.
        """
        keys = [self._state, self._pos, self._owner, self._tries, self._reason, self._stream, self._sealed]
        return int(await self._link.script(_NEXT_ROUND, [*keys, self._round, self._round_name], [_GROUP, name]))

    async def touch(self, claim: Claim) -> None:
        """Keep the claim alive without moving its position (a long page in progress)."""
        await self._fenced(_CHECKPOINT, claim, [self._owner, self._pos, self._stream], b"")

    async def complete(self, claim: Claim) -> None:
        """Mark the partition done (after its last records reached the sink)."""
        await self._finish(claim, "done", "")

    async def fail(self, claim: Claim, reason: str) -> None:
        """Mark the partition failed for good (it counts as incomplete); ``reason`` must hold no secret."""
        await self._finish(claim, "failed", reason)

    async def release(self, claim: Claim, *, error: str | None = None) -> None:
        """Give the partition back: another worker resumes it from its last checkpoint.

        Without ``error`` (a shutdown, a lost connection) the claim does not count toward
        ``max_claims``. With ``error`` (the attempt failed in a way that may be the partition's
        own) it counts, and ``error`` (no secret in it) is kept as the partition's reason until it is
        done, and named when ``max_claims`` fails it.
        """
        await self._finish(claim, "queued", error or "", counted=error is not None)

    async def requeue(self, partitions: Iterable[tuple[str, bool]]) -> list[str]:
        """Queue failed partitions again: ``(name, from_start)`` pairs; returns the names queued.

        Their claim counts and reasons are cleared; those with ``from_start`` also lose their
        position. Partitions not failed are left alone. Safe while workers run: they claim them.
        """
        items = list(partitions)
        queued: list[str] = []
        batch = 500  # bounded script arguments
        keys = [self._state, self._reason, self._tries, self._owner, self._pos, self._stream]
        for start in range(0, len(items), batch):
            args: list[str | bytes] = [_GROUP]
            for name, from_start in items[start : start + batch]:
                args += [name, "1" if from_start else "0"]
            queued += [as_text(n) for n in await self._link.script(_REQUEUE, keys, args)]
        return queued

    async def status(self) -> FleetStatus:
        """Every partition's state, position, owner and fence."""
        keys = [self._specs, self._state, self._pos, self._owner, self._tries, self._reason, self._sealed, self._round]
        specs, state, pos, owner, tries, reason, sealed, round_ = await self._link.script(_STATUS, keys, [])
        states, positions, owners = _pairs(state), _pairs(pos), _pairs(owner)
        claims, reasons = _pairs(tries), _pairs(reason)
        out = []
        for name in sorted(_pairs(specs)):
            try:
                own = as_text(owners[name]).split("|") if name in owners else None
                out.append(
                    PartitionStatus(
                        name=name,
                        state=as_text(states.get(name, b"queued")),
                        position=self._open(name, positions.get(name)),
                        owner=own[0] if own else None,
                        fence=int(own[1]) if own else 0,
                        claims=int(claims.get(name, b"0")),
                        reason=as_text(reasons[name]) if name in reasons else None,
                    )
                )
            except SharedStateUnreadable:
                raise
            except (ValueError, IndexError):  # a number that is not one, text that is not UTF-8
                raise damaged(f"the state of partition {name!r} of crawl {self.crawl!r}", clear=_RESET) from None
        try:
            number = int(as_text(round_))
        except ValueError:
            raise damaged(f"the round of crawl {self.crawl!r}", clear=_RESET) from None
        return FleetStatus(sealed=as_text(sealed) == "1", partitions=tuple(out), round=number)

    async def states(self) -> dict[str, str]:
        """Each partition's state (``queued``, ``running``, ``done``, ``failed``), without opening positions."""
        raw = await self._link.call(self._link.client.hgetall(self._state))
        return {as_text(k): as_text(v) for k, v in raw.items()}

    async def drop(self) -> None:
        """Delete the crawl's queue, positions and cursors (to start the crawl over)."""
        keys = [self._stream, self._specs, self._state, self._pos, self._owner, self._fence, self._tries]
        more = [self._reason, self._sealed, self._cursors, self._round, self._round_name]
        await self._link.call(self._link.client.delete([*keys, *more]))

    @contextlib.asynccontextmanager
    async def keep_alive(self, claim: Claim) -> AsyncIterator[Claim]:
        """Touch ``claim`` every ``idle_timeout / 3`` while the body runs; ``claim.lost`` tells if it was taken."""

        async def beat() -> None:
            while not claim.lost:
                await self.clock.sleep(self.idle_timeout / 3)
                with contextlib.suppress(ClaimLost, CoordinatorUnavailable):
                    await self.touch(claim)

        async with in_background(beat):
            yield claim

    async def _fenced(self, script: str, claim: Claim, keys: list[str], position: bytes) -> None:
        ok = await self._link.script(
            script, keys, [claim.partition, claim.owner, position, _GROUP, self.consumer, claim.entry]
        )
        if not ok:
            claim.lost = True
            raise ClaimLost(claim.partition)

    async def _finish(self, claim: Claim, final: str, reason: str, *, counted: bool = False) -> None:
        ok = await self._link.script(
            _FINISH,
            [self._owner, self._state, self._stream, self._reason, self._tries],
            [claim.partition, claim.owner, _GROUP, claim.entry, final, reason, "1" if counted else "0"],
        )
        if not ok:
            claim.lost = True
            raise ClaimLost(claim.partition)
