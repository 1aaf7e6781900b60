"""The heap of rows waiting to be armed. Pure logic: no I/O, no clock of its own.

Entries are ordered by `(available_at, created_at, id)`, which is the order requests
must leave in. Cancels and reschedules use lazy deletion: the heap keeps the stale
entry, and `_live` says which entry of an id is current; stale ones are dropped when
they reach the top (and the heap is compacted when they pile up).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, order=True)
class Entry:
    available_at: float  # epoch seconds
    created_at: float  # epoch seconds: FIFO among rows opening at the same instant
    id: UUID


class Schedule:
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._live: dict[UUID, Entry] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, prebooking_id: object) -> bool:
        return prebooking_id in self._live

    def get(self, prebooking_id: UUID) -> Entry | None:
        return self._live.get(prebooking_id)

    def ids(self) -> set[UUID]:
        return set(self._live)

    def entries(self) -> list[Entry]:
        return list(self._live.values())

    def upsert(self, entry: Entry) -> bool:
        """Add a row or move it to a new instant; False when nothing changed."""
        if self._live.get(entry.id) == entry:
            return False
        self._live[entry.id] = entry
        heapq.heappush(self._heap, entry)
        self._compact_if_needed()
        return True

    def remove(self, prebooking_id: UUID) -> Entry | None:
        """Forget a row (cancelled, deleted, armed); its heap entry goes stale."""
        entry = self._live.pop(prebooking_id, None)
        self._compact_if_needed()
        return entry

    def head(self) -> Entry | None:
        """The entry that opens first, or None when empty."""
        heap = self._heap
        while heap and self._live.get(heap[0].id) != heap[0]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def pop_due(self, deadline: float) -> list[Entry]:
        """Remove and return, in firing order, every entry opening at or before deadline."""
        due = []
        while (head := self.head()) is not None and head.available_at <= deadline:
            heapq.heappop(self._heap)
            del self._live[head.id]
            due.append(head)
        return due

    def _compact_if_needed(self) -> None:
        # Lazy deletion leaves stale entries behind; rebuild once they outnumber the
        # live ones, so memory stays proportional to what is really scheduled.
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = sorted(self._live.values())
