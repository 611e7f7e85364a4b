"""The lines the job keeper sends itself, most urgent first, in a few bytes each.

``LineHeap`` pops (deadline, request id, job id) in the order of a heap of those tuples: by
deadline, then by request id. A heap of tuples costs ~210 bytes a line (the tuple, a float,
an int and a job id string per line): 210 MB with a million lines queued. Here lines come in
*runs*: lines of one job with one deadline, their ids sorted in an ``array('q')`` (8 bytes
a line), and a heap of runs keyed by (deadline, the run's next id) merges them. Lines are
routed a page at a time, and a job's lines share its deadline, so a page makes one run.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterable


class _Run:
    """Lines of one job with one deadline, ids ascending; ``next`` is the first not taken."""

    __slots__ = ("deadline", "ids", "job_id", "next")

    def __init__(self, deadline: float, job_id: str, ids: array[int]) -> None:
        self.deadline = deadline
        self.job_id = job_id
        self.ids = ids
        self.next = 0


class LineHeap:
    """Lines to send: ``push`` them (a page at a time is cheapest), ``pop`` the most urgent."""

    __slots__ = ("_order", "_runs", "_size")

    def __init__(self) -> None:
        # (deadline, next id, tie-breaker, run): ids are unique, so runs are never compared.
        self._runs: list[tuple[float, int, int, _Run]] = []
        self._size = 0
        self._order = itertools.count()

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def push(self, lines: Iterable[tuple[float, int, str]]) -> None:
        """Add (deadline, request id, job id) lines: one run per job and deadline among them."""
        groups: dict[tuple[float, str], array[int]] = {}
        for deadline, request_id, job_id in lines:
            ids = groups.get((deadline, job_id))
            if ids is None:
                ids = groups[deadline, job_id] = array("q")
            ids.append(request_id)
        for (deadline, job_id), pushed in groups.items():
            ids = pushed  # in id order already when a page of one job: no copy
            if any(ids[i] > ids[i + 1] for i in range(len(ids) - 1)):
                ids = array("q", sorted(ids))
            run = _Run(deadline, job_id, ids)
            heapq.heappush(self._runs, (deadline, ids[0], next(self._order), run))
            self._size += len(ids)

    def pop(self) -> tuple[float, int, str]:
        """The most urgent line: the earliest deadline, then the lowest id. Raises IndexError
        when empty, as ``heapq.heappop`` does."""
        deadline, request_id, order, run = self._runs[0]
        run.next += 1
        if run.next < len(run.ids):
            heapq.heapreplace(self._runs, (deadline, run.ids[run.next], order, run))
        else:
            heapq.heappop(self._runs)
        self._size -= 1
        return deadline, request_id, run.job_id
