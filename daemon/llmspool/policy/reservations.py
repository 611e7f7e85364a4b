"""What a call may cost at most: the amount the ledger reserves before the call is sent.

The input is estimated offline (``TokenEstimator``: calibrated characters per token, or the
exact tokenizer), all of it uncached. The output is the limit the request sets
(``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``, times ``n`` choices);
without one, ``[budgets] reserve = "max"`` takes the model's ``max_output_tokens`` from the
price book (``unknown_max_output_tokens`` when it has none), which no answer can exceed, and
``"estimate"`` the typical answer's length, which one can. The cost is the dearest of the tiers
the call may end on (flex may fall back to standard), through ``billing.reservation_cost``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.pricing import PICODOLLARS_PER_USD
from llmspool.policy.billing import PriceBook, reservation_cost, worst_case_usage
from llmspool.policy.estimate import Estimate, TokenEstimator

_LIMIT_KEYS = {
    Endpoint.CHAT: ("max_completion_tokens", "max_tokens"),
    Endpoint.RESPONSES: ("max_output_tokens",),
    Endpoint.EMBEDDINGS: (),
}
_MAX_CHOICES = 128


@dataclass(frozen=True, slots=True)
class Reservation:
    """A call's worst-case cost, and the estimate it came from (kept to calibrate);
    ``asked_output``: the most output tokens the request asks for, if it says (what a
    tokens-per-minute limit counts, read here so the body is parsed once per call)."""

    picodollars: int
    estimate: Estimate
    asked_output: int | None = None


class Reserver:
    """Computes reservations against one price book (replaced on SIGHUP)."""

    def __init__(self, book: PriceBook, budgets: BudgetsConfig,
                 estimator: TokenEstimator) -> None:
        self.book = book
        self._budgets = budgets
        self._estimator = estimator
        self._ceiling = round(budgets.unknown_model_ceiling_usd * PICODOLLARS_PER_USD)
        self._reserve: Literal["max", "estimate"] = (
            "estimate" if budgets.reserve == "estimate" else "max")

    def set_prices(self, book: PriceBook) -> None:
        self.book = book

    def for_body(self, endpoint: Endpoint, provider: str, model: str, body: bytes,
                 operation: str | None, tiers: Sequence[Tier]) -> Reservation:
        """The reservation for a request whose JSON is ``body``, ending on one of ``tiers``."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = {}
        if not isinstance(document, dict):
            document = {}
        return self.for_document(endpoint, provider, model, document, operation, tiers)

    def for_document(self, endpoint: Endpoint, provider: str, model: str,
                     document: Mapping[str, object], operation: str | None,
                     tiers: Sequence[Tier]) -> Reservation:
        estimate = self._estimator.estimate(endpoint, document, model, operation)
        if endpoint is Endpoint.EMBEDDINGS:
            output = 0
        elif _sets_output_limit(endpoint, document):
            output = estimate.output_tokens  # the limit, times the choices asked for
        elif self._reserve == "max":
            # Each of n choices may run to the model's maximum.
            most = self.book.max_output_tokens(provider, model)
            output = (most or self._budgets.unknown_max_output_tokens) * _choices(document)
        else:
            output = estimate.output_tokens
        usage = worst_case_usage(
            self.book, provider, model, estimate.input_tokens, output, reserve=self._reserve,
            ceiling_output_tokens=self._budgets.unknown_max_output_tokens,
            estimated_output=estimate.output_tokens,
        )
        cost = reservation_cost(self.book, provider, model, tiers, usage, self._ceiling)
        return Reservation(cost, estimate, max_output(document))


def max_output(document: Mapping[str, object]) -> int | None:
    """The most output tokens a request asks for, if it says (any endpoint's key)."""
    return _first_limit(document, ("max_completion_tokens", "max_tokens", "max_output_tokens"))


def _sets_output_limit(endpoint: Endpoint, document: Mapping[str, object]) -> bool:
    return _first_limit(document, _LIMIT_KEYS.get(endpoint, ())) is not None


def _first_limit(document: Mapping[str, object], keys: Sequence[str]) -> int | None:
    """The first of ``keys`` whose value is a positive whole number (not a bool)."""
    for key in keys:
        value = document.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _choices(document: Mapping[str, object]) -> int:
    n = document.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return min(n, _MAX_CHOICES)
    return 1
