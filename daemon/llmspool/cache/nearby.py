"""Near-duplicate matching, opt-in per operation (``[operations.NAME] similar = true``).

A request that misses the exact cache is embedded (``[cache] similar_model``, through the
request queue like any call, so it is admitted, rate limited, retried and billed); among the
requests of the same shape (``similar.shape_of``: only the words may differ) it then shares
the call in flight whose embedding is at least ``similar_dedup_threshold`` alike (0.95), or is
answered from the cached answer at least ``similar_cache_threshold`` alike (0.85). Otherwise it
goes upstream, and its answer is cached with its embedding.

The embedding calls are overhead of the cache: the ledger records each with the saving source
``cache`` and no saving of its own, so its cost is taken off the cache's savings (reports show
savings net of them).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from dataclasses import dataclass

import anyio
import numpy as np
import orjson

from llmspool.cache.similar import SimilarityIndex, decode_embedding, shape_of, text_of
from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import CacheConfig
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.messages import Answer, Call, Reply

log = logging.getLogger(__name__)

MAX_TEXT = 24_000  # characters embedded (about 6,000 tokens, within every embedding model)
MAX_FLYING = 10_000


@dataclass(frozen=True, slots=True)
class Probe:
    """What near-duplicate matching needs of a request: its words and its shape's group."""

    text: str
    group: bytes


class NearDuplicates:
    """The embeddings of cached answers and of calls in flight, and how to get a new one."""

    def __init__(self, config: CacheConfig) -> None:
        self._config = config
        self.cached = SimilarityIndex(max(1, config.max_entries))
        self._flying = SimilarityIndex(MAX_FLYING)
        self._flight_numbers = itertools.count(1)
        self.embedding_calls = 0
        self.embedding_failures = 0

    def probe(self, call: Call) -> Probe | None:
        """The text and group of ``call`` (None: nothing to match by wording)."""
        plan = call.cache
        if plan is None or not plan.similar:
            return None
        try:
            document = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(document, dict):
            return None
        text = text_of(call.endpoint.value, document)
        if not text:
            return None
        digest = hashlib.blake2b(digest_size=16)
        for part in (plan.scope, call.endpoint.value, call.provider, call.model,
                     "stream" if call.stream else "whole"):
            digest.update(part.encode() + b"\x00")
        digest.update(shape_of(call.endpoint.value, document))
        return Probe(text[:MAX_TEXT], digest.digest())

    async def embed(self, call: Call, text: str,
                    queue: MemorySendStream[Call]) -> bytes | None:
        """The embedding of ``text`` as little-endian float32, asked through ``queue`` on
        ``call``'s behalf (its caller, operation and session are billed); None if it could
        not be had."""
        replies_in, replies_out = create_memory_stream[Reply](1)
        model = self._config.similar_model
        request = Call(
            request_id=f"{call.request_id}.similar",
            endpoint=Endpoint.EMBEDDINGS,
            provider=call.provider,
            model=model,
            body=orjson.dumps({"model": model, "input": text, "encoding_format": "base64"}),
            stream=False,
            policy=call.policy,
            caller=call.caller,
            operation=call.operation,
            received_at=time.time(),
            trace=call.trace,
            reply=replies_in,
            session=call.session,
            overhead_of="cache",
        )
        self.embedding_calls += 1
        with replies_out:
            try:
                await queue.send(request)
                reply = await replies_out.receive()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                replies_in.close()
                return None
        vector = _vector_of(reply)
        if vector is None:
            self.embedding_failures += 1
            log.warning("near-duplicate matching: no embedding from %s %s (%s); the request "
                        "is matched exactly only", call.provider, model, _why(reply))
        return vector

    def flight_near(self, group: bytes, vector: bytes) -> int | None:
        """The number of the call in flight at least the dedup threshold alike, if any."""
        found = self._flying.best(group, vector)
        if found is None or found[1] < self._config.similar_dedup_threshold:
            return None
        return found[0]

    def entry_near(self, group: bytes, vector: bytes) -> tuple[int, float] | None:
        """The cached entry at least the cache threshold alike, and how alike, if any."""
        found = self.cached.best(group, vector)
        if found is None or found[1] < self._config.similar_cache_threshold:
            return None
        return found

    def flying(self, group: bytes, vector: bytes) -> int:
        """Remember a call in flight; returns its number (``landed`` forgets it)."""
        number = next(self._flight_numbers)
        self._flying.add(group, number, vector)
        return number

    def landed(self, number: int) -> None:
        self._flying.remove(number)


def _vector_of(reply: Reply) -> bytes | None:
    if not isinstance(reply, Answer) or reply.status != 200:
        return None
    try:
        value = reply.document["data"][0]["embedding"]
        decoded = decode_embedding(value)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if isinstance(decoded, bytes):
        return decoded
    return np.asarray(decoded, dtype="<f4").tobytes()


def _why(reply: Reply) -> str:
    error = getattr(reply, "error", None)
    if error is not None:
        return str(error.message)
    return f"an answer without a usable embedding ({type(reply).__name__})"
