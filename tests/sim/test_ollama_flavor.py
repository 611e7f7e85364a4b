"""``llmspool sim`` impersonating Ollama (``[sim] flavor = "ollama"``), as a client sees it:
OpenAI shapes without service tiers or rate-limit headers, Ollama's own error bodies, no Files or
Batch API, and the native ``/api/tags`` and ``/api/version``."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import orjson
import pytest
import tomli_w
from llmspool.core.errors import ConfigError
from llmspool.sim.config import DEFAULT_MODELS, OLLAMA_MODELS, SimConfig

from tests.sim.conftest import RunningSim, launch

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture(scope="module")
def shared_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSim]:
    running = launch(tmp_path_factory.mktemp("ollama"), '[sim]\nflavor = "ollama"\n')
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr()


@pytest.fixture
def ollama(shared_ollama: RunningSim) -> RunningSim:
    """The Ollama-flavoured simulator with no faults and zeroed stats."""
    with shared_ollama.http() as http:
        http.delete("/_sim/faults").raise_for_status()
        http.post("/_sim/stats/reset").raise_for_status()
    return shared_ollama


def assert_no_openai_headers(headers: httpx2.Headers) -> None:
    assert not [name for name in headers if name.startswith(("x-ratelimit-", "openai-"))]
    assert "x-request-id" not in headers


def post(sim: RunningSim, path: str, body: dict[str, Any]) -> httpx2.Response:
    with sim.http() as http:
        return http.post(path, json=body)


def test_chat_completion_has_openai_shape_without_tier_or_rate_limits(ollama: RunningSim) -> None:
    raw = ollama.client().chat.completions.with_raw_response.create(
        model="llama3.2", messages=MESSAGES
    )
    assert_no_openai_headers(raw.headers)
    body = orjson.loads(raw.content)
    assert "service_tier" not in body
    assert body["system_fingerprint"] == "fp_ollama"
    completion = raw.parse()  # strict: the official types accept it
    assert completion.model == "llama3.2"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    assert completion.usage.prompt_tokens > 0


def test_streamed_chat_has_no_tier_in_any_chunk(ollama: RunningSim) -> None:
    body = {
        "model": "llama3.2",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with ollama.http() as http, http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_no_openai_headers(response.headers)
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert all("service_tier" not in chunk for chunk in chunks)
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"fp_ollama"}
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"]
    )
    assert text
    assert chunks[-1]["usage"]["completion_tokens"] == 16
    # The official client reads the same stream.
    stream = ollama.client().chat.completions.create(
        model="llama3.2", messages=MESSAGES, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_embeddings_have_usage_and_no_rate_limit_headers(ollama: RunningSim) -> None:
    raw = ollama.client(strict=False).embeddings.with_raw_response.create(
        model="nomic-embed-text", input=["spool", "printer"], encoding_format="float"
    )
    assert_no_openai_headers(raw.headers)
    answer = raw.parse()
    assert [len(item.embedding) for item in answer.data] == [768, 768]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0


def test_a_service_tier_in_the_request_is_ignored(ollama: RunningSim) -> None:
    response = post(
        ollama, CHAT, {"model": "llama3.2", "messages": MESSAGES, "service_tier": "flex"}
    )
    assert response.status_code == 200
    assert "service_tier" not in response.json()


def test_responses_have_no_tier_either(ollama: RunningSim) -> None:
    response = post(
        ollama, "/v1/responses", {"model": "llama3.2", "input": "hi", "service_tier": "priority"}
    )
    assert response.status_code == 200
    body = response.json()
    assert "service_tier" not in body
    assert body["status"] == "completed"
    assert body["usage"]["output_tokens"] == 16


def test_unknown_model_is_ollamas_native_404(ollama: RunningSim) -> None:
    response = post(ollama, CHAT, {"model": "mistral", "messages": MESSAGES})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": 'model "mistral" not found, try pulling it first'}
    # The official client raises its usual class, but cannot read a message out of a body
    # that is not OpenAI's shape: the Ollama plugin rewrites such bodies for the daemon.
    with pytest.raises(openai.NotFoundError) as caught:
        ollama.client().embeddings.create(model="all-minilm", input="x")
    assert caught.value.body == 'model "all-minilm" not found, try pulling it first'


def test_a_model_may_be_named_with_its_latest_tag(ollama: RunningSim) -> None:
    response = post(ollama, CHAT, {"model": "llama3.2:latest", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.json()["model"] == "llama3.2:latest"
    assert ollama.stats()["requests"]["by_model"] == {"llama3.2:latest": 1}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file-abc/content"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/batch_abc"),
        ("GET", "/v1/nowhere"),
    ],
)
def test_no_files_or_batches_plain_text_404(ollama: RunningSim, method: str, path: str) -> None:
    with ollama.http() as http:
        response = http.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "404 page not found"


def test_api_tags_and_version(ollama: RunningSim) -> None:
    with ollama.http() as http:
        tags = http.get("/api/tags").json()
        version = http.get("/api/version").json()
    names = [model["name"] for model in tags["models"]]
    assert names == ["llama3.2:latest", "nomic-embed-text:latest"]
    for model in tags["models"]:
        assert model["model"] == model["name"]
        assert len(model["digest"]) == 64
        assert model["details"]["format"] == "gguf"
    assert isinstance(version["version"], str)
    assert version["version"].count(".") == 2


def test_model_list_is_openai_shaped(ollama: RunningSim) -> None:
    models = [model.id for model in ollama.client().models.list()]
    assert models == list(OLLAMA_MODELS)


@pytest.mark.parametrize(
    ("rule", "status", "message"),
    [
        ({"kind": "status", "status": 503}, 503, BUSY),
        ({"kind": "status", "status": 500}, 500, None),
        ({"kind": "status", "status": 500, "message": "CUDA out of memory"}, 500,
         "CUDA out of memory"),
    ],
)  # fmt: skip
def test_faults_answer_native_error_bodies(
    ollama: RunningSim, rule: dict[str, Any], status: int, message: str | None
) -> None:
    ollama.set_faults({**rule, "count": 1, "path": CHAT})
    response = post(ollama, CHAT, {"model": "llama3.2", "messages": MESSAGES})
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]
    if message is not None:
        assert body["error"] == message
    assert_no_openai_headers(response.headers)
    # The rule is spent; the stats and faults control routes work as in the OpenAI flavor.
    assert post(ollama, CHAT, {"model": "llama3.2", "messages": MESSAGES}).status_code == 200
    stats = ollama.stats()
    assert stats["requests"]["by_status"] == {str(status): 1, "200": 1}
    assert stats["faults"]["by_kind"] == {"status": 1}


def test_flavor_from_the_command_line(tmp_path: Any) -> None:
    running = launch(tmp_path, None, "--flavor", "ollama")
    try:
        with running.http() as http:
            tags = http.get("/api/tags").json()
            files = http.get("/v1/files")
        assert [model["name"] for model in tags["models"]] == [
            "llama3.2:latest",
            "nomic-embed-text:latest",
        ]
        assert files.status_code == 404
    finally:
        assert running.stop() == 0


def test_openai_flavor_has_no_ollama_routes(sim: RunningSim) -> None:
    with sim.http() as http:
        response = http.get("/api/tags")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /api/tags)"


def test_bad_flavor_exits_2_naming_the_key(
    tmp_path: Any, run_sim: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sim]\nflavor = "vllm"\n')
    result = run_sim("--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert "sim.flavor" in result.stderr
    assert run_sim("--port", "0", "--flavor", "vllm").returncode == 2


def test_config_models_follow_the_flavor_unless_configured() -> None:
    assert SimConfig().flavor == "openai"
    assert SimConfig.from_table({}).models == DEFAULT_MODELS
    ollama = SimConfig.from_table({"flavor": "ollama"})
    assert ollama.models == OLLAMA_MODELS
    assert SimConfig.from_table({"flavor": "ollama", "models": ["qwen3"]}).models == ("qwen3",)
    text = tomli_w.dumps({"sim": ollama.to_table()})
    assert SimConfig.from_table(tomllib.loads(text)["sim"]) == ollama
    with pytest.raises(ConfigError) as caught:
        SimConfig.from_table({"flavor": 3})
    assert caught.value.key == "sim.flavor"
