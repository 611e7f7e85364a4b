"""Near-duplicate matching: the text and shape of a request, and the similarity index."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
from llmspool.cache.similar import (
    CHAT_PATH,
    RESPONSES_PATH,
    SimilarityIndex,
    decode_embedding,
    shape_of,
    text_of,
)

EMBEDDINGS_PATH = "/v1/embeddings"


def float32_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def closest(index: SimilarityIndex, group: bytes, vector: list[float] | bytes) -> tuple[int, float]:
    """``index.best``, which must find something, with the similarity rounded past float32 noise."""
    found = index.best(group, vector)
    assert found is not None
    return found[0], round(found[1], 5)


def chat(*contents: str, **fields: Any) -> dict[str, Any]:
    """A chat request with a system message then one user message per content."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Answer briefly."}]
    messages += [{"role": "user", "content": content} for content in contents]
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0, **fields}


# The index


def test_identical_vectors_have_similarity_one_whatever_their_length() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 1, [3.0, 4.0, 0.0])
    best = index.best(b"g", [0.6, 0.8, 0.0])
    assert best is not None
    assert best[0] == 1
    assert best[1] == pytest.approx(1.0, abs=1e-6)


def test_orthogonal_vectors_have_similarity_zero_and_opposite_minus_one() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 1, [1.0, 0.0])
    assert closest(index, b"g", [0.0, 2.0]) == (1, 0.0)
    assert closest(index, b"g", [-1.0, 0.0]) == (1, -1.0)


def test_best_picks_the_closest_vector() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 1, [1.0, 0.0, 0.0])
    index.add(b"g", 2, [1.0, 1.0, 0.0])
    index.add(b"g", 3, [0.0, 0.0, 1.0])
    best = index.best(b"g", [0.9, 1.0, 0.0])
    assert best is not None
    assert best[0] == 2
    assert best[1] == pytest.approx(1.9 / math.sqrt(2 * 1.81), abs=1e-6)


def test_float32_bytes_are_accepted_like_floats() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 7, float32_bytes([0.0, 5.0, 0.0]))
    assert closest(index, b"g", [0.0, 1.0, 0.0]) == (7, 1.0)
    assert closest(index, b"g", float32_bytes([0.0, 1.0, 0.0])) == (7, 1.0)


def test_groups_are_kept_apart() -> None:
    index = SimilarityIndex(10)
    index.add(b"chat", 1, [1.0, 0.0])
    index.add(b"other", 2, [0.0, 1.0])
    assert closest(index, b"chat", [0.0, 1.0]) == (1, 0.0)
    assert closest(index, b"other", [0.0, 1.0]) == (2, 1.0)
    assert index.best(b"empty", [0.0, 1.0]) is None
    # A group's dimension is its own.
    index.add(b"wide", 3, [1.0, 0.0, 0.0, 0.0])
    assert len(index) == 3


def test_remove_forgets_an_entry_and_others_stay_findable() -> None:
    index = SimilarityIndex(100)
    for entry_id in range(40):  # past the first growth, and back down through a shrink
        index.add(b"g", entry_id, [math.cos(entry_id / 10), math.sin(entry_id / 10)])
    for entry_id in range(0, 40, 2):
        index.remove(entry_id)
    index.remove(12345)  # not held: nothing happens
    assert len(index) == 20
    for entry_id in range(1, 40, 2):
        vector = [math.cos(entry_id / 10), math.sin(entry_id / 10)]
        assert closest(index, b"g", vector) == (entry_id, 1.0)
    for entry_id in range(1, 40, 2):
        index.remove(entry_id)
    assert len(index) == 0
    assert index.best(b"g", [1.0, 0.0]) is None


