"""Faults that answer 200 with a poor chat completion (``refusal``, ``truncated``) and the
``contains`` selector, as a client sees them: what a model cascade has to detect and escalate.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import openai
import pytest
from llmspool.sim.faults import FaultKind, FaultRule

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.sim.conftest import RunningSim

SMALL = "gpt-4o-mini"
LARGE = "gpt-4o"
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


def ask(client: openai.OpenAI, prompt: str, model: str = SMALL, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra
    )


def test_refusal_answers_as_openai_refuses_for_the_matching_model_only(sim: RunningSim) -> None:
    client = sim.client()
    good = ask(client, "Why is the sky blue?")
    sim.set_faults({"kind": "refusal", "model": SMALL})
    refused = ask(client, "Why is the sky blue?")
    choice = refused.choices[0]
    assert choice.message.content is None
    assert choice.message.refusal == DEFAULT_REFUSAL
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    # Billed and labelled like the good answer: only the message changed.
    assert refused.id.startswith("chatcmpl-") and refused.id != good.id
    assert refused.model == good.model == SMALL
    assert refused.usage == good.usage
    assert refused.service_tier == good.service_tier
    assert refused.system_fingerprint == good.system_fingerprint
    other = ask(client, "Why is the sky blue?", model=LARGE)
    assert other.choices[0].message.content
    assert other.choices[0].message.refusal is None
    assert other.choices[0].finish_reason == "stop"
    stats = sim.stats()
    assert stats["faults"]["by_kind"] == {"refusal": 1}
    assert stats["requests"]["by_status"] == {"200": 3}


def test_refusal_says_the_rules_message_and_calls_no_tool(sim: RunningSim) -> None:
    tool = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
    sim.set_faults({"kind": "refusal", "message": "No can do.", "count": 1})
    refused = ask(sim.client(), "Look it up.", tools=[tool], tool_choice="required")
    message = refused.choices[0].message
    assert (message.content, message.refusal, message.tool_calls) == (None, "No can do.", None)
    assert refused.choices[0].finish_reason == "stop"


def test_truncated_cuts_the_content_to_half_with_finish_reason_length(sim: RunningSim) -> None:
    client = sim.client()
    good = ask(client, "Tell me a story.", n=2)
    full = good.choices[0].message.content
    assert full and good.choices[0].finish_reason == "stop"
    sim.set_faults({"kind": "truncated", "model": SMALL})
    cut = ask(client, "Tell me a story.", n=2)
    for choice in cut.choices:
        assert choice.finish_reason == "length"
        assert choice.message.content == full[: len(full) // 2]
        assert choice.message.refusal is None
    assert cut.usage == good.usage
    assert cut.model == SMALL and cut.service_tier == good.service_tier
    assert ask(client, "Tell me a story.", model=LARGE).choices[0].finish_reason == "stop"


def test_truncated_json_is_no_longer_json(sim: RunningSim) -> None:
    sim.set_faults({"kind": "truncated", "count": 1})
    cut = ask(sim.client(), "Answer in JSON.", response_format={"type": "json_object"})
    assert cut.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.choices[0].message.content)
    whole = ask(sim.client(), "Answer in JSON.", response_format={"type": "json_object"})
    assert isinstance(json.loads(whole.choices[0].message.content), dict)


def test_truncated_tool_calls_have_cut_arguments(sim: RunningSim) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    client = sim.client()
    whole = ask(client, "Weather?", tools=[tool], tool_choice="required")
    arguments = whole.choices[0].message.tool_calls[0].function.arguments
    sim.set_faults({"kind": "truncated", "count": 1})
    cut = ask(client, "Weather?", tools=[tool], tool_choice="required")
    calls = cut.choices[0].message.tool_calls
    assert [call.function.arguments for call in calls] == [arguments[: len(arguments) // 2]]
    assert cut.choices[0].finish_reason == "length"


def test_contains_selects_only_the_marked_requests(sim: RunningSim) -> None:
    client = sim.client()
    sim.set_faults({"kind": "refusal", "model": SMALL, "contains": "HARD:", "count": 2})
    # Unmarked, or marked but for another model: answered well, the rule's count untouched.
    assert ask(client, "An easy one.").choices[0].message.content
    assert ask(client, "HARD: but big model.", model=LARGE).choices[0].message.content
    with sim.http() as http:
        assert http.get("/_sim/faults").json()["faults"][0]["count"] == 2
    marked = ask(client, "HARD: prove it.")
    assert marked.choices[0].message.refusal == DEFAULT_REFUSAL
    # The marker may be anywhere in the body, not only in the last message.
    system_marked = client.chat.completions.create(
        model=SMALL,
        messages=[
            {"role": "system", "content": "HARD: task"},
            {"role": "user", "content": "go"},
        ],
    )
    assert system_marked.choices[0].message.content is None
    assert ask(client, "HARD: once more.").choices[0].message.content
    assert sim.stats()["faults"]["by_kind"] == {"refusal": 2}


def test_contains_also_selects_error_faults(sim: RunningSim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "contains": "FLAKY"})
    client = sim.client()
    assert ask(client, "steady").choices[0].message.content
    with pytest.raises(openai.InternalServerError):
        ask(client, "FLAKY request")


def test_a_contains_rule_never_hits_files(sim: RunningSim) -> None:
    sim.set_faults({"kind": "status", "status": 500, "path": "/v1/", "contains": "x"})
    uploaded = sim.client().files.create(file=("a.jsonl", b"xxx\n"), purpose="batch")
    assert uploaded.id.startswith("file-")


@pytest.mark.parametrize("kind", ["refusal", "truncated"])
def test_poor_answers_never_hit_streams_or_responses(sim: RunningSim, kind: str) -> None:
    client = sim.client()
    sim.set_faults({"kind": kind, "count": 1})
    chunks = list(ask(client, "Why is the sky blue?", stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert not any(chunk.choices[0].delta.refusal for chunk in chunks if chunk.choices)
    response = client.responses.create(model=SMALL, input="Why is the sky blue?")
    assert response.status == "completed" and response.output_text
    # Neither used the rule up: the next plain chat completion gets it.
    assert sim.stats()["faults"]["by_kind"] == {}
    hit = ask(client, "Why is the sky blue?")
    expected = "stop" if kind == "refusal" else "length"
    assert hit.choices[0].finish_reason == expected
    assert sim.stats()["faults"]["by_kind"] == {kind: 1}


def test_poor_answers_never_hit_the_anthropic_flavor(
    start_sim: Callable[..., RunningSim],
) -> None:
    running = start_sim(
        '[sim]\nflavor = "anthropic"\n\n[[sim.faults]]\nkind = "refusal"\n\n'
        '[[sim.faults]]\nkind = "truncated"\ncontains = "HARD:"\n'
    )
    with running.http() as http:
        answer = http.post(
            "/v1/messages",
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 1000,
                "messages": [{"role": "user", "content": "HARD: why?"}],
            },
            headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        )
        assert answer.status_code == 200
        assert answer.json()["stop_reason"] == "end_turn"
        assert answer.json()["content"][0]["text"]
        assert http.get("/_sim/faults").json()["faults"] == [
            {"kind": "refusal", "probability": 1.0},
            {"kind": "truncated", "probability": 1.0, "contains": "HARD:"},
        ]


@pytest.mark.parametrize(
    ("rule", "param", "words"),
    [
        ({"kind": "refusal", "contains": ""}, "faults[0].contains", "non-empty string"),
        ({"kind": "refusal", "contains": 5}, "faults[0].contains", "non-empty string"),
        ({"kind": "refusal", "message": ""}, "faults[0].message", "non-empty string"),
        ({"kind": "truncated", "message": "x"}, "faults[0].message", "does not apply"),
        ({"kind": "refusal", "status": 500}, "faults[0].status", "does not apply"),
        ({"kind": "refusal", "after_chunks": 1}, "faults[0].after_chunks", "does not apply"),
        ({"kind": "truncate"}, "faults[0].kind", "'truncated'"),
    ],
)
def test_bad_poor_answer_rules_are_refused_clearly(
    sim: RunningSim, rule: dict[str, Any], param: str, words: str
) -> None:
    with sim.http() as http:
        response = http.post("/_sim/faults", json=rule)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == param
        assert words in error["message"]
        assert http.get("/_sim/faults").json()["faults"] == []


def test_rules_round_trip_through_get_faults(sim: RunningSim) -> None:
    rules = [
        {"kind": "refusal", "model": SMALL, "contains": "HARD:", "message": "Nope."},
        {"kind": "truncated", "probability": 0.5, "count": 3, "contains": '"n": 2'},
        {"kind": "status", "status": 503, "contains": "FLAKY"},
    ]
    active = sim.set_faults({"faults": rules, "seed": 4})["faults"]
    assert active == [
        {"probability": 1.0, **rules[0]},
        rules[1],
        {"probability": 1.0, **rules[2]},
    ]
    with sim.http() as http:
        shown = http.get("/_sim/faults").json()
        assert shown["faults"] == active
        # What GET answers can be posted back as it is.
        assert http.post("/_sim/faults", json=shown).json()["faults"] == active


def test_rule_mapping_round_trip() -> None:
    rule = FaultRule.from_mapping(
        {"kind": "refusal", "contains": "HARD:", "model": SMALL, "message": "No."}, "r"
    )
    assert rule.kind is FaultKind.REFUSAL and rule.contains == "HARD:"
    assert FaultRule.from_mapping(rule.to_mapping(), "r") == rule
    truncated = FaultRule(kind=FaultKind.TRUNCATED, contains="x", delay=None)
    assert truncated.to_mapping() == {"kind": "truncated", "probability": 1.0, "contains": "x"}
    slow = FaultRule(kind=FaultKind.SLOW, delay=0.25, contains="x")
    assert slow.to_mapping()["delay"] == "250ms"
    assert FaultRule.from_mapping(slow.to_mapping(), "r") == slow


def test_contains_matching_is_on_the_body_text() -> None:
    rule = FaultRule(kind=FaultKind.STATUS, contains="HARD:")
    chat = "/v1/chat/completions"
    assert rule.matches(chat, SMALL, None, False, "POST", '{"content": "HARD: x"}')
    assert not rule.matches(chat, SMALL, None, False, "POST", '{"content": "easy"}')
    # No body to search (files, batches...): a rule with ``contains`` is not about it.
    assert not rule.matches(chat, SMALL, None, False, "POST", None)
    assert FaultRule(kind=FaultKind.STATUS).matches(chat, SMALL, None, False, "POST", None)
