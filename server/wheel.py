"""A timer wheel: items filed by the tick of time they are due in, taken tick by tick.

Nothing per item between its filing and its tick: no task, no timer. The WebSocket heartbeat
(websocket.Heartbeat) and the polling sessions' pings (pings.PollingPings) keep their
sessions in one each.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Wheel(Generic[T]):
    def __init__(self, tick: float, now: float) -> None:
        self.tick = tick
        self.slots: dict[int, set[T]] = {}
        self._next = math.ceil(now / tick)  # the first slot not yet taken

    def __len__(self) -> int:
        return sum(len(slot) for slot in self.slots.values())

    def slot(self, when: float) -> int:
        """The slot of time `when`: the one that holds it, or the next one to be taken."""
        return max(math.ceil(when / self.tick), self._next)

    def file(self, item: T, slot: int) -> None:
        self.slots.setdefault(slot, set()).add(item)

    def forget(self, item: T, slot: int) -> None:
        items = self.slots.get(slot)
        if items is not None:
            items.discard(item)
            if not items:
                del self.slots[slot]

    def take(self, upto: int) -> Iterator[T]:
        """The items of every slot not yet taken up to `upto`, slot by slot: also those filed
        meanwhile in one of them. With none filed, nothing is walked (however long it has
        been since the last take)."""
        if not self.slots:
            self._next = max(self._next, upto + 1)
            return
        while self._next <= upto:
            items = self.slots.pop(self._next, ())
            self._next += 1
            yield from items
