"""Answers checked against the JSON schemas of OpenAI's published OpenAPI spec.

jsonschema is not a dependency, so a small checker covers the keywords these schemas use for
shape ($ref, allOf/anyOf/oneOf, type, nullable, enum, required, properties,
additionalProperties, items); numeric bounds and formats are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml"
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    if not SPEC.exists():
        pytest.skip(f"{SPEC} not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC.open() as file:
        spec = yaml.load(file, Loader=loader)
    result: dict[str, Any] = spec["components"]["schemas"]
    return result


def problems(value: Any, schema: dict[str, Any], schemas: dict[str, Any], at: str) -> list[str]:
    """What is wrong with ``value`` against ``schema`` (empty if nothing)."""
    if value is None and schema.get("nullable"):
        return []
    if "$ref" in schema:
        return problems(value, schemas[schema["$ref"].rsplit("/", 1)[1]], schemas, at)
    found: list[str] = []
    for part in schema.get("allOf", []):
        found += problems(value, part, schemas, at)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            options = [problems(value, option, schemas, at) for option in schema[keyword]]
            if all(options):
                best = min(options, key=len)
                found.append(f"{at}: matches no {keyword} option; closest: {best[:3]}")
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, _TYPES[kind]) for kind in allowed) and not (
            isinstance(value, bool) and "boolean" not in allowed
        )
        if not ok:
            return [*found, f"{at}: {short(value)} is not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {short(value)} not in {schema['enum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [
            f"{at}: missing {key!r}" for key in schema.get("required", []) if key not in value
        ]
        for key, item in value.items():
            if key in properties:
                found += problems(item, properties[key], schemas, f"{at}.{key}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{at}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += problems(item, schema["items"], schemas, f"{at}[{index}]")
    return found


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(value: Any, name: str, schemas: dict[str, Any]) -> None:
    found = problems(value, {"$ref": f"#/components/schemas/{name}"}, schemas, name)
    assert not found, "\n".join(found)


def test_checker_catches_a_wrong_shape(schemas: dict[str, Any]) -> None:
    # The checker itself must be able to fail, or the tests below prove nothing.
    bad = {"object": "list", "data": [{"id": "x", "object": "model", "created": "yesterday"}]}
    assert problems(bad, {"$ref": "#/components/schemas/ListModelsResponse"}, schemas, "$")
    assert problems({"error": {}}, {"$ref": "#/components/schemas/ErrorResponse"}, schemas, "$")


def test_chat_completion_and_chunks_match_the_spec(
    sim: RunningSim, schemas: dict[str, Any]
) -> None:
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    with sim.http() as http:
        plain = http.post("/v1/chat/completions", json=request).json()
        check(plain, "CreateChatCompletionResponse", schemas)
        body = http.post(
            "/v1/chat/completions",
            json={**request, "stream": True, "stream_options": {"include_usage": True}},
        ).text
    chunks = [event[6:] for event in body.split("\n\n") if event.startswith("data: {")]
    assert len(chunks) == 19  # role, 16 tokens, finish, usage
    for chunk in chunks:
        check(orjson.loads(chunk), "CreateChatCompletionStreamResponse", schemas)


def test_response_and_events_match_the_spec(sim: RunningSim, schemas: dict[str, Any]) -> None:
    with sim.http() as http:
        for extra in ({}, {"max_output_tokens": 5}):
            request = {"model": "gpt-5", "input": [{"role": "user", "content": "hi"}], **extra}
            check(http.post("/v1/responses", json=request).json(), "Response", schemas)
        body = http.post(
            "/v1/responses", json={"model": "gpt-5", "input": "hi", "stream": True}
        ).text
    event_schema = {
        "response.created": "ResponseCreatedEvent",
        "response.in_progress": "ResponseInProgressEvent",
        "response.output_item.added": "ResponseOutputItemAddedEvent",
        "response.content_part.added": "ResponseContentPartAddedEvent",
        "response.output_text.delta": "ResponseTextDeltaEvent",
        "response.output_text.done": "ResponseTextDoneEvent",
        "response.content_part.done": "ResponseContentPartDoneEvent",
        "response.output_item.done": "ResponseOutputItemDoneEvent",
        "response.completed": "ResponseCompletedEvent",
    }
    seen = set()
    for block in filter(None, body.split("\n\n")):
        event = orjson.loads(block.split("\ndata: ", 1)[1])
        seen.add(event["type"])
        check(event, event_schema[event["type"]], schemas)
        check(event, "ResponseStreamEvent", schemas)
    assert seen == set(event_schema)


def test_embeddings_models_and_errors_match_the_spec(
    sim: RunningSim, schemas: dict[str, Any]
) -> None:
    with sim.http() as http:
        # Only floats: the spec types every embedding as an array, also base64 strings.
        embedded = http.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": ["a", "b"]},
        ).json()
        check(embedded, "CreateEmbeddingResponse", schemas)
        check(http.get("/v1/models").json(), "ListModelsResponse", schemas)
        check(http.get("/v1/models/gpt-4o").json(), "Model", schemas)
        check(http.get("/v1/models/nope").json(), "ErrorResponse", schemas)
        check(http.post("/v1/chat/completions", content=b"{").json(), "ErrorResponse", schemas)


def test_tool_calls_and_structured_outputs_match_the_spec(
    sim: RunningSim, schemas: dict[str, Any]
) -> None:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    chat_tools = [
        {"type": "function", "function": {"name": "weather", "parameters": parameters}},
        {"type": "function", "function": {"name": "clock", "strict": True}},
    ]
    messages = [{"role": "user", "content": "weather?"}]
    json_schema = {"name": "forecast", "schema": parameters, "strict": True}
    with sim.http() as http:
        called = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": messages, "tools": chat_tools},
        ).json()
        assert called["choices"][0]["finish_reason"] == "tool_calls"
        check(called, "CreateChatCompletionResponse", schemas)
        structured = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": messages,
                "response_format": {"type": "json_schema", "json_schema": json_schema},
            },
        ).json()
        check(structured, "CreateChatCompletionResponse", schemas)
        body = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": messages,
                "tools": chat_tools,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ).text
        chunks = [event[6:] for event in body.split("\n\n") if event.startswith("data: {")]
        assert any(b"tool_calls" in chunk.encode() for chunk in chunks)
        for chunk in chunks:
            check(orjson.loads(chunk), "CreateChatCompletionStreamResponse", schemas)

        response_tools = [{"type": "function", "name": "weather", "parameters": parameters}]
        for extra in (
            {"tools": response_tools},
            {"tools": response_tools, "max_output_tokens": 2},
            {"text": {"format": {"type": "json_schema", **json_schema}}},
            {"text": {"format": {"type": "json_object"}}, "input": "in json"},
        ):
            request = {"model": "gpt-5", "input": "weather?", **extra}
            check(http.post("/v1/responses", json=request).json(), "Response", schemas)
        body = http.post(
            "/v1/responses",
            json={"model": "gpt-5", "input": "weather?", "tools": response_tools, "stream": True},
        ).text
    event_schema = {
        "response.created": "ResponseCreatedEvent",
        "response.in_progress": "ResponseInProgressEvent",
        "response.output_item.added": "ResponseOutputItemAddedEvent",
        "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
        "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
        "response.output_item.done": "ResponseOutputItemDoneEvent",
        "response.completed": "ResponseCompletedEvent",
    }
    seen = set()
    for block in filter(None, body.split("\n\n")):
        event = orjson.loads(block.split("\ndata: ", 1)[1])
        seen.add(event["type"])
        check(event, event_schema[event["type"]], schemas)
        check(event, "ResponseStreamEvent", schemas)
    assert seen == set(event_schema)