def test_adding_an_id_again_replaces_its_vector() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 1, [1.0, 0.0])
    index.add(b"g", 2, [0.0, 1.0])
    index.add(b"g", 1, [-1.0, 0.0])
    assert len(index) == 2
    assert closest(index, b"g", [-1.0, 0.1]) == (1, round(1 / math.sqrt(1.01), 5))
    index.add(b"h", 1, [1.0, 0.0])  # moving to another group leaves the first
    assert closest(index, b"g", [-1.0, 0.0]) == (2, 0.0)


def test_the_oldest_vectors_are_dropped_past_the_bound() -> None:
    index = SimilarityIndex(3)
    index.add(b"a", 1, [1.0, 0.0])
    index.add(b"b", 2, [1.0, 0.0])
    index.add(b"a", 3, [0.0, 1.0])
    index.add(b"a", 1, [1.0, 0.0])  # added again: now the newest
    index.add(b"a", 4, [-1.0, 0.0])  # four held: entry 2, the oldest, goes
    assert len(index) == 3
    assert index.best(b"b", [1.0, 0.0]) is None
    index.add(b"a", 5, [0.0, -1.0])  # then entry 3
    assert len(index) == 3
    assert closest(index, b"a", [0.0, 1.0])[0] != 3
    assert closest(index, b"a", [1.0, 0.0]) == (1, 1.0)
    assert closest(index, b"a", [-1.0, 0.0]) == (4, 1.0)
    assert closest(index, b"a", [0.0, -1.0]) == (5, 1.0)


def test_a_vector_of_another_dimension_is_refused() -> None:
    index = SimilarityIndex(10)
    index.add(b"g", 1, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="2 dimensions"):
        index.add(b"g", 2, [1.0, 0.0])
    with pytest.raises(ValueError, match="dimensions"):
        index.best(b"g", [1.0, 0.0, 0.0, 0.0])
    # A refused replacement leaves the old vector in place.
    with pytest.raises(ValueError, match="dimensions"):
        index.add(b"g", 1, [1.0])
    assert closest(index, b"g", [1.0, 0.0, 0.0]) == (1, 1.0)


@pytest.mark.parametrize(
    "vector", [[], [0.0, 0.0], [math.nan, 1.0], [math.inf, 1.0], b"\x00\x00\x80"]
)
def test_vectors_without_a_direction_are_refused(vector: list[float] | bytes) -> None:
    index = SimilarityIndex(10)
    with pytest.raises(ValueError):
        index.add(b"g", 1, vector)
    assert len(index) == 0


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_vectors"):
        SimilarityIndex(0)


# decode_embedding


def test_decode_embedding_takes_floats_and_base64() -> None:
    assert decode_embedding([1, 0.5, -2]) == [1.0, 0.5, -2.0]
    packed = float32_bytes([0.25, -1.0])
    assert decode_embedding(base64.b64encode(packed).decode()) == packed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "not NoneType"),
        ({"embedding": [1.0]}, "not dict"),
        ([], "empty"),
        ([1.0, "2"], "only numbers"),
        ([True], "only numbers"),
        ("not base64!", "base64"),
        (base64.b64encode(b"\x00\x00\x00").decode(), "whole float32"),
    ],
)
def test_decode_embedding_explains_what_it_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_embedding(value)


# text_of


def test_chat_text_is_role_and_content_per_line() -> None:
    document = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                         {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
    }  # fmt: skip
    assert text_of(CHAT_PATH, document) == (
        "system: Be terse.\nuser: Hello\nthere\nassistant: \ntool: 42"
    )


def test_responses_text_is_instructions_then_input() -> None:
    assert text_of(RESPONSES_PATH, {"model": "gpt-5", "input": "Capital of France?"}) == (
        "Capital of France?"
    )
    document = {
        "model": "gpt-5",
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": "Capital of France?"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Paris."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "user", "content": [{"type": "input_text", "text": "And Spain?"}]},
        ],
    }  # fmt: skip
    assert text_of(RESPONSES_PATH, document) == (
        "instructions: Answer in French.\nuser: Capital of France?\nassistant: Paris.\n"
        "tool: sunny\nuser: And Spain?"
    )


