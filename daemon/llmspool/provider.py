"""What a provider plugin implements: the ``Provider`` protocol and the objects it exchanges.

A provider forwards one request to its upstream API and hands back the raw answer; it does
not parse bodies, retry, or count money (the daemon does, the same way for every provider).
It maps its HTTP client's exceptions to ``llmspool.errors`` at its boundary:
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

from llmspool.batches.remote import RemoteBatch
from llmspool.calls import Endpoint, Tier
from llmspool.config import ConfigKey, ProviderConfig


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


@runtime_checkable
class BatchProvider(Provider, Protocol):
    """A provider that also offers a Batch API (files and batches, as OpenAI's).

    Every method raises ``UpstreamError`` for an HTTP error answer, ``UpstreamUnreachable`` when
    there is no answer, and ``BadUpstreamAnswer`` for an answer it cannot read; batch objects
    are parsed with ``RemoteBatch.from_json``. The daemon records its intent before each call
    and can find what a call did after a crash with the two ``find_*`` methods.
    """

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        """Upload the JSONL file at ``path`` as ``filename`` with ``purpose=batch``, streaming it
        from disk; returns the file id."""
        ...

    async def find_batch_file(self, filename: str) -> str | None:
        """The id of an uploaded ``purpose=batch`` file named ``filename`` (None: no such file),
        looking through every page of the file list."""
        ...

    async def create_batch(
        self, input_file_id: str, endpoint: Endpoint, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        """Create a batch with ``completion_window`` 24h."""
        ...

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch: ...

    async def cancel_batch(self, batch_id: str) -> RemoteBatch: ...

    async def find_batch(self, key: str, value: str, created_after: float) -> RemoteBatch | None:
        """The newest batch whose ``metadata[key] == value``, looking through the batch list
        (newest first, every page) down to batches created before ``created_after``."""
        ...

    async def download_file(self, file_id: str, destination: Path) -> int:
        """Stream the file's content to ``destination`` (written to a temporary name, then
        renamed, so ``destination`` is whole or absent); returns the bytes written."""
        ...

    async def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file (a 404 is not an error: it is gone either way)."""
        ...


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


_BATCH_METHODS = tuple(name for name, value in vars(BatchProvider).items()
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
