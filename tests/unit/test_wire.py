"""Reading usage and tiers from answers and from server-sent-event streams."""

from __future__ import annotations

import orjson
from llmspool.calls import Tier, Usage
from llmspool.wire import SseMeter, served_tier_of, usage_of


def _event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_usage_in_both_namings() -> None:
    chat = {"usage": {"prompt_tokens": 10, "completion_tokens": 5,
                      "prompt_tokens_details": {"cached_tokens": 4},
                      "completion_tokens_details": {"reasoning_tokens": 2}}}
    assert usage_of(chat) == Usage(10, 4, 5, 2)
    responses = {"usage": {"input_tokens": 7, "output_tokens": 3,
                           "input_tokens_details": {"cached_tokens": 1}}}
    assert usage_of(responses) == Usage(7, 1, 3, 0)
    assert usage_of({"usage": None}) is None
    assert usage_of({"usage": {"prompt_tokens": -3, "completion_tokens": True}}) == Usage()


def test_served_tier() -> None:
    assert served_tier_of({"service_tier": "default"}) is Tier.STANDARD
    assert served_tier_of({"service_tier": "flex"}) is Tier.FLEX
    assert served_tier_of({"response": {"service_tier": "priority"}}) is Tier.PRIORITY
    assert served_tier_of({"service_tier": "warp"}) is None


def test_meter_forwards_whole_events_across_arbitrary_splits() -> None:
    events = [
        _event({"choices": [{"delta": {"content": f"t{i}"}}], "service_tier": "default",
                "usage": None})
        for i in range(5)
    ]
    usage_chunk = _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5},
                          "service_tier": "default"})
    stream = b"".join(events) + usage_chunk + b"data: [DONE]\n\n"
    for split in (1, 3, 7, 64, len(stream)):
        meter = SseMeter(strip_usage_chunk=True)
        out = b""
        for start in range(0, len(stream), split):
            out += meter.feed(stream[start:start + split])
        out += meter.flush()
        assert out == b"".join(events) + b"data: [DONE]\n\n"
        assert meter.usage == Usage(3, 0, 5)
        assert meter.tier is Tier.STANDARD


def test_meter_keeps_the_usage_chunk_when_the_client_asked() -> None:
    usage_chunk = _event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    meter = SseMeter(strip_usage_chunk=False)
    assert meter.feed(usage_chunk) == usage_chunk
    assert meter.usage == Usage(1, 0, 1)


def test_meter_reads_responses_completed_and_passes_odd_events_through() -> None:
    completed = (b"event: response.completed\ndata: " + orjson.dumps(
        {"type": "response.completed",
         "response": {"usage": {"input_tokens": 2, "output_tokens": 9},
                      "service_tier": "flex"}}) + b"\n\n")
    odd = b": keep-alive\n\ndata: {not json\n\n"
    meter = SseMeter()
    assert meter.feed(odd + completed) == odd + completed
    assert meter.usage == Usage(2, 0, 9)
    assert meter.tier is Tier.FLEX


def test_meter_handles_crlf_events() -> None:
    meter = SseMeter()
    data = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n'
    assert meter.feed(data) == data
    assert meter.usage == Usage(1, 0, 2)
