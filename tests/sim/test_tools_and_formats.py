"""Tool calls, JSON mode and Structured Outputs through the official client, as with OpenAI.

Chat completions and responses: ``tools`` with every ``tool_choice``, parallel calls, the turn
after a tool's result, ``response_format`` / ``text.format`` (``json_object``, ``json_schema``),
the client's ``parse()`` and ``stream()``, cuts by the output token limit, usage, determinism,
batch lines, the Ollama flavor, and bad input answered 400 with ``param`` set. Arguments and
contents are checked against their schema by ``jsonschema``, answers against OpenAI's spec by a
full validator (``tests.support.openapi_schemas``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import openai
import orjson
import pytest
from jsonschema import Draft202012Validator
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall
from pydantic import BaseModel, Field

from tests.support.openapi_schemas import SPEC, OpenApiSchemas
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

USER = [{"role": "user", "content": "What is the weather in Paris and what time is it?"}]

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "when": {"type": "string", "format": "date"},
        "stations": {"type": "array", "items": {"$ref": "#/$defs/Station"}, "minItems": 1},
        "note": {"type": ["string", "null"]},
    },
    "required": ["city", "unit"],
    "$defs": {
        "Station": {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^[A-Z]{4}$"}},
            "required": ["code"],
        }
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
NO_ARGUMENTS = {"type": "function", "function": {"name": "ping"}}


class Step(BaseModel):
    explanation: str
    output: str


class Solution(BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: float = Field(ge=0, le=1)
    verdict: Literal["right", "wrong"]
    remark: str | None


class Lookup(BaseModel):
    """Look a word up."""

    word: str
    limit: int = Field(ge=1, le=10)


def estimated_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def valid(value: Any, schema: dict[str, Any]) -> None:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [error.message for error in validator.iter_errors(value)]
    assert not errors, (value, errors)


def function_calls(completion: ChatCompletion) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = completion.choices[0].message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def error_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


# -- chat completions: tools -----------------------------------------------------------------


def test_tool_call_arguments_are_an_instance_of_the_parameters(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.create(
        model="gpt-4o", messages=USER, tools=[WEATHER], parallel_tool_calls=False
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.refusal is None
    [call] = function_calls(completion)
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    valid(arguments, WEATHER_PARAMETERS)
    assert set(arguments) == set(WEATHER_PARAMETERS["properties"])
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == estimated_tokens(call.function.arguments)


def test_parallel_calls_call_each_tool_unless_turned_off(sim: RunningSim) -> None:
    client = sim.client()
    tools: Any = [WEATHER, CLOCK, NO_ARGUMENTS]
    both = client.chat.completions.create(model="gpt-4o", messages=USER, tools=tools)
    calls = function_calls(both)
    assert [call.function.name for call in calls] == ["get_weather", "get_time", "ping"]
    assert len({call.id for call in calls}) == 3
    valid(json.loads(calls[1].function.arguments), CLOCK["function"]["parameters"])  # type: ignore[index]
    assert calls[2].function.arguments == "{}"
    assert both.usage is not None
    assert both.usage.completion_tokens == sum(
        estimated_tokens(call.function.arguments) for call in calls
    )
    one = client.chat.completions.create(
        model="gpt-4o", messages=USER, tools=tools, parallel_tool_calls=False
    )
    assert [call.function.name for call in function_calls(one)] == ["get_weather"]


def test_tool_choice_none_named_required_and_allowed(sim: RunningSim) -> None:
    client = sim.client()
    tools: Any = [WEATHER, CLOCK]

    def ask(choice: Any, messages: Any = USER) -> ChatCompletion:
        return client.chat.completions.create(
            model="gpt-4o", messages=messages, tools=tools, tool_choice=choice
        )

    text = ask("none")
    assert text.choices[0].finish_reason == "stop"
    assert text.choices[0].message.content
    assert text.choices[0].message.tool_calls is None
    named = ask({"type": "function", "function": {"name": "get_time"}})
    assert [call.function.name for call in function_calls(named)] == ["get_time"]
    assert named.choices[0].finish_reason == "tool_calls"
    allowed = ask(
        {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "get_time"}}],
            },
        }
    )
    assert [call.function.name for call in function_calls(allowed)] == ["get_time"]
    # After a tool's result, "auto" answers in text but "required" and a named tool still call.
    first = function_calls(ask("auto"))
    history: Any = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call.model_dump(exclude_none=True) for call in first],
        },
        *(
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}
            for call in first
        ),
    ]
    answer = ask("auto", history)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None
    assert [call.function.name for call in function_calls(ask("required", history))] == [
        "get_weather",
        "get_time",
    ]
    # The calls and results of the history are part of the prompt.
    assert answer.usage is not None
    assert text.usage is not None
    assert answer.usage.prompt_tokens > text.usage.prompt_tokens


def test_tool_definitions_count_as_prompt_tokens(sim: RunningSim) -> None:
    client = sim.client()
    plain = client.chat.completions.create(model="gpt-4o", messages=USER)
    with_tools = client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER])
    assert plain.usage is not None
    assert with_tools.usage is not None
    added = with_tools.usage.prompt_tokens - plain.usage.prompt_tokens
    assert added == pytest.approx(len(orjson.dumps([WEATHER])) / 4, abs=2)


def test_same_request_same_calls_and_content(sim: RunningSim) -> None:
    client = sim.client()

    def call(prompt: str) -> str:
        completion = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], tools=[WEATHER]
        )
        return function_calls(completion)[0].function.arguments

    def structured(prompt: str) -> str | None:
        completion = client.chat.completions.parse(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], response_format=Solution
        )
        return completion.choices[0].message.content

    assert call("weather in Oslo") == call("weather in Oslo")
    assert call("weather in Oslo") != call("weather in Lima, please")
    assert structured("solve 2x=4") == structured("solve 2x=4")
    assert structured("solve 2x=4") != structured("solve 3x=9, show steps")


def test_n_choices_each_get_their_own_call_ids(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.create(
        model="gpt-4o", messages=USER, tools=[CLOCK], n=3
    )
    ids = [choice.message.tool_calls[0].id for choice in completion.choices]  # type: ignore[index]
    arguments = {choice.message.tool_calls[0].function.arguments for choice in completion.choices}  # type: ignore[index,union-attr]
    assert len(set(ids)) == 3
    assert len(arguments) == 1
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 * estimated_tokens(arguments.pop())


def test_parse_gives_parsed_arguments_of_pydantic_tools(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.parse(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Look up 'spool'."}],
        tools=[openai.pydantic_function_tool(Lookup)],
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert call.function.name == "Lookup"
    parsed = call.function.parsed_arguments
    assert isinstance(parsed, Lookup)
    assert 1 <= parsed.limit <= 10


# -- chat completions: response_format -------------------------------------------------------


def test_parse_with_a_pydantic_model_gives_an_instance(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23."}],
        response_format=Solution,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    parsed = choice.message.parsed
    assert isinstance(parsed, Solution)
    assert parsed.steps
    assert 0 <= parsed.confidence <= 1
    content = choice.message.content or ""
    assert completion.usage is not None
    assert completion.usage.completion_tokens == estimated_tokens(content)


def test_json_schema_content_validates_and_is_not_strict_only(sim: RunningSim) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "meta": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["items"],
    }
    completion = sim.client().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "numbers"}],
        response_format={"type": "json_schema", "json_schema": {"name": "nums", "schema": schema}},
    )
    valid(json.loads(completion.choices[0].message.content or ""), schema)


def test_json_object_mode_answers_a_json_object(sim: RunningSim) -> None:
    client = sim.client()
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": "Answer in JSON."}, *USER],
        response_format={"type": "json_object"},
    )
    content = json.loads(completion.choices[0].message.content or "")
    assert isinstance(content, dict)
    assert content
    assert completion.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o", messages=USER, response_format={"type": "json_object"}
        )
    assert refused.value.param == "messages"
    assert "json" in refused.value.message


def test_output_limit_cuts_json_and_parse_raises(sim: RunningSim) -> None:
    client = sim.client()
    messages: Any = [{"role": "user", "content": "Solve 8x + 7 = -23."}]
    full = client.chat.completions.parse(
        model="gpt-4o", messages=messages, response_format=Solution, max_completion_tokens=4096
    )
    assert full.choices[0].finish_reason == "stop"
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="gpt-4o", messages=messages, response_format=Solution, max_completion_tokens=5
        )
    cut = client.chat.completions.create(
        model="gpt-4o", messages=USER, tools=[WEATHER], max_completion_tokens=3
    )
    assert cut.choices[0].finish_reason == "length"
    [call] = function_calls(cut)
    assert len(call.function.arguments) == 12
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 3


# -- chat completions: streaming -------------------------------------------------------------


def test_streamed_tool_calls_arrive_as_openai_deltas(sim: RunningSim) -> None:
    request = {"model": "gpt-4o", "messages": USER, "tools": [WEATHER, CLOCK]}
    with sim.http() as http:
        whole = http.post("/v1/chat/completions", json=request).json()
        body = http.post(
            "/v1/chat/completions",
            json={**request, "stream": True, "stream_options": {"include_usage": True}},
        ).text
    chunks = [orjson.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    first = deltas[0]
    assert first["role"] == "assistant"
    assert first["content"] is None
    [start] = first["tool_calls"]
    assert start["index"] == 0
    assert start["id"].startswith("call_")
    assert start["type"] == "function"
    assert start["function"] == {"name": "get_weather", "arguments": ""}
    arguments = ["", ""]
    names = {}
    for delta in deltas:
        for part in delta.get("tool_calls", []):
            if "id" in part:
                names[part["index"]] = part["function"]["name"]
            else:
                assert set(part) == {"index", "function"}
                assert len(part["function"]["arguments"]) <= 4
            arguments[part["index"]] += part["function"]["arguments"]
    assert names == {0: "get_weather", 1: "get_time"}
    expected = [
        call["function"]["arguments"] for call in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert arguments == expected
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_client_stream_parses_tool_calls_and_content(sim: RunningSim) -> None:
    client = sim.client()
    with client.chat.completions.stream(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Look up 'spool'."}],
        tools=[openai.pydantic_function_tool(Lookup)],
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    [call] = final.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Lookup)
    assert final.choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23."}],
        response_format=Solution,
    ) as stream:
        for _ in stream:
            pass
        parsed = stream.get_final_completion().choices[0].message.parsed
    assert isinstance(parsed, Solution)


# -- responses -------------------------------------------------------------------------------


def test_responses_parse_with_a_pydantic_model(sim: RunningSim) -> None:
    client = sim.client()
    response = client.responses.parse(
        model="gpt-5", input="Solve 8x + 7 = -23.", text_format=Solution
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, Solution)
    assert response.usage is not None
    assert response.usage.output_tokens == estimated_tokens(response.output_text)
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    with client.responses.stream(
        model="gpt-5", input="Solve 8x + 7 = -23.", text_format=Solution
    ) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    assert streamed.output_parsed == response.output_parsed


def test_responses_function_calls_then_text_after_their_output(sim: RunningSim) -> None:
    client = sim.client()
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": WEATHER_PARAMETERS,
            "strict": False,
        },
        {"type": "web_search"},
    ]
    response = client.responses.create(model="gpt-5", input="Weather in Paris?", tools=tools)
    [item] = response.output
    assert item.type == "function_call"
    assert item.id is not None
    assert item.id.startswith("fc_")
    assert item.call_id.startswith("call_")
    assert item.name == "get_weather"
    assert item.status == "completed"
    valid(json.loads(item.arguments), WEATHER_PARAMETERS)
    assert response.usage is not None
    assert response.usage.output_tokens == estimated_tokens(item.arguments)
    follow_up = client.responses.create(
        model="gpt-5",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": item.call_id,
                "name": item.name,
                "arguments": item.arguments,
            },
            {"type": "function_call_output", "call_id": item.call_id, "output": "21 C"},
        ],
        tools=tools,
    )
    assert follow_up.output[0].type == "message"
    assert follow_up.output_text


def test_responses_tool_choice_and_strict_default(sim: RunningSim) -> None:
    client = sim.client()
    tools: Any = [
        {"type": "function", "name": "first", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "second", "parameters": None, "strict": False},
    ]
    both = client.responses.create(model="gpt-5", input="go", tools=tools)
    assert [item.type for item in both.output] == ["function_call", "function_call"]
    # Function tools are strict by default in responses, and echoed so.
    assert [tool.strict for tool in both.tools] == [True, False]  # type: ignore[union-attr]
    one = client.responses.create(model="gpt-5", input="go", tools=tools, parallel_tool_calls=False)
    assert [item.name for item in one.output] == ["first"]  # type: ignore[union-attr]
    named = client.responses.create(
        model="gpt-5", input="go", tools=tools, tool_choice={"type": "function", "name": "second"}
    )
    assert [item.name for item in named.output] == ["second"]  # type: ignore[union-attr]
    assert named.output[0].arguments == "{}"  # type: ignore[union-attr]
    none = client.responses.create(model="gpt-5", input="go", tools=tools, tool_choice="none")
    assert none.output[0].type == "message"


def test_responses_json_object_and_cut_json(sim: RunningSim) -> None:
    client = sim.client()
    response = client.responses.create(
        model="gpt-5", input="Reply in json.", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(response.output_text), dict)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="gpt-5", input="hi", text={"format": {"type": "json_object"}})
    assert refused.value.param == "input"
    cut = client.responses.create(
        model="gpt-5",
        input="Solve it.",
        max_output_tokens=4,
        text={
            "format": {
                "type": "json_schema",
                "name": "solution",
                "schema": Solution.model_json_schema(),
            }
        },
    )
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert len(cut.output_text) == 16


def test_responses_stream_function_call_events(sim: RunningSim) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": Lookup.model_json_schema()}]
    with sim.client().responses.stream(
        model="gpt-5", input="Look up 'spool'.", tools=tools
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(
        event.delta for event in events if event.type == "response.function_call_arguments.delta"
    )
    [item] = final.output
    assert item.type == "function_call"
    assert deltas == item.arguments
    valid(json.loads(deltas), Lookup.model_json_schema())


# -- batches and the Ollama flavor -----------------------------------------------------------


def test_batch_lines_call_tools_and_follow_formats(sim: RunningSim) -> None:
    client = sim.client()
    bodies: dict[str, dict[str, Any]] = {
        "tool": {"model": "gpt-4o", "messages": USER, "tools": [WEATHER]},
        "schema": {
            "model": "gpt-4o",
            "messages": USER,
            **chat_schema(name="solution", schema=Solution.model_json_schema()),
        },
        "bad": {"model": "gpt-4o", "messages": USER, "tools": []},
    }
    lines = [
        {"custom_id": name, "method": "POST", "url": "/v1/chat/completions", "body": body}
        for name, body in bodies.items()
    ]
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    with sim.http() as http:
        http.post("/_sim/batch", json={"reset": True, "turnaround": "0s"}).raise_for_status()
    try:
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_for(
            lambda: (done := client.batches.retrieve(batch.id)).status == "completed" and done,
            timeout=10,
            every=0.05,
            what="the batch to complete",
        )
        assert batch.output_file_id is not None
        assert batch.error_file_id is not None
        output = [
            json.loads(line)
            for line in client.files.content(batch.output_file_id).text.splitlines()
        ]
        errors = [
            json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()
        ]
    finally:
        with sim.http() as http:
            http.post("/_sim/batch", json={"reset": True}).raise_for_status()
    answers = {line["custom_id"]: line["response"]["body"] for line in output}
    [call] = answers["tool"]["choices"][0]["message"]["tool_calls"]
    valid(json.loads(call["function"]["arguments"]), WEATHER_PARAMETERS)
    Solution.model_validate_json(answers["schema"]["choices"][0]["message"]["content"])
    [error] = errors
    assert error["custom_id"] == "bad"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "tools"


def test_ollama_flavor_calls_tools_and_follows_formats(
    start_sim: Callable[..., RunningSim],
) -> None:
    client = start_sim('[sim]\nflavor = "ollama"\n').client()
    called = client.chat.completions.create(model="llama3.2", messages=USER, tools=[WEATHER])
    assert called.service_tier is None
    assert called.system_fingerprint == "fp_ollama"
    [call] = function_calls(called)
    valid(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    parsed = client.responses.parse(model="llama3.2", input="Solve it.", text_format=Solution)
    assert isinstance(parsed.output_parsed, Solution)


# -- bad input -------------------------------------------------------------------------------

OBJECT = {"type": "object", "properties": {"a": {"type": "string"}}}


def chat_tool(**function: Any) -> dict[str, Any]:
    """A request's ``tools`` with one chat function tool."""
    return {"tools": [{"type": "function", "function": function}]}


