"""The job keeper's compact heap of lines sends them in the order a heap of (deadline,
request id, job id) tuples did: earliest deadline first, then lowest id, each line once,
whatever order and grouping they were pushed in (pages of new jobs, lines given back by a
batch one by one, lines of several jobs in one page)."""

from __future__ import annotations

import heapq
import random

import pytest
from llmspool.actors.keeping.lines import LineHeap


def test_lines_pushed_in_any_grouping_pop_in_deadline_then_id_order() -> None:
    rng = random.Random(17)
    heap = LineHeap()
    reference: list[tuple[float, int, str]] = []
    ids = list(range(1, 5001))
    rng.shuffle(ids)
    deadlines = {f"job_{j}": float(rng.choice((100, 200, 300))) for j in range(8)}
    popped: list[tuple[float, int, str]] = []
    expected: list[tuple[float, int, str]] = []
    while ids:
        # A page: lines of a few jobs, ids in any order; sometimes a single line.
        size = rng.choice((1, 1, 3, 50, 400))
        page = []
        for request_id in ids[:size]:
            job_id = rng.choice(list(deadlines))
            page.append((deadlines[job_id], request_id, job_id))
        del ids[:size]
        heap.push(page)
        for line in page:
            heapq.heappush(reference, line)
        assert len(heap) == len(reference)
        # Some are sent between pages, as the pump does while jobs arrive.
        for _ in range(rng.choice((0, 0, 5, 60))):
            if reference:
                popped.append(heap.pop())
                expected.append(heapq.heappop(reference))
    while reference:
        popped.append(heap.pop())
        expected.append(heapq.heappop(reference))
    assert popped == expected
    assert len({request_id for _d, request_id, _j in popped}) == 5000
    assert not heap and len(heap) == 0
    with pytest.raises(IndexError):
        heap.pop()


def test_a_line_due_earlier_pushed_later_goes_first() -> None:
    heap = LineHeap()
    heap.push([(500.0, 10, "job_late"), (500.0, 11, "job_late")])
    heap.push([(100.0, 99, "job_urgent")])
    heap.push([(500.0, 3, "job_late")])  # given back by a batch: a lower id, same deadline
    assert [heap.pop() for _ in range(4)] == [
        (100.0, 99, "job_urgent"), (500.0, 3, "job_late"), (500.0, 10, "job_late"),
        (500.0, 11, "job_late")]
