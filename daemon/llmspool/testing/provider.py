"""A fake provider: OpenAI-shaped answers made in memory, and a Batch API that ends on cue.

For tests of a program that uses the daemon, and of the daemon itself where no upstream server
is wanted: no socket, no HTTP, no randomness. Register it with ``running_daemon``::

    upstream = FakeUpstream()
    with running_with_fake(tmp_path, upstream, "[operations.x]\n...") as daemon:
        ...  # upstream.requests: what reached the "upstream"; upstream.finish_batches()

(``running_with_fake`` is ``running_daemon`` with a config whose ``[providers.openai]`` is of
kind ``fake``, so OpenAI's prices apply; its socket and state live in the given directory.)

What it answers: chat completions (whole or streamed, with usage, and the ``service_tier`` the
call was sent on) and embeddings (floats or base64); ``fail_next`` makes the next calls fail
with an OpenAI-shaped error (a flex capacity 429, a 500, a 400…). Batches take their requests
with the create call and stay ``in_progress`` until ``finish_batches()``, until
``batch_turnaround`` seconds have passed on the upstream's clock (share a
``llmspool.testing.ManualClock`` with the daemon to make that instant), or until cancelled.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import orjson

from llmspool.core.batch_lines import CANCELLED, EXPIRED, BatchFiles, read_input_lines
from llmspool.core.batch_lines import ResultWriter as _ResultWriter
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.errors import UpstreamError
from llmspool.core.hookspecs import RegisterProvider, hookimpl
from llmspool.core.provider import (
    BatchCapabilities,
    BatchSubmission,
    ProviderSettings,
    UpstreamRequest,
)
from llmspool.core.remote_batch import RemoteBatch
from llmspool.testing.daemon import InProcessDaemon, load_config_with, running_daemon

KIND = "fake"
SERVICE_TIER_NAMES = {Tier.STANDARD: "default", Tier.FLEX: "flex", Tier.PRIORITY: "priority",
                      Tier.BATCH: "default"}
EMBEDDING_SIZE = 8


@dataclass(frozen=True, slots=True)
class Failure:
    """An error the fake answers instead of a call (see ``FakeUpstream.fail_next``)."""

    status: int
    code: str
    message: str
    tier: Tier | None
    headers: Mapping[str, str]


@dataclass
class FakeBatch:
    """A batch the fake holds: its requests, and what became of it."""

    id: str
    intent: str
    endpoint: Endpoint
    lines: list[tuple[str, bytes]]  # (custom_id, body)
    created_at: float
    status: str = "in_progress"
    outcome: dict[str, Any] = field(default_factory=dict)


class FakeUpstream:
    """What every fake provider built from it answers, and what reached it; shared between the
    test's thread and the daemon's (a lock guards it)."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK,
                 batch_turnaround: float | None = None) -> None:
        """``batch_turnaround``: seconds on ``clock`` after which a batch has ended by itself
        (None: only ``finish_batches`` ends one)."""
        self.clock = clock
        self.batch_turnaround = batch_turnaround
        self.requests: list[UpstreamRequest] = []
        self.batches: dict[str, FakeBatch] = {}
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def fail_next(self, status: int, code: str, message: str = "", *, times: int = 1,
                  tier: Tier | None = None, headers: Mapping[str, str] | None = None) -> None:
        """The next ``times`` calls (on ``tier``, or any) fail with this error; e.g. flex out of
        capacity: ``fail_next(429, "resource_unavailable", tier=Tier.FLEX)``."""
        failure = Failure(status, code, message or f"fake {status} {code}", tier,
                          dict(headers or {}))
        with self._lock:
            self._failures.extend([failure] * times)

    def finish_batches(self) -> int:
        """End every batch still running, every request answered; how many ended."""
        with self._lock:
            running = [b for b in self.batches.values() if b.status == "in_progress"]
            for batch in running:
                batch.status = "completed"
        return len(running)

    def answer(self, endpoint: Endpoint, body: Mapping[str, Any], tier: Tier) -> dict[str, Any]:
        """The answer to one request: override to answer differently."""
        model = str(body.get("model", ""))
        number = next(self._ids)
        if endpoint is Endpoint.EMBEDDINGS:
            return _embeddings(body, model)
        prompt = orjson.dumps(body.get("messages", body.get("input", "")))
        text = f"fake answer {number} from {model}"
        return {
            "id": f"chatcmpl-fake-{number}", "object": "chat.completion",
            "created": int(self.clock.now()), "model": model,
            "service_tier": SERVICE_TIER_NAMES[tier],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": _usage(len(prompt) // 4 + 1, len(text) // 4 + 1),
        }

    def _take_failure(self, tier: Tier) -> Failure | None:
        with self._lock:
            for index, failure in enumerate(self._failures):
                if failure.tier is None or failure.tier is tier:
                    return self._failures.pop(index)
        return None

    def _record(self, request: UpstreamRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _batch(self, batch_id: str) -> FakeBatch:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                raise UpstreamError(KIND, 404, orjson.dumps({"error": {
                    "message": f"no batch {batch_id!r}", "code": "not_found"}}))
            if batch.status == "in_progress" and self.batch_turnaround is not None and \
                    self.clock.now() >= batch.created_at + self.batch_turnaround:
                batch.status = "completed"
            return batch


class FakeAnswer:
    """An answer of the fake, read whole or in chunks."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str],
                 chunks: list[bytes] | None = None) -> None:
        self.status = status
        self.headers = headers
        self._body = body
        self._chunks = chunks if chunks is not None else [body]

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class FakeProvider:
    """One ``[providers.NAME]`` of kind ``fake``: a provider and a batch provider."""

    endpoints: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS})
    service_tiers: ClassVar[frozenset[Tier]] = frozenset({Tier.STANDARD, Tier.FLEX,
                                                          Tier.PRIORITY})
    batch_capabilities: ClassVar[BatchCapabilities] = BatchCapabilities(
        max_lines=50_000, max_bytes=200 * 1024 * 1024, uploads_input=False,
        endpoints=frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS}))

    def __init__(self, settings: ProviderSettings, upstream: FakeUpstream) -> None:
        self.name = settings.name
        self.upstream = upstream

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncIterator[FakeAnswer]:
        upstream = self.upstream
        upstream._record(request)
        failure = upstream._take_failure(request.tier)
        if failure is not None:
            error = {"error": {"message": failure.message, "type": "fake_error",
                               "code": failure.code, "param": None}}
            yield FakeAnswer(failure.status, orjson.dumps(error),
                             {"content-type": "application/json", **failure.headers})
            return
        body = orjson.loads(request.body)
        answer = upstream.answer(request.endpoint, body, request.tier)
        if request.stream:
            chunks = _stream_chunks(answer, bool((body.get("stream_options") or {})
                                                 .get("include_usage")))
            yield FakeAnswer(200, b"".join(chunks), {"content-type": "text/event-stream"},
                             chunks)
        else:
            yield FakeAnswer(200, orjson.dumps(answer), {"content-type": "application/json"})

    async def list_models(self) -> list[str]:
        return []

    # --- the Batch API --------------------------------------------------------------------

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        raise NotImplementedError("the fake takes a batch's requests with the create call")

    async def find_batch_file(self, filename: str) -> str | None:
        raise NotImplementedError("the fake takes a batch's requests with the create call")

    async def create_batch(self, submission: BatchSubmission) -> RemoteBatch:
        lines = [(line.custom_id, line.body) for line in read_input_lines(submission.input_path)]
        upstream = self.upstream
        with upstream._lock:
            batch = FakeBatch(f"batch_fake_{next(upstream._ids)}", submission.intent,
                              submission.endpoint, lines, upstream.clock.now())
            upstream.batches[batch.id] = batch
        return _remote(batch)

    async def find_batch(self, submission: BatchSubmission) -> RemoteBatch | None:
        with self.upstream._lock:
            found = [b for b in self.upstream.batches.values()
                     if b.intent == submission.intent and b.id not in submission.known]
        return _remote(found[0]) if found else None

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch:
        return _remote(self.upstream._batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> RemoteBatch:
        batch = self.upstream._batch(batch_id)
        if batch.status == "in_progress":
            batch.status = "cancelled"
        return _remote(batch)

    async def download_results(self, batch: RemoteBatch, files: BatchFiles) -> int:
        held = self.upstream._batch(batch.id)
        if files.output.exists():
            return 0
        with _ResultWriter(files.output) as out:
            for custom_id, raw in held.lines:
                if held.status == "completed":
                    body = orjson.loads(raw)
                    out.answered(custom_id, 200,
                                 self.upstream.answer(held.endpoint, body, Tier.BATCH))
                else:
                    code = CANCELLED if held.status == "cancelled" else EXPIRED
                    out.not_run(custom_id, code, f"the batch was {held.status}")
            return out.commit()

    async def delete_batch_files(self, batch: RemoteBatch) -> None:
        return None


def fake_provider_plugin(upstream: FakeUpstream) -> object:
    """A pluggy plugin registering the provider kind ``fake``, answering from ``upstream``."""

    class FakePlugin:
        @hookimpl
        def llmspool_register_providers(self, register: RegisterProvider) -> None:
            register(KIND, lambda settings: FakeProvider(settings, upstream))

    return FakePlugin()


FAKE_OPENAI = '[providers.openai]\nplugin = "fake"\n'
"""The config that makes the ``openai`` provider the fake (its models keep OpenAI's prices)."""


@contextmanager
def running_with_fake(directory: Path, upstream: FakeUpstream, config_toml: str = "", *,
                      plugins: Iterable[object] = (),
                      clock: Clock = SYSTEM_CLOCK) -> Iterator[InProcessDaemon]:
    """A daemon in this process whose ``openai`` provider answers from ``upstream``, with
    ``config_toml`` after ``FAKE_OPENAI`` in ``directory/llmspool.toml``, its socket
    (``d.sock``) and state (``state/``) in ``directory``; ``plugins`` are registered too."""
    path = directory / "llmspool.toml"
    path.write_text(FAKE_OPENAI + config_toml)
    environ = {"LLMSPOOL_SOCKET": str(directory / "d.sock"),
               "LLMSPOOL_STATE_DIR": str(directory / "state"), "OPENAI_API_KEY": "sk-test"}
    every = [fake_provider_plugin(upstream), *plugins]
    with running_daemon(load_config_with(every, path, environ=environ), environ=environ,
                        plugins=every, clock=clock) as running:
        yield running


def _remote(batch: FakeBatch) -> RemoteBatch:
    total = len(batch.lines)
    done = total if batch.status == "completed" else 0
    return RemoteBatch(batch.id, batch.status, batch.created_at, batch.endpoint.value,
                       total=total, completed=done, intent=batch.intent,
                       output_file_id=f"{batch.id}-output")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _embeddings(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        digest = hashlib.sha256(orjson.dumps(text)).digest()
        vector = [byte / 255.0 for byte in digest[:EMBEDDING_SIZE]]
        encoded: Any = base64.b64encode(struct.pack(f"<{EMBEDDING_SIZE}f", *vector)).decode() \
            if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(orjson.dumps(text)) // 4 + 1 for text in inputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _stream_chunks(answer: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A whole answer as server-sent events, as OpenAI streams one."""
    base = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
            "model": answer["model"], "service_tier": answer["service_tier"]}
    text = answer["choices"][0]["message"]["content"]
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": answer["usage"]})
    return [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]