def test_embeddings_and_other_endpoints_have_no_text() -> None:
    assert text_of(EMBEDDINGS_PATH, {"model": "text-embedding-3-small", "input": "hi"}) is None
    assert text_of("/v1/completions", {"model": "x", "prompt": "hi"}) is None


@pytest.mark.parametrize(
    ("path", "document"),
    [
        (CHAT_PATH, {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
        (CHAT_PATH, {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
        (CHAT_PATH, {"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}]}]}),
        (RESPONSES_PATH, {"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Describe"},
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}),
        (RESPONSES_PATH, {"input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-1"}]}]}),
        (CHAT_PATH, {"messages": []}),
        (CHAT_PATH, {"messages": [{"role": "user", "content": "   "}]}),
        (CHAT_PATH, {}),
        (RESPONSES_PATH, {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}),
        (RESPONSES_PATH, {"input": 3}),
    ],
)  # fmt: skip
def test_no_text_for_images_audio_files_or_nothing(path: str, document: dict[str, Any]) -> None:
    assert text_of(path, {"model": "gpt-4o", **document}) is None


# shape_of


def test_requests_differing_only_in_wording_have_one_shape() -> None:
    first = chat("What is the capital of France?")
    second = chat("what's France's capital city")
    assert text_of(CHAT_PATH, first) != text_of(CHAT_PATH, second)
    assert shape_of(CHAT_PATH, first) == shape_of(CHAT_PATH, second)
    one = {"model": "gpt-5", "instructions": "Be brief.", "input": "Capital of France?"}
    two = {"model": "gpt-5", "instructions": "Be short.", "input": "France's capital?"}
    assert shape_of(RESPONSES_PATH, one) == shape_of(RESPONSES_PATH, two)


def test_shape_keeps_roles_and_tool_calls() -> None:
    shape = shape_of(CHAT_PATH, chat("hi"))
    assert b'"role":"system"' in shape
    assert b"hi" not in shape
    with_call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    calling = chat("hi")
    calling["messages"].append(with_call)
    saying = chat("hi")
    saying["messages"].append({"role": "assistant", "content": "ok"})
    assert shape_of(CHAT_PATH, calling) != shape_of(CHAT_PATH, saying)


@pytest.mark.parametrize(
    "different",
    [
        chat("What is the capital of France?", temperature=0.7),
        chat("What is the capital of France?", model="gpt-4o"),
        chat("What is the capital of France?", tools=[{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object"}}}]),
        chat("What is", "the capital of France?"),
        {**chat("What is the capital of France?"),
         "messages": [{"role": "developer", "content": "Answer briefly."},
                      {"role": "user", "content": "What is the capital of France?"}]},
        chat("What is the capital of France?", max_tokens=5),
    ],
)  # fmt: skip
def test_shape_differs_when_the_answer_could(different: dict[str, Any]) -> None:
    base = chat("What is the capital of France?")
    assert shape_of(CHAT_PATH, different) != shape_of(CHAT_PATH, base)


def test_shape_ignores_delivery_and_labels() -> None:
    base = chat("What is the capital of France?")
    labelled = chat(
        "What is the capital of France?",
        stream=True,
        stream_options={"include_usage": True},
        user="alice",
        metadata={"ticket": "42"},
        store=True,
        service_tier="flex",
        safety_identifier="u-1",
        prompt_cache_key="k",
        prompt_cache_retention="24h",
    )
    assert shape_of(CHAT_PATH, labelled) == shape_of(CHAT_PATH, base)
    # 0 and 0.0 are one temperature, as for the exact cache key.
    assert shape_of(CHAT_PATH, chat("x", temperature=0.0)) == shape_of(CHAT_PATH, chat("x"))


def test_shape_keys_are_sorted() -> None:
    assert shape_of(EMBEDDINGS_PATH, {"model": "m", "input": "a"}) == shape_of(
        EMBEDDINGS_PATH, {"input": "a", "model": "m"}
    )
