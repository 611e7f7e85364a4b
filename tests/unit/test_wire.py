"""Reading usage and tiers from answers and from server-sent-event streams."""

from __future__ import annotations

import orjson
from llmspool.core.calls import Tier, Usage
from llmspool.core.wire import SseMeter, served_tier_of, usage_of


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


def test_chat_usage_with_cache_writes() -> None:
    for key in ("cache_write_tokens", "cache_creation_tokens"):
        chat = {"usage": {"prompt_tokens": 100, "completion_tokens": 20,
                          "prompt_tokens_details": {"cached_tokens": 30, key: 50},
                          "completion_tokens_details": {"reasoning_tokens": 15}}}
        assert usage_of(chat) == Usage(100, 30, 20, 15, cache_write_tokens=50)


def test_responses_usage_with_cache_writes() -> None:
    responses = {"response": {"usage": {
        "input_tokens": 40, "output_tokens": 9,
        "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 20},
        "output_tokens_details": {"reasoning_tokens": 4}}}}
    assert usage_of(responses) == Usage(40, 10, 9, 4, cache_write_tokens=20)


def test_anthropic_usage_is_added_up_to_all_the_input() -> None:
    anthropic = {"usage": {"input_tokens": 5, "output_tokens": 7,
                           "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}
    usage = usage_of(anthropic)
    assert usage == Usage(125, 100, 7, 0, cache_write_tokens=20)
    only_writes = {"usage": {"input_tokens": 3, "output_tokens": 1,
                             "cache_creation_input_tokens": 9}}
    assert usage_of(only_writes) == Usage(12, 0, 1, 0, cache_write_tokens=9)
    # A proxy that reports an OpenAI total beside Anthropic's counts: they are parts of it.
    proxied = {"usage": {"prompt_tokens": 50, "completion_tokens": 2,
                         "cache_read_input_tokens": 30, "cache_creation_input_tokens": 10}}
    assert usage_of(proxied) == Usage(50, 30, 2, 0, cache_write_tokens=10)


def test_embeddings_usage() -> None:
    embeddings = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_of(embeddings) == Usage(8, 0, 0, 0)


def test_odd_usage_values_never_raise() -> None:
    odd: list[object] = [
        {"usage": {"prompt_tokens": "12", "completion_tokens": 1.5}},
        {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": -4,
                                                                   "cache_write_tokens": None}}},
        {"usage": {"prompt_tokens": 10, "prompt_tokens_details": [1, 2]}},
        {"usage": {"input_tokens": None, "cache_read_input_tokens": "x",
                   "cache_creation_input_tokens": False}},
        {"usage": {"prompt_tokens": 10, "completion_tokens_details": "none"}},
        {"usage": {}},
        {"usage": []},
        {"response": "done"},
        [],
        None,
    ]
    for answer in odd:
        usage = usage_of(answer)
        assert usage is None or (
            usage.cached_input_tokens + usage.cache_write_tokens <= usage.input_tokens
            and 0 <= usage.reasoning_tokens <= usage.output_tokens
        )
    assert usage_of({"usage": {"prompt_tokens": 10, "prompt_tokens_details": {
        "cached_tokens": -4, "cache_write_tokens": None}}}) == Usage(10)


def test_usage_parts_are_clamped_to_their_whole() -> None:
    too_many = {"usage": {"prompt_tokens": 10, "completion_tokens": 3,
                          "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 8},
                          "completion_tokens_details": {"reasoning_tokens": 9}}}
    assert usage_of(too_many) == Usage(10, 8, 3, 3, cache_write_tokens=2)
    more_cached_than_input = {"usage": {"input_tokens": 5, "output_tokens": 0,
                                        "input_tokens_details": {"cached_tokens": 50}}}
    assert usage_of(more_cached_than_input) == Usage(5, 5, 0, 0)


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


def test_meter_reads_the_usage_whatever_the_spacing_of_the_null_ones() -> None:
    # Chunks that say "usage": null (spaced, unlike OpenAI's) are read, not skipped as the
    # compact ones are; the usage at the end is found either way.
    spaced = b'data: {"choices": [{"delta": {"content": "hi"}}], "service_tier": "default", ' \
        b'"usage": null}\n\n'
    compact = _event({"choices": [{"delta": {"content": "yo"}}], "usage": None})
    last = _event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    meter = SseMeter()
    assert meter.feed(spaced) == spaced
    assert meter.feed(compact) == compact
    assert meter.feed(compact + last) == compact + last
    assert meter.usage == Usage(4, 0, 2)
    assert meter.events == 4


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
