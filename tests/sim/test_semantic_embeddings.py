"""``[sim] semantic_embeddings``: texts with words in common get similar vectors (cosine about
the share of words in common), as a client of the simulator sees them; and without it, the
default stays as it was: the same text the same vector, different texts unrelated ones."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import openai
import pytest

from tests.sim.conftest import RunningSim, launch

if TYPE_CHECKING:
    from collections.abc import Callable

SMALL = "text-embedding-3-small"
SEMANTIC = "[sim]\nsemantic_embeddings = true\n"
FRANCE = "What is the capital of France?"
TEN_WORDS = "please list three quick ways to improve my morning running routine"
NINE_OF_TEN = "please list three quick ways to improve my evening running routine"
UNRELATED = "the quarterly invoice for cloud storage arrived late again"


@pytest.fixture(scope="module")
def semantic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSim]:
    running = launch(tmp_path_factory.mktemp("semantic"), SEMANTIC)
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr()


def cosine(first: list[float], second: list[float]) -> float:
    dot = math.fsum(a * b for a, b in zip(first, second, strict=True))
    return dot / (norm(first) * norm(second))


def norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def embed(sim: RunningSim, *texts: str, dimensions: int | None = None) -> list[list[float]]:
    result = sim.client().embeddings.create(
        model=SMALL,
        input=list(texts),
        encoding_format="float",
        dimensions=openai.omit if dimensions is None else dimensions,
    )
    return [item.embedding for item in result.data]


def embed_tokens(sim: RunningSim, *token_arrays: list[int]) -> list[list[float]]:
    result = sim.client().embeddings.create(
        model=SMALL, input=list(token_arrays), encoding_format="float"
    )
    return [item.embedding for item in result.data]


def test_the_same_words_in_another_case_and_punctuation_get_the_same_vector(
    semantic: RunningSim,
) -> None:
    asked, reworded = embed(semantic, FRANCE, "what is the capital of france")
    assert len(asked) == 1536
    assert abs(norm(asked) - 1) < 1e-6
    assert cosine(asked, reworded) > 0.999


def test_similarity_follows_the_share_of_words_in_common(semantic: RunningSim) -> None:
    ten, nine, unrelated = embed(semantic, TEN_WORDS, NINE_OF_TEN, UNRELATED)
    assert cosine(ten, nine) == pytest.approx(0.9, abs=0.05)
    assert abs(cosine(ten, unrelated)) < 0.1
    half = "please list three quick ways to fix a leaking kitchen tap"
    assert cosine(ten, embed(semantic, half)[0]) == pytest.approx(0.5, abs=0.1)


def test_token_arrays_are_compared_token_by_token(semantic: RunningSim) -> None:
    first, three_of_four, other = embed_tokens(
        semantic, [11, 22, 33, 44], [11, 22, 33, 55], [7, 8, 9]
    )
    assert cosine(first, three_of_four) == pytest.approx(0.75, abs=0.07)
    assert abs(cosine(first, other)) < 0.1


def test_dimensions_and_the_large_model(semantic: RunningSim) -> None:
    short, short_reworded = embed(semantic, TEN_WORDS, NINE_OF_TEN, dimensions=256)
    assert len(short) == 256
    assert abs(norm(short) - 1) < 1e-6
    assert cosine(short, short_reworded) == pytest.approx(0.9, abs=0.1)
    large = semantic.client().embeddings.create(
        model="text-embedding-3-large", input=[TEN_WORDS, NINE_OF_TEN], encoding_format="float"
    )
    first, second = (item.embedding for item in large.data)
    assert len(first) == 3072
    assert cosine(first, second) == pytest.approx(0.9, abs=0.05)


def test_base64_is_the_same_vector_as_floats(semantic: RunningSim) -> None:
    floats = embed(semantic, FRANCE)[0]
    with semantic.http() as http:
        raw = http.post(
            "/v1/embeddings", json={"model": SMALL, "input": FRANCE, "encoding_format": "base64"}
        ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert len(decoded) == 1536
    assert max(abs(a - b) for a, b in zip(decoded, floats, strict=True)) < 1e-6
    # The SDK asks for base64 by default and decodes it itself.
    sdk_default = semantic.client(strict=False).embeddings.create(model=SMALL, input=FRANCE)
    assert sdk_default.data[0].embedding == pytest.approx(floats, abs=1e-6)


def test_text_without_words_still_gets_a_unit_vector(semantic: RunningSim) -> None:
    marks, again = embed(semantic, "?!", "?!")
    assert abs(norm(marks) - 1) < 1e-6
    assert marks == again


def test_vectors_are_the_same_in_another_process(
    semantic: RunningSim, start_sim: Callable[..., RunningSim]
) -> None:
    other = start_sim(SEMANTIC)
    assert embed(other, TEN_WORDS, FRANCE) == embed(semantic, TEN_WORDS, FRANCE)
    assert embed_tokens(other, [1, 2]) == embed_tokens(semantic, [1, 2])


def test_default_mode_is_unchanged(sim: RunningSim) -> None:
    asked, again, reworded, ten, nine = embed(
        sim, FRANCE, FRANCE, "what is the capital of france", TEN_WORDS, NINE_OF_TEN
    )
    assert asked == again
    assert abs(norm(asked) - 1) < 1e-6
    # Without semantic mode similar texts are as unrelated as any others.
    assert abs(cosine(asked, reworded)) < 0.1
    assert abs(cosine(ten, nine)) < 0.1
    tokens, tokens_again, other_tokens = embed_tokens(
        sim, [11, 22, 33, 44], [11, 22, 33, 44], [11, 22, 33, 55]
    )
    assert tokens == tokens_again
    assert abs(cosine(tokens, other_tokens)) < 0.1
