"""What a provider plugin implements: the ``Provider`` protocol and the objects it exchanges.

A provider forwards one request to its upstream API and hands back the raw answer; it does
not parse bodies, retry, or count money (the daemon does, the same way for every provider).
It maps its HTTP client's exceptions to ``llmspool.core.errors`` at its boundary:
``UpstreamUnreachable`` for no answer (status 504 and code ``upstream_timeout`` for a timeout).

What a provider class can do is read from the class, for ``llmspool plugins``: the
``BatchProvider`` methods make it a batch provider, and it may say what else it serves with
class attributes (``provider_capabilities`` reads them; each has a default):

- ``endpoints``: the ``Endpoint`` values it forwards (all of them);
- ``service_tiers``: the ``Tier`` values it can ask its upstream for (``Tier.STANDARD``);
- ``streaming``: whether it relays streamed answers (True).

A factory may be ``LazyFactory("package.module:Class")``: the class is imported when the
first provider of its kind is built, so loading plugins to read their config keys (every
``llmspool`` command that reads the config) does not import their HTTP clients.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from llmspool.core.batch_lines import BatchFiles
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.config.values import ConfigKey
from llmspool.core.remote_batch import RemoteBatch


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to forward: ``body`` is the JSON to send as it is.

    ``timeout`` is the time the daemon allows the call; the daemon enforces it itself with a
    cancel scope (so its message can name the limit), so a plugin needs only its connect
    timeout and may use ``timeout`` as a backstop.
    """

    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool
    tier: Tier
    timeout: float
    # The daemon's id of the call (its ledger entry's request id). A plugin sends it upstream
    # where the API takes a client request id (OpenAI: ``X-Client-Request-Id``), so a call can
    # be matched to the provider's own records, and the simulator's, after a crash.
    request_id: str | None = None
    # When the answer is due (epoch seconds; None: a call without a deadline). The daemon has
    # already chosen the tier and the time limit from it; a plugin may use it too, e.g. to
    # pick a queue or a priority its API offers.
    deadline_at: float | None = None


class UpstreamResponse(Protocol):
    """An upstream answer, open until the context that produced it exits."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers, names lower-cased."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of any size."""
        ...


