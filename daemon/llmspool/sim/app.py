"""The simulator's ASGI app: what happens to each request, tying the other modules together.

For a generation request (chat, responses, embeddings) the order is: read and validate the
body (bad input → 400/404, never faulted; flex on a model without a flex price is bad input),
count it, refuse a flex request while flex capacity is out (429 ``resource_unavailable``,
not counted against the rate limits), charge it to its model's rate limits (enforcing them: a
429 ``rate_limit_exceeded`` if it does not fit; see ``ratelimit``), let the fault rules pick,
wait the configured latency (flex: its own), then answer whole or as a stream. Every answer
carries ``x-request-id`` and the six ``x-ratelimit-*`` headers (of the request's model, if it
has one). ``GET``/``POST /_sim/ratelimits`` read and change the limits.

Every generation served (the ones ``SimStats.served`` counts) is logged with the request's
``X-Client-Request-Id`` and the tokens billed when its answer ends, whole or cut, and so are
the answered lines of ended batches: ``GET /_sim/requests[?since=SEQ&limit=N]`` (see
``request_log``); ``POST /_sim/stats/reset`` empties it too.

Fault rules with a ``path`` also hit the other endpoints (files, batches, models): after
routing, before the endpoint runs (see ``faults``).

The Files and Batch APIs (``/v1/files``, ``/v1/batches``) keep files in memory and move
batches through their statuses by the clock (``batches``); ``GET``/``POST /_sim/batch`` read and
change the batch settings.

All state (stats, request log, faults, flex spells, counters, files, batches) lives in the
``SimApp`` that ``build_app`` returns.

``[sim] flavor`` picks the API impersonated: the hooks of a ``flavor.Flavor`` (OpenAI's), of
``ollama.OllamaFlavor`` or of ``anthropic.AnthropicFlavor`` decide the error bodies, the headers,
the routes that exist, and adapt each endpoint's parser. The Anthropic flavor brings its own
routes: ``/v1/messages`` (a generation endpoint like the others: same rate limits, faults,
latency, stats and request log), ``/v1/messages/count_tokens``, and the Message Batches
(``anthropic_batches``, on the same batch clock and settings, counted under
``/v1/messages/batches/{message_batch_id}``).

Every duration (configured or set at run time) is rehearsal time, kept as given and divided by
``[sim] speed`` where the app waits: latency and stream pace, fault delays and retry hints, the
flex outage clock, and the settings of each new batch (see ``speed``).

The parts: ``state`` (all of it), ``exchange`` (one request, its replies and pauses),
``routes`` (the route table), ``generate`` (the generation endpoints), ``inflict`` (faults
applied to a request), ``resources`` (models, files, batches) and ``control`` (``/_sim/*``).
"""

from __future__ import annotations

from llmspool.core.errors import ApiError
from llmspool.sim.asgi import Receive, Scope, Send, connection_transport
from llmspool.sim.config import SimConfig
from llmspool.sim.exchange import Exchange
from llmspool.sim.inflict import plain_fault
from llmspool.sim.routes import Router, stats_path
from llmspool.sim.state import SimState

__all__ = ["SimApp", "build_app"]


class SimApp(SimState):
    """The simulator as an ASGI app, with all of its state."""

    def __init__(self, config: SimConfig) -> None:
        """Raises ``ConfigError`` (key ``sim.pricing_file``) if the price table cannot load."""
        super().__init__(config)
        router = Router(self)
        self._route = router.route
        self._model_handlers = router.model_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        exchange = Exchange(self, scope, receive, send)
        counted = exchange.counted
        if counted:
            self.stats.request(stats_path(exchange.path))
            self.stats.connection(connection_transport(send), scope.get("client"))
            self.stats.in_flight += 1
        try:
            handler = self._route(exchange)
            self.flavor.admit(exchange.path, exchange.header)
            plain = counted and handler not in self._model_handlers
            if plain and not await plain_fault(exchange):
                return
            await handler(exchange)
        except ApiError as error:
            await exchange.reply_error(error)
        finally:
            if counted:
                self.stats.in_flight -= 1


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer a server's lifespan protocol: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(config: SimConfig) -> SimApp:
    """A fresh simulator (its own stats, faults, flex spells and counters) as an ASGI app.

    Raises ``ConfigError`` (key ``sim.pricing_file``) if the price table cannot be read.
    """
    return SimApp(config)