def chat_schema(**json_schema: Any) -> dict[str, Any]:
    """A request's ``response_format`` of type ``json_schema``."""
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}


def response_tool(**tool: Any) -> list[dict[str, Any]]:
    """A responses function tool, as a ``tools`` list."""
    return [{"type": "function", **tool}]


def text_schema(**fields: Any) -> dict[str, Any]:
    """A responses ``text`` with a ``json_schema`` format."""
    return {"text": {"format": {"type": "json_schema", **fields}}}


F_TOOL = [{"type": "function", "name": "f"}]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_tool(parameters=OBJECT), "tools[0].function.name"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "tool", "function": {"name": "f"}}]}, "tools[0].type"),
        (chat_tool(name="bad name"), "tools[0].function.name"),
        (chat_tool(name="f" * 65), "tools[0].function.name"),
        (chat_tool(name="f", parameters="x"), "tools[0].function.parameters"),
        (chat_tool(name="f", parameters=OBJECT, strict=True), "tools[0].function.parameters"),
        (chat_tool(name="f", parameters={"$ref": "#/$defs/X"}), "tools[0].function.parameters"),
        ({"tools": []}, "tools"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": named("nope")}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tools": [WEATHER], "tool_choice": named("")}, "tool_choice"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (chat_schema(name="x"), "response_format.json_schema.schema"),
        (chat_schema(schema=OBJECT), "response_format.json_schema.name"),
        (chat_schema(name="x", schema=OBJECT, strict=True), "response_format"),
        (chat_schema(name="x", schema={"$ref": "#/nowhere"}), "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": "json"}, "response_format"),
    ],
)  # fmt: skip
def test_bad_chat_input_is_400_naming_the_param(
    sim: RunningSim, body: dict[str, Any], param: str
) -> None:
    with sim.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER, **body}
        )
    error = error_of(response)
    assert error["param"] == param, error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": response_tool(parameters=OBJECT)}, "tools[0].name"),
        ({"tools": response_tool(name="f", parameters=OBJECT, strict=True)}, "tools[0].parameters"),
        ({"tools": F_TOOL, "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"tools": F_TOOL, "tool_choice": {"type": "custom", "name": "g"}}, "tool_choice"),
        ({"tools": F_TOOL, "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (text_schema(name="x"), "text.format.schema"),
        (text_schema(schema=OBJECT), "text.format.name"),
        (text_schema(name="x", schema=OBJECT, strict=True), "text.format.schema"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)  # fmt: skip
def test_bad_responses_input_is_400_naming_the_param(
    sim: RunningSim, body: dict[str, Any], param: str
) -> None:
    with sim.http() as http:
        response = http.post("/v1/responses", json={"model": "gpt-5", "input": "hi", **body})
    error = error_of(response)
    assert error["param"] == param, error


def test_bad_input_messages_say_what_openai_says(sim: RunningSim) -> None:
    with sim.http() as http:
        no_tools = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": USER, "tool_choice": "auto"},
        )
        unknown = http.post(
            "/v1/responses",
            json={
                "model": "gpt-5",
                "input": "hi",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "function", "name": "g"},
            },
        )
        strict = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": OBJECT, "strict": True},
                },
            },
        )
    assert error_of(no_tools)["message"] == (
        "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
    )
    assert error_of(unknown)["message"] == "Tool choice 'g' not found in 'tools' parameter."
    assert error_of(strict)["message"] == (
        "Invalid schema for response_format 'answer': In context=(), 'additionalProperties' is "
        "required to be supplied and to be false."
    )


