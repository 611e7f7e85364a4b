"""``DeadlineHeaders``: the ``x-llmspool-deadline`` header read as ``parse_deadline`` reads it,
with the durations it has read remembered, and nothing invalid ever taken from the memo."""

from __future__ import annotations

import pytest
from llmspool.policy.deadlines import MAX_DEADLINE, DeadlineHeaders, parse_deadline

NOW = 1_795_132_800.0  # 2026-11-20T00:00:00Z


@pytest.mark.parametrize("text", ["10m", " 6h ", "1h30m", "250ms", "29d",
                                  "2026-11-23T06:00:00Z", "2026-11-21T09:00:00+01:00"])
def test_a_deadline_reads_as_parse_deadline_reads_it_the_first_time_and_after(
    text: str,
) -> None:
    headers = DeadlineHeaders()
    now = NOW
    for later in (0.0, 5.5, 3600.0):  # the same spelling, at later moments
        assert headers.parse(text, now + later) == parse_deadline(text, now + later)


@pytest.mark.parametrize("text", ["0s", "31d", "soon", "", "2026-01-01T00:00:00Z"])
def test_an_invalid_deadline_is_refused_every_time(text: str) -> None:
    headers = DeadlineHeaders()
    for _ in range(2):
        with pytest.raises(ValueError) as refused:
            headers.parse(text, NOW)
        with pytest.raises(ValueError) as direct:
            parse_deadline(text, NOW)
        assert str(refused.value) == str(direct.value)


def test_a_time_of_day_is_not_remembered_as_a_duration() -> None:
    headers = DeadlineHeaders()
    at = "2026-11-23T06:00:00Z"
    first = headers.parse(at, NOW)
    # Read an hour later, it is the same moment, not an hour further.
    assert headers.parse(at, NOW + 3600) == first


def test_the_memo_is_bounded() -> None:
    headers = DeadlineHeaders()
    for seconds in range(1, DeadlineHeaders.LIMIT * 3):
        assert headers.parse(f"{seconds}s", NOW) == NOW + seconds
    assert len(headers._durations) <= DeadlineHeaders.LIMIT
    assert headers.parse("1s", NOW) == NOW + 1  # forgotten, read again
    assert MAX_DEADLINE / 86400 == 30
