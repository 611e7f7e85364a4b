"""The Responses API through the official client: plain and streamed, string and item input."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import openai
import pytest
from openai.types.responses import Response

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim


def estimated_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def test_plain_response_from_string_input(sim: RunningSim) -> None:
    prompt = "Tell me about deadlines."
    response = sim.client().responses.create(model="gpt-5", input=prompt, service_tier="flex")
    assert isinstance(response, Response)
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.completed_at is not None
    assert response.model == "gpt-5"
    assert response.service_tier == "flex"
    assert response.error is None
    assert response.incomplete_details is None
    [message] = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    [part] = message.content
    assert part.type == "output_text"
    assert part.annotations == []
    text = response.output_text
    assert text == part.text
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == 16 == estimated_tokens(text)
    assert usage.input_tokens == estimated_tokens(prompt)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_item_list_input_and_instructions_count_as_input(sim: RunningSim) -> None:
    instructions, first, second = "Be brief.", "What is a spooler?", "And a deadline?"
    response = sim.client().responses.create(
        model="gpt-4.1",
        instructions=instructions,
        input=[
            {"role": "user", "content": first},
            {"role": "user", "content": [{"type": "input_text", "text": second}]},
        ],
    )
    assert response.instructions == instructions
    assert response.usage is not None
    assert response.usage.input_tokens == estimated_tokens(instructions + first + second)


def test_max_output_tokens_makes_an_incomplete_response(sim: RunningSim) -> None:
    response = sim.client().responses.create(model="gpt-4o", input="hi", max_output_tokens=20)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 20 == estimated_tokens(response.output_text)


def test_streamed_response_sends_the_event_sequence(sim: RunningSim) -> None:
    client = sim.client()
    plain = client.responses.create(model="o4-mini", input="stream me")
    events = list(client.responses.create(model="o4-mini", input="stream me", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) == 16
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in deltas)
    assert text == plain.output_text
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.status == "completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 16
    assert completed.response.output_text == text
    assert events[0].type == "response.created"
    assert events[0].response.status == "in_progress"


def test_stream_helper_accumulates_the_final_response(sim: RunningSim) -> None:
    with sim.client().responses.stream(model="gpt-4o", input="hello") as stream:
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.output_tokens == estimated_tokens(final.output_text)


def test_streamed_wire_format_names_each_event(sim: RunningSim) -> None:
    with (
        sim.http() as http,
        http.stream(
            "POST", "/v1/responses", json={"model": "gpt-4o", "input": "x", "stream": True}
        ) as response,
    ):
        body = response.read().decode()
    blocks = [block for block in body.split("\n\n") if block]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: response.")
        assert f'"type":"{event_line.removeprefix("event: ")}"' in data_line


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x"}, 400, "model"),
        ({"model": "gpt-4o"}, 400, "input"),
        ({"model": "gpt-4o", "input": []}, 400, "input"),
        ({"model": "gpt-4o", "input": 5}, 400, "input"),
        ({"model": "gpt-4o", "input": "x", "max_output_tokens": -1}, 400, "max_output_tokens"),
        ({"model": "unknown-model", "input": "x"}, 404, None),
    ],
)
def test_bad_requests(sim: RunningSim, body: dict[str, object], status: int, param: str) -> None:
    with sim.http() as http:
        response = http.post("/v1/responses", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_unknown_model_raises_not_found_in_the_client(sim: RunningSim) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sim.client().responses.create(model="gpt-2", input="x")
    assert caught.value.code == "model_not_found"