# -- conformance -----------------------------------------------------------------------------


def test_answers_conform_to_the_spec_by_a_full_validator(sim: RunningSim) -> None:
    # Chat chunks are left to test_spec_shapes: the spec marks their null fields with OpenAPI
    # 3.0's ``nullable``, which a 2020-12 validator does not know.
    if not SPEC.exists():
        pytest.skip(f"{SPEC} not found")
    spec = OpenApiSchemas()
    schema = Solution.model_json_schema()
    chat: dict[str, Any] = {"model": "gpt-4o", "messages": USER}
    responses: dict[str, Any] = {"model": "gpt-5", "input": "weather?"}
    function = {"type": "function", "name": "weather", "parameters": WEATHER_PARAMETERS}
    with sim.http() as http:
        for body in (
            {**chat, "tools": [WEATHER, CLOCK]},
            {**chat, **chat_schema(name="s", schema=schema)},
        ):
            answer = http.post("/v1/chat/completions", json=body).json()
            spec.check("CreateChatCompletionResponse", answer)
        for body in (
            {**responses, "tools": [function]},
            {**responses, **text_schema(name="s", schema=schema)},
        ):
            spec.check("Response", http.post("/v1/responses", json=body).json())
            events = http.post("/v1/responses", json={**body, "stream": True}).text
            for block in filter(None, events.split("\n\n")):
                spec.check("ResponseStreamEvent", orjson.loads(block.split("\ndata: ", 1)[1]))
