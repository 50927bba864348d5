"""Which partitions a crawl walks, and when: every unfinished one at once, or as a scheduler decides.

The engine hands each partition's walk to a :class:`PartitionScheduler`. By default
(:class:`AllAtOnce`) it walks every partition its position store has not finished, all at
once. A scheduler of its own is for a crawl whose partitions are shared out between
processes: it walks the partitions this process is given, one after another, until none is
left anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

if TYPE_CHECKING:
    from .base import Partition
    from .checkpoint import PositionStore

__all__ = ["AllAtOnce", "PartitionScheduler"]


@runtime_checkable
class PartitionScheduler(Protocol):
    """Decides which partitions this process walks, and when."""

    async def walk_partitions(
        self, partitions: Sequence[Partition], walk: Callable[[Partition], Coroutine[Any, Any, None]]
    ) -> None:
        """Await ``walk(partition)`` for each partition this process is to crawl; return when none is left."""
        ...


class AllAtOnce:
    """The default scheduler: every partition ``store`` has not finished, walked at the same time."""

    def __init__(self, store: PositionStore) -> None:
        self._store = store

    async def walk_partitions(
        self, partitions: Sequence[Partition], walk: Callable[[Partition], Coroutine[Any, Any, None]]
    ) -> None:
        """Walk the unfinished partitions in one task group (a failure cancels the others)."""
        async with anyio.create_task_group() as tg:
            for p in partitions:
                if not self._store.is_done(p.name):
                    tg.start_soon(walk, p)
