"""No ``tools``, ``tool_choice``, ``response_format`` or ``text`` value makes the sim's parsers
fail other than with an OpenAI-shaped 4xx: odd JSON values, and odd JSON schemas in the right
places, are either answered (with a body that encodes) or refused as bad input."""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmspool.core.errors import ApiError
from llmspool.sim.answer import IdMaker, Makers
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.chat import parse_chat
from llmspool.sim.config import SimConfig
from llmspool.sim.responses import parse_response_request
from llmspool.sim.text import TextGenerator
from llmspool.sim.vectors import VectorMaker

MAKERS = Makers(
    catalog=ModelCatalog(SimConfig().models),
    text=TextGenerator(),
    vectors=VectorMaker(semantic=False),
    ids=IdMaker(),
    default_output_tokens=16,
    flex_models=frozenset(),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(
        ["function", "auto", "none", "required", "json_schema", "json_object", "object", "#"]
    ),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keywords = st.sampled_from(
    [
        "type", "properties", "required", "items", "prefixItems", "enum", "const", "anyOf",
        "oneOf", "allOf", "$ref", "$defs", "minimum", "maximum", "exclusiveMinimum",
        "multipleOf", "minItems", "maxItems", "uniqueItems", "minLength", "maxLength",
        "pattern", "format", "additionalProperties", "minProperties", "maxProperties",
    ]
)  # fmt: skip
schema_values = st.one_of(
    values,
    st.sampled_from(["object", "array", "string", "integer", "number", "null", "#/$defs/a"]),
    st.integers(min_value=-3, max_value=50),
)
schemas = st.recursive(
    st.dictionaries(keywords, schema_values, max_size=4),
    lambda inner: st.dictionaries(
        keywords, st.one_of(schema_values, inner, st.lists(inner, max_size=2)), max_size=4
    ),
    max_leaves=10,
)
FUZZ = settings(
    max_examples=int(os.environ.get("LLMSPOOL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def answered_or_refused(parse: Any, payload: dict[str, Any]) -> None:
    try:
        answer = parse(payload, MAKERS)
    except ApiError as error:
        assert 400 <= error.status < 500, error
        return
    orjson.loads(answer.body())
    for event, _paced in answer.events():
        assert event


@FUZZ
@given(
    tools=values,
    choice=values,
    response_format=values,
    parallel=values,
    parameters=schemas,
    schema=schemas,
)
def test_chat_tools_and_formats_are_answered_or_refused(
    tools: Any, choice: Any, response_format: Any, parallel: Any, parameters: Any, schema: Any
) -> None:
    base: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "json"}]}
    answered_or_refused(parse_chat, {**base, "tools": tools, "tool_choice": choice})
    answered_or_refused(
        parse_chat, {**base, "response_format": response_format, "parallel_tool_calls": parallel}
    )
    function = {"name": "f", "parameters": parameters}
    answered_or_refused(parse_chat, {**base, "tools": [{"type": "function", "function": function}]})
    answered_or_refused(
        parse_chat,
        {
            **base,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": schema},
            },
        },
    )


@FUZZ
@given(tools=values, choice=values, text=values, parameters=schemas, schema=schemas)
def test_responses_tools_and_formats_are_answered_or_refused(
    tools: Any, choice: Any, text: Any, parameters: Any, schema: Any
) -> None:
    base: dict[str, Any] = {"model": "gpt-5", "input": "json", "stream": True}
    answered_or_refused(parse_response_request, {**base, "tools": tools, "tool_choice": choice})
    answered_or_refused(parse_response_request, {**base, "text": text})
    function = {"type": "function", "name": "f", "parameters": parameters}
    answered_or_refused(parse_response_request, {**base, "tools": [function]})
    answered_or_refused(
        parse_response_request,
        {**base, "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}}},
    )