@runtime_checkable
class Provider(Protocol):
    """One configured upstream (``[providers.NAME]``), created by its plugin's factory.

    The daemon enters it as an async context manager for its whole life: that is where a
    provider opens and closes its pooled HTTP clients.
    """

    name: str

    async def __aenter__(self) -> Provider: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def send(self, request: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``request``; the response stays readable inside the context."""
        ...

    async def list_models(self) -> list[str]:
        """Model ids the upstream serves (a control-plane call)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchCapabilities:
    """What a provider's Batch API can take, read by the batch submitter and ``llmspool plugins``.

    The submitter cuts batches within ``max_lines``, ``max_bytes`` (of the daemon's input file)
    and ``max_embedding_inputs`` (inputs of embeddings requests), each also capped by
    ``[batch]`` config. ``uploads_input``: the input goes up as a file before the batch is
    created (OpenAI), so the submitter records the upload as a step of its own; otherwise the
    plugin sends the requests with the create call (Anthropic). ``finds_by_metadata``: a batch
    can be found again by a metadata field carrying the intent (OpenAI); otherwise the intent
    travels in each request's id and ``find_batch`` lists and matches (said by ``llmspool
    plugins``; the submitter calls ``find_batch`` either way).
    """

    max_lines: int
    max_bytes: int
    max_embedding_inputs: int | None = None
    uploads_input: bool = True
    finds_by_metadata: bool = True
    endpoints: frozenset[Endpoint] = frozenset(Endpoint)


@dataclass(frozen=True, slots=True)
class BatchSubmission:
    """One batch to create: the daemon's ``intent`` id (unique, at most 24 characters of
    ``[0-9a-f-]``), what it is for, and its input in the daemon's format
    (``llmspool.core.batch_lines``) at ``input_path``; ``input_file_id`` is the uploaded file's id
    when the provider ``uploads_input``. ``submitted_after`` is a time before any attempt to
    create it (for ``find_batch`` to list no further back); ``known`` holds the ids of the
    provider's batches the daemon already has on record since then (filled when the daemon
    looks for a batch after a crash), which ``find_batch`` must not take for this one."""

    intent: str
    endpoint: Endpoint
    model: str
    lines: int
    input_path: Path
    input_file_id: str | None
    submitted_after: float
    known: frozenset[str] = frozenset()


@runtime_checkable
class BatchApi(Protocol):
    """The batch half of a ``BatchProvider``: what a provider offers beyond ``Provider`` to be
    a batch tier.

    Batch work is the daemon's lines in and the daemon's result lines out
    (``llmspool.core.batch_lines``); the batch itself is a ``RemoteBatch``. Every method raises
    ``UpstreamError`` for an HTTP error answer, ``UpstreamUnreachable`` when there is no answer,
    and ``BadUpstreamAnswer`` for an answer it cannot read. The daemon records its intent
    before each call and, after a crash, finds what a call did with the ``find_*`` methods, so
    that no batch is ever created twice.
    """

    batch_capabilities: BatchCapabilities

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        """Upload the input file at ``path`` as ``filename``, streaming it from disk; returns
        its id. Called only when ``batch_capabilities.uploads_input``."""
        ...

    async def find_batch_file(self, filename: str) -> str | None:
        """The id of an uploaded input file named ``filename`` (None: no such file). Called
        only when ``batch_capabilities.uploads_input``."""
        ...

    async def create_batch(self, submission: BatchSubmission) -> RemoteBatch:
        """Create the batch (to finish within 24 hours), carrying ``submission.intent`` so that
        ``find_batch`` can recognise it."""
        ...

    async def find_batch(self, submission: BatchSubmission) -> RemoteBatch | None:
        """The batch ``create_batch(submission)`` made, if an earlier attempt (cut short by a
        crash or a lost answer) made one; None when there is none."""
        ...

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch: ...

    async def cancel_batch(self, batch_id: str) -> RemoteBatch: ...

    async def download_results(self, batch: RemoteBatch, files: BatchFiles) -> int:
        """Write a finished batch's results as the daemon's result lines to ``files.output``
        (and, for a provider that keeps failures apart, ``files.errors``), each file whole or
        absent; a file already present is not fetched again. Returns the bytes or lines
        written (0: nothing was fetched)."""
        ...

    async def delete_batch_files(self, batch: RemoteBatch) -> None:
        """Remove what a finished batch left upstream (its files; a 404 is not an error).
        Housekeeping: called only when ``[batch] delete_files`` is set."""
        ...


@runtime_checkable
class BatchProvider(Provider, BatchApi, Protocol):
    """A provider that also offers a Batch API (``BatchApi``): the daemon's batch tier for
    the models it serves."""


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What a factory gets: the provider's name, its config table and its resolved API key."""

    name: str
    config: ProviderConfig
    api_key: str

    def option(self, key: ConfigKey) -> Any:
        """The value of a key the plugin declared: the file's (or the environment's), else the
        key's default, converted to the key's type."""
        if key.name in self.config.options:
            return self.config.options[key.name]
        return key.default_value


ProviderFactory = Callable[[ProviderSettings], Provider]


@dataclass(frozen=True, slots=True)
class LazyFactory:
    """A provider class named ``"package.module:Class"``, imported when first called."""

    target: str

    def load(self) -> Callable[[ProviderSettings], Provider]:
        """The provider class; raises ``ImportError`` or ``AttributeError`` if it is not there."""
        module, _, name = self.target.partition(":")
        return cast(Callable[[ProviderSettings], Provider],
                    getattr(importlib.import_module(module), name))

    def __call__(self, settings: ProviderSettings) -> Provider:
        return self.load()(settings)


_BATCH_METHODS = tuple(name for name, value in vars(BatchApi).items()
                       if callable(value) and not name.startswith("_"))
_ALL_TIERS = (Tier.STANDARD, Tier.FLEX, Tier.PRIORITY)


def provider_capabilities(factory: ProviderFactory) -> tuple[str, ...] | None:
    """What the providers ``factory`` builds can do: the endpoints they forward (``chat``,
    ``responses``, ``embeddings``), ``streaming``, the tiers beyond standard they can ask for
    (``flex``, ``priority``) and ``batch`` (the Batch API). None when ``factory`` is a plain
    function, whose providers cannot be known without building one."""
    cls = factory.load() if isinstance(factory, LazyFactory) else factory
    if not isinstance(cls, type):
        return None
    endpoints = frozenset(getattr(cls, "endpoints", frozenset(Endpoint)))
    tiers = frozenset(getattr(cls, "service_tiers", frozenset({Tier.STANDARD})))
    found = [endpoint.operation_name for endpoint in Endpoint if endpoint in endpoints]
    if getattr(cls, "streaming", True):
        found.append("streaming")
    found.extend(tier.value for tier in _ALL_TIERS if tier in tiers and tier is not Tier.STANDARD)
    if all(callable(getattr(cls, name, None)) for name in _BATCH_METHODS):
        found.append("batch")
    return tuple(found)


def batch_capabilities_of(factory: ProviderFactory) -> BatchCapabilities | None:
    """The Batch API limits of the providers ``factory`` builds (None: no batch tier, or a plain
    function whose providers cannot be known without building one)."""
    cls = factory.load() if isinstance(factory, LazyFactory) else factory
    found = getattr(cls, "batch_capabilities", None) if isinstance(cls, type) else None
    return found if isinstance(found, BatchCapabilities) else None


class DelegatedBatches:
    """The ``BatchProvider`` methods of a provider class whose Batch API lives in an object
    of its own (a plugin's ``batches`` module), built when the provider is entered: the
    provider inherits this and implements ``_batch_api()``. Both bundled batch providers
    do."""

    def _batch_api(self) -> BatchApi:
        """The object the batch methods go to; raises ``RuntimeError`` outside the provider's
        ``async with``."""
        raise NotImplementedError

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        return await self._batch_api().upload_batch_file(path, filename)

    async def find_batch_file(self, filename: str) -> str | None:
        return await self._batch_api().find_batch_file(filename)

    async def create_batch(self, submission: BatchSubmission) -> RemoteBatch:
        return await self._batch_api().create_batch(submission)

    async def find_batch(self, submission: BatchSubmission) -> RemoteBatch | None:
        return await self._batch_api().find_batch(submission)

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch:
        return await self._batch_api().retrieve_batch(batch_id)

    async def cancel_batch(self, batch_id: str) -> RemoteBatch:
        return await self._batch_api().cancel_batch(batch_id)

    async def download_results(self, batch: RemoteBatch, files: BatchFiles) -> int:
        return await self._batch_api().download_results(batch, files)

    async def delete_batch_files(self, batch: RemoteBatch) -> None:
        await self._batch_api().delete_batch_files(batch)
