"""The interface between the endpoints and the app: what an endpoint gets to make an answer
(``Makers``), and what it gives back (an ``Answer``: sizes for latency, stats and rate-limit
headers, plus the body or the server-sent events).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.text import TextGenerator
from llmspool.sim.vectors import VectorMaker

SYSTEM_FINGERPRINT = "fp_llmspool_sim"


class Answer(Protocol):
    """One validated request, ready to be answered."""

    @property
    def model(self) -> str: ...
    @property
    def tier(self) -> str | None:
        """The service tier served (``None`` where the endpoint has no tiers)."""

    @property
    def stream(self) -> bool: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int:
        """Tokens generated per choice: what the per-token latency is paid for."""

    @property
    def billed_output_tokens(self) -> int:
        """Tokens generated over all choices: what usage reports."""

    def body(self) -> bytes:
        """The whole JSON answer."""
        ...

    def events(self) -> Iterator[tuple[bytes, bool]]:
        """The SSE events of a streamed answer, each with whether it waits one token interval.

        The last event is the terminator (``[DONE]`` or ``response.completed``).
        """
        ...


class IdMaker:
    """Ids like OpenAI's (``chatcmpl-…``, ``resp_…``, ``req_…``): 128 random bits each, so
    that what indexes them (the daemon's ledger) sees keys in no order, as it does with
    OpenAI's. Drawn from a generator seeded once from the system, so making one costs no
    system call."""

    def __init__(self) -> None:
        self._bits = random.Random(secrets.randbits(128)).getrandbits

    def make(self, kind: str) -> str:
        return f"{kind}{self._bits(128):032x}"


@dataclass(frozen=True, slots=True)
class Makers:
    """What the endpoints share to build answers."""

    catalog: ModelCatalog
    text: TextGenerator
    vectors: VectorMaker
    ids: IdMaker
    default_output_tokens: int
    flex_models: frozenset[str]
    """Models on which a request may ask ``service_tier: "flex"``."""
