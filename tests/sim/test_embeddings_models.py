"""Embeddings (float and base64, dimensions, determinism) and the model listing."""

from __future__ import annotations

import base64
import math
import struct
from typing import TYPE_CHECKING

import openai
import pytest
from openai.types import CreateEmbeddingResponse, Model

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim


def norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def test_float_embeddings_are_unit_length_and_deterministic(sim: RunningSim) -> None:
    client = sim.client()
    texts = ["a spooler", "a deadline", "a spooler"]
    result = client.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )
    assert isinstance(result, CreateEmbeddingResponse)
    assert result.object == "list"
    assert result.model == "text-embedding-3-small"
    assert [item.index for item in result.data] == [0, 1, 2]
    vectors = [item.embedding for item in result.data]
    assert all(len(vector) == 1536 for vector in vectors)
    assert all(abs(norm(vector) - 1) < 1e-6 for vector in vectors)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    again = client.embeddings.create(
        model="text-embedding-3-small", input="a deadline", encoding_format="float"
    )
    assert again.data[0].embedding == vectors[1]
    expected_tokens = sum(max(1, math.ceil(len(text) / 4)) for text in texts)
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected_tokens


def test_large_model_defaults_to_3072_dimensions_and_dimensions_shrink_it(
    sim: RunningSim,
) -> None:
    client = sim.client()
    large = client.embeddings.create(
        model="text-embedding-3-large", input="x", encoding_format="float"
    )
    assert len(large.data[0].embedding) == 3072
    small = client.embeddings.create(
        model="text-embedding-3-large", input="x", dimensions=256, encoding_format="float"
    )
    assert len(small.data[0].embedding) == 256
    assert abs(norm(small.data[0].embedding) - 1) < 1e-6


def test_base64_is_little_endian_float32_of_the_same_vector(sim: RunningSim) -> None:
    client = sim.client()
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="same text", encoding_format="float"
    )
    with sim.http() as http:
        raw = http.post(
            "/v1/embeddings",
            json={
                "model": "text-embedding-3-small",
                "input": "same text",
                "encoding_format": "base64",
            },
        ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert len(decoded) == 1536
    assert max(abs(a - b) for a, b in zip(decoded, floats.data[0].embedding, strict=True)) < 1e-6
    # The SDK asks for base64 by default and decodes it itself: it must get the same vector.
    lenient = sim.client(strict=False)
    sdk_default = lenient.embeddings.create(model="text-embedding-3-small", input="same text")
    assert sdk_default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_token_array_inputs(sim: RunningSim) -> None:
    client = sim.client()
    result = client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert len(result.data) == 2
    assert result.usage.prompt_tokens == 5
    single = client.embeddings.create(
        model="text-embedding-3-small", input=[1, 2, 3], encoding_format="float"
    )
    assert single.data[0].embedding == result.data[0].embedding


SMALL = "text-embedding-3-small"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": SMALL}, "input"),
        ({"model": SMALL, "input": ""}, "input[0]"),
        ({"model": SMALL, "input": []}, "input"),
        ({"model": SMALL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": SMALL, "input": "x", "dimensions": 2000}, "dimensions"),
        ({"model": SMALL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "gpt-4o", "input": "x"}, "model"),
    ],
)
def test_bad_embedding_requests_are_400(
    sim: RunningSim, body: dict[str, object], param: str
) -> None:
    with sim.http() as http:
        response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_models_list_and_retrieve(sim: RunningSim) -> None:
    client = sim.client()
    models = list(client.models.list())
    ids = [model.id for model in models]
    assert "gpt-4o" in ids
    assert "text-embedding-3-large" in ids
    assert len(ids) == 12
    assert all(isinstance(model, Model) and model.object == "model" for model in models)
    model = client.models.retrieve("o3")
    assert model.id == "o3"
    assert model.owned_by
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-0")
    assert caught.value.code == "model_not_found"
