"""``POST /v1/embeddings``: from request body to a ``CreateEmbeddingResponse``.

Input is a string, a list of strings, a token array, or a list of token arrays, as in the spec.
Each input's vector depends only on its text (or tokens) and the dimensions asked; in semantic
mode (``[sim] semantic_embeddings``), texts with words in common get similar vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.sim import validate
from llmspool.sim.answer import Makers
from llmspool.sim.text import count_tokens
from llmspool.sim.vectors import VectorKey, VectorMaker

MAX_INPUTS = 2048


@dataclass(slots=True)
class EmbeddingAnswer:
    """A validated embeddings request and the vectors it gets."""

    model: str
    keys: list[VectorKey]
    """Per input, what decides its vector (``VectorMaker.key_of_text``/``key_of_tokens``)."""
    dimensions: int
    base64: bool
    input_tokens: int
    vectors: VectorMaker

    # Embeddings have no tier, no stream and no output; the app treats every answer alike.
    tier: str | None = None
    stream: bool = False
    output_tokens: int = 0
    billed_output_tokens: int = 0

    def body(self) -> bytes:
        make = self.vectors.base64 if self.base64 else self.vectors.floats
        data = [
            {"object": "embedding", "index": index, "embedding": make(key, self.dimensions)}
            for index, key in enumerate(self.keys)
        ]
        return orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": self.input_tokens, "total_tokens": self.input_tokens},
            }
        )

    def events(self) -> Iterator[tuple[bytes, bool]]:
        raise NotImplementedError("embeddings are never streamed")


def parse_embedding_request(payload: dict[str, Any], makers: Makers) -> EmbeddingAnswer:
    """Validate an embeddings request; raise an OpenAI-shaped ``ApiError`` if it is wrong."""
    model = validate.model(payload, makers.catalog, embedding=True)
    raw = payload.get("input")
    if raw is None:
        raise validate.missing("input")
    keys: list[VectorKey] = []
    vectors = makers.vectors
    tokens = 0
    if isinstance(raw, str) or _is_token_array(raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_INPUTS:
        raise validate.invalid(
            "input",
            f"'input' must be a string, a token array, or a list of 1 to {MAX_INPUTS} of them.",
        )
    for index, item in enumerate(raw):
        if isinstance(item, str) and item:
            keys.append(vectors.key_of_text(item))
            tokens += count_tokens(item)
        elif _is_token_array(item):
            keys.append(vectors.key_of_tokens(item))
            tokens += len(item)
        else:
            raise validate.invalid(
                f"input[{index}]",
                f"Invalid 'input[{index}]': expected a non-empty string or token array.",
            )
    encoding = payload.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise validate.invalid(
            "encoding_format", "Invalid 'encoding_format': expected 'float' or 'base64'."
        )
    return EmbeddingAnswer(
        model=model,
        keys=keys,
        dimensions=_dimensions(payload, model, makers),
        base64=encoding == "base64",
        input_tokens=tokens,
        vectors=vectors,
    )


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(token, int) and not isinstance(token, bool) and 0 <= token < 2**31
            for token in value
        )
    )


def _dimensions(payload: dict[str, Any], model: str, makers: Makers) -> int:
    full = makers.catalog.embedding_dimensions(model)
    asked = payload.get("dimensions")
    if asked is None:
        return full
    if makers.catalog.dimensions_fixed(model):
        raise validate.invalid("dimensions", f"The model `{model}` does not support 'dimensions'.")
    if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= full:
        raise validate.invalid(
            "dimensions", f"Invalid 'dimensions': expected an integer from 1 to {full}."
        )
    return asked
