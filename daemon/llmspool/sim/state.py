"""All of one simulator's state, built from its configuration.

``SimState`` holds what a running simulator keeps (stats, request log, faults, flex spells,
rate limits, counters, files, batches, and the waiter that pauses requests); the app
(``app.SimApp``) is one, and every endpoint reaches it through its request's ``Exchange``.
"""

from __future__ import annotations

from typing import Any

from llmspool.sim.answer import IdMaker, Makers
from llmspool.sim.anthropic import AnthropicFlavor
from llmspool.sim.anthropic_batches import MessageBatchRegistry
from llmspool.sim.asgi import Waiter
from llmspool.sim.batches import BatchRegistry
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.config import SimConfig
from llmspool.sim.faults import FaultInjector
from llmspool.sim.files import FileStore
from llmspool.sim.flavor import Flavor
from llmspool.sim.flex import FlexCapacity, FlexPacing, flex_models
from llmspool.sim.ollama import OllamaFlavor
from llmspool.sim.ratelimit import Limits, RateLimiter
from llmspool.sim.request_log import RequestLog
from llmspool.sim.speed import real
from llmspool.sim.stats import SimStats
from llmspool.sim.text import TextGenerator
from llmspool.sim.vectors import VectorMaker


class SimState:
    """The simulator's state: what it serves, counts, and has been told at run time."""

    def __init__(self, config: SimConfig) -> None:
        """Raises ``ConfigError`` (key ``sim.pricing_file``) if the price table cannot load."""
        self.config = config
        self.flavor = _flavor(config)
        self.makers = Makers(
            catalog=ModelCatalog(config.models),
            text=TextGenerator(),
            vectors=VectorMaker(semantic=config.semantic_embeddings),
            ids=IdMaker(),
            default_output_tokens=config.output_tokens,
            flex_models=flex_models(config.pricing_file, config.models),
        )
        for model in self.makers.catalog.embedding_models():
            self.makers.vectors.warm(self.makers.catalog.embedding_dimensions(model))
        self.faults = FaultInjector(config.faults, seed=config.seed)
        self.stats = SimStats()
        self.request_log = RequestLog(config.request_log_size)
        self.flex = FlexCapacity.from_config(config)
        self.flex_pacing = FlexPacing.from_config(config)
        self.configured_limits = Limits(
            requests=config.ratelimit_requests,
            tokens=config.ratelimit_tokens,
            enforce=config.enforce_ratelimits,
        )
        self.ratelimit = RateLimiter(self.configured_limits)
        self.files = FileStore()
        batch_options: dict[str, Any] = {
            "files": self.files,
            "makers": self.makers,
            "stats": self.stats,
            "log": self.request_log,
            "settings": config.batch,
            "seed": config.seed,
            "speed": config.speed,
        }
        self.message_batches: MessageBatchRegistry | None = None
        if isinstance(self.flavor, AnthropicFlavor):
            self.message_batches = MessageBatchRegistry(
                messages=self.flavor.messages, **batch_options
            )
        self.batches: BatchRegistry = self.message_batches or BatchRegistry(**batch_options)
        self.waiter = Waiter()

    def stop(self) -> None:
        """The server is stopping: requests waiting (hung, slow, paced) drop their connections
        now instead of being cancelled mid-wait."""
        self.waiter.stop()

    def real(self, seconds: float) -> float:
        """How long ``seconds`` of rehearsal time take at the sim's speed."""
        return real(seconds, self.config.speed)


def _flavor(config: SimConfig) -> Flavor:
    """The flavor ``[sim] flavor`` names."""
    if config.flavor == "ollama":
        return OllamaFlavor(config.models)
    if config.flavor == "anthropic":
        return AnthropicFlavor(config.models, speed=config.speed)
    return Flavor()
