"""Which requests the response cache serves, and the key that names an answer.

A request is served from the cache (and shares an identical call in flight) when its rules say
so: by default only deterministic requests are (embeddings; chat or responses with
``temperature: 0`` or a ``seed``), because a sampled answer served twice is not what its caller
asked for. ``[cache] enabled``, ``[operations.NAME] cache`` (auto, on, off) and the request's
``x-llmspool-cache: on|off|auto`` header decide, in that order of power: the operator's "off"
wins over a request's "on".

The key is a 16-byte BLAKE2b digest of the scope (the calling user, or "shared" for an operation
configured so), the endpoint, the provider, the model, whether the answer is streamed, and the
body as canonical JSON (sorted keys) without the fields that do not change the answer. Sampling
parameters are compared as floats, so ``"temperature": 0`` and ``0.0`` are one request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import CacheConfig, OperationConfig
from llmspool.core.errors import InvalidRequest

HEADER = "x-llmspool-cache"
# Fields that say how to deliver or label an answer, not what it says.
IGNORED_FIELDS = frozenset({
    "stream", "stream_options", "service_tier", "user", "metadata", "store",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
})
_FLOAT_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_HEADER_VALUES = ("on", "off", "auto")


@dataclass(frozen=True, slots=True)
class CachePlan:
    """A request the cache may answer: its ``key``, how long its answer is kept, its scope,
    and whether near-duplicate matching is on for it."""

    key: bytes
    ttl: float
    scope: str
    similar: bool = False


class CacheRules:
    """Decides, per request, whether the cache takes part and under which key."""

    def __init__(self, config: CacheConfig, operations: Mapping[str, OperationConfig]) -> None:
        self._config = config
        self._operations = operations

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def plan(
        self,
        endpoint: Endpoint,
        provider: str,
        model: str,
        document: Mapping[str, Any],
        *,
        header: str | None,
        operation: str | None,
        uid: int | None,
        stream: bool,
    ) -> CachePlan | None:
        """The cache plan of a request, or None when the cache leaves it alone.

        Raises ``InvalidRequest`` for an ``x-llmspool-cache`` value it does not know.
        """
        asked = _header_value(header)
        if not self._config.enabled or asked == "off":
            return None
        settings = self._operations.get(operation) if operation is not None else None
        mode = settings.cache if settings is not None else "auto"
        if mode == "off":
            return None
        if asked != "on" and mode != "on" and not is_deterministic(endpoint, document):
            return None
        shared = settings is not None and settings.cache_shared
        scope = "shared" if shared else f"uid:{uid if uid is not None else '-'}"
        ttl = settings.cache_ttl if settings is not None and settings.cache_ttl is not None \
            else self._config.ttl
        return CachePlan(
            cache_key(scope, endpoint, provider, model, document, stream=stream),
            ttl, scope, similar=settings is not None and settings.similar,
        )


def is_deterministic(endpoint: Endpoint, document: Mapping[str, Any]) -> bool:
    """Whether the same request should get the same answer: embeddings always; otherwise a
    temperature of 0, or a seed."""
    if endpoint is Endpoint.EMBEDDINGS:
        return True
    temperature = document.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool) \
            and temperature == 0:
        return True
    seed = document.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def cache_key(
    scope: str, endpoint: Endpoint, provider: str, model: str, document: Mapping[str, Any],
    *, stream: bool,
) -> bytes:
    """The 16-byte digest naming the answer to this request in this scope."""
    canonical: dict[str, Any] = {}
    for name, value in document.items():
        if name in IGNORED_FIELDS:
            continue
        as_float = name in _FLOAT_FIELDS and isinstance(value, int) \
            and not isinstance(value, bool)
        canonical[name] = float(value) if as_float else value
    canonical["model"] = model
    digest = hashlib.blake2b(digest_size=16)
    for part in (scope, endpoint.value, provider, "stream" if stream else "whole"):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return digest.digest()


def _header_value(header: str | None) -> str:
    if header is None:
        return "auto"
    value = header.strip().lower()
    if value not in _HEADER_VALUES:
        raise InvalidRequest(
            f"{HEADER}: expected on, off or auto, got {header!r}", param=HEADER,
            code="invalid_cache_header",
        )
    return value
