"""The models the simulator serves: which exist, which embed, and the ``/v1/models`` answers.

The listing bodies are encoded once, since they never change while the simulator runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

# A fixed creation time (2024-01-01) keeps answers byte-identical from run to run.
_MODEL_CREATED = 1704067200

_EMBEDDING_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "nomic-embed-text": 768,  # Ollama's usual embedding model
}
_DEFAULT_EMBEDDING_DIMENSIONS = 1536
# Models whose dimensions a request may not change, as with OpenAI.
_FIXED_DIMENSIONS = frozenset({"text-embedding-ada-002"})


class ModelCatalog:
    """The configured model ids and what each can do."""

    def __init__(self, models: Iterable[str]) -> None:
        self.models: tuple[str, ...] = tuple(models)
        self._known = frozenset(self.models)
        self.list_body = orjson.dumps(
            {"object": "list", "data": [_model_object(model) for model in self.models]}
        )
        self._retrieve_bodies = {model: orjson.dumps(_model_object(model)) for model in self.models}

    def __contains__(self, model: object) -> bool:
        return model in self._known

    def retrieve_body(self, model: str) -> bytes | None:
        """The ``GET /v1/models/{model}`` body, or ``None`` for an unknown model."""
        return self._retrieve_bodies.get(model)

    @staticmethod
    def is_embedding(model: str) -> bool:
        return "embed" in model

    @staticmethod
    def embedding_dimensions(model: str) -> int:
        """Dimensions of ``model``'s vectors when the request does not ask for fewer."""
        return _EMBEDDING_DIMENSIONS.get(model, _DEFAULT_EMBEDDING_DIMENSIONS)

    @staticmethod
    def dimensions_fixed(model: str) -> bool:
        return model in _FIXED_DIMENSIONS

    def embedding_models(self) -> list[str]:
        return [model for model in self.models if self.is_embedding(model)]


def _model_object(model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}
