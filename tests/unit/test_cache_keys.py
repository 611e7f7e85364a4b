"""Which requests the cache takes part in, and what makes two requests one key."""

from __future__ import annotations

from typing import Any

import pytest
from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import CacheConfig, OperationConfig
from llmspool.core.errors import InvalidRequest
from llmspool.policy.cache_keys import CacheRules, cache_key, is_deterministic

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def plan(rules: CacheRules, document: dict[str, Any], *, header: str | None = None,
         operation: str | None = None, uid: int | None = 1000,
         endpoint: Endpoint = Endpoint.CHAT, stream: bool = False) -> Any:
    return rules.plan(endpoint, "openai", "m", document, header=header, operation=operation,
                      uid=uid, stream=stream)


@pytest.fixture
def rules() -> CacheRules:
    return CacheRules(CacheConfig(), {
        "faq": OperationConfig(cache_shared=True, cache_ttl=60.0),
        "live": OperationConfig(cache="off"),
        "always": OperationConfig(cache="on"),
    })


@pytest.mark.parametrize(("endpoint", "document", "expected"), [
    (Endpoint.EMBEDDINGS, {"input": "x"}, True),
    (Endpoint.CHAT, {**CHAT, "temperature": 0}, True),
    (Endpoint.CHAT, {**CHAT, "temperature": 0.0}, True),
    (Endpoint.CHAT, {**CHAT, "seed": 3}, True),
    (Endpoint.CHAT, CHAT, False),  # OpenAI's default temperature is 1
    (Endpoint.CHAT, {**CHAT, "temperature": 0.2}, False),
    (Endpoint.CHAT, {**CHAT, "temperature": False}, False),
    (Endpoint.CHAT, {**CHAT, "seed": True}, False),
    (Endpoint.RESPONSES, {"model": "m", "input": "hi", "temperature": 0}, True),
])
def test_deterministic_requests(endpoint: Endpoint, document: dict[str, Any],
                                expected: bool) -> None:
    assert is_deterministic(endpoint, document) is expected


def test_the_header_and_the_operation_decide_in_that_order(rules: CacheRules) -> None:
    sampled = {**CHAT, "temperature": 0.7}
    assert plan(rules, sampled) is None
    assert plan(rules, sampled, header="on") is not None
    assert plan(rules, sampled, header=" ON ") is not None
    assert plan(rules, sampled, operation="always") is not None
    assert plan(rules, {**CHAT, "temperature": 0}, header="off") is None
    assert plan(rules, {**CHAT, "temperature": 0}, operation="live", header="on") is None
    with pytest.raises(InvalidRequest, match="on, off or auto"):
        plan(rules, CHAT, header="yes")


def test_the_cache_off_in_config_turns_everything_off() -> None:
    rules = CacheRules(CacheConfig(enabled=False), {})
    assert plan(rules, {**CHAT, "temperature": 0}, header="on") is None


def test_scope_is_the_user_unless_the_operation_shares(rules: CacheRules) -> None:
    document = {**CHAT, "temperature": 0}
    alice, bob = plan(rules, document, uid=1000), plan(rules, document, uid=1001)
    assert alice.key != bob.key and alice.scope == "uid:1000"
    shared_alice = plan(rules, document, uid=1000, operation="faq")
    shared_bob = plan(rules, document, uid=1001, operation="faq")
    assert shared_alice.key == shared_bob.key and shared_alice.scope == "shared"
    assert shared_alice.ttl == 60.0 and alice.ttl == 3600.0


def test_what_changes_the_key() -> None:
    def key(document: dict[str, Any], *, stream: bool = False, model: str = "m") -> bytes:
        return cache_key("uid:1", Endpoint.CHAT, "openai", model, document, stream=stream)

    base = key({**CHAT, "temperature": 0})
    assert key({"temperature": 0.0, **CHAT}) == base  # order and 0 == 0.0
    assert key({**CHAT, "temperature": 0, "user": "u", "metadata": {"a": "b"},
                "service_tier": "flex", "store": True, "stream_options": {}}) == base
    assert key({**CHAT, "temperature": 0, "max_tokens": 5}) != base
    assert key({**CHAT, "temperature": 0}, stream=True) != base
    assert key({**CHAT, "temperature": 0}, model="other") != base
    assert len(base) == 16
