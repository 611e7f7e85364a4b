"""The batch submitter's waiting requests: a group per (provider, endpoint, model).

A group is due when it reaches ``[batch] max_lines`` or ``max_bytes`` (or the provider's own
limits, its ``BatchCapabilities``: lines, bytes, embeddings inputs), when its oldest request has
waited ``max_age``, or when a request's deadline allows no more waiting (the planner's latest
batch submit); a large group is cut into several batches. A group held back by the
enqueued-token cap waits until a batch of its model finishes or its latest submit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import BatchConfig
from llmspool.core.provider import BatchCapabilities, BatchProvider
from llmspool.messages import BatchClosed
from llmspool.policy.planner import Planner
from llmspool.store.records import BatchCandidate

LINE_OVERHEAD = 80  # bytes each input line adds around its body
GroupKey = tuple[str, Endpoint, str]


@dataclass
class Group:
    """Requests waiting to be batched together."""

    candidates: list[BatchCandidate] = field(default_factory=list)
    bytes: int = 0
    inputs: int = 0
    oldest_at: float = math.inf
    latest_submit: float = math.inf
    traceparents: set[str] = field(default_factory=set)
    held: str | None = None  # why it waits beyond its flush time (the enqueued-token cap)

    def add(self, candidate: BatchCandidate) -> None:
        self.candidates.append(candidate)
        self.bytes += candidate.size + LINE_OVERHEAD
        self.inputs += candidate.inputs


class Groups:
    """The groups waiting (``waiting``, by key), and the enqueued-token limits learned."""

    def __init__(self, providers: Mapping[str, BatchProvider], config: BatchConfig,
                 planner: Planner) -> None:
        self._providers = providers
        self._config = config
        self._planner = planner
        self.waiting: dict[GroupKey, Group] = {}
        self._learned_limits: dict[tuple[str, str], int] = {}

    def add(self, candidates: list[BatchCandidate], traceparents: Iterable[str],
            now: float) -> None:
        for candidate in candidates:
            key = (candidate.provider, candidate.endpoint, candidate.model)
            group = self.waiting.setdefault(key, Group())
            group.add(candidate)
            group.oldest_at = min(group.oldest_at, now)
            group.latest_submit = min(group.latest_submit, self._planner.latest_batch_submit(
                candidate.provider, candidate.model, candidate.deadline_at))
        for key in {(c.provider, c.endpoint, c.model) for c in candidates}:
            self.waiting[key].traceparents.update(traceparents)

    def closed(self, message: BatchClosed) -> int | None:
        """A batch finished: every held group may try again. Returns the limit learned when
        the batch hit its model's enqueued-token cap."""
        learned = None
        if message.token_limit_hit:
            model_key = (message.provider, message.model)
            learned = max(1, message.enqueued_at_failure)
            self._learned_limits[model_key] = min(
                self._learned_limits.get(model_key, learned), learned)
        for group in self.waiting.values():
            group.held = None
        return learned

    def hold(self, key: GroupKey, group: Group, rest: list[BatchCandidate], why: str) -> Group:
        """Keep ``rest`` of ``group`` back, as it was, until a batch of its model finishes."""
        held = Group(held=why, traceparents=group.traceparents)
        for candidate in rest:
            held.add(candidate)
        held.oldest_at = group.oldest_at
        held.latest_submit = group.latest_submit
        self.waiting[key] = held
        return held

    def limits(self, provider: str) -> tuple[int, int, float]:
        """(lines, bytes, embeddings inputs) one batch of ``provider`` may hold: its own
        limits, within ``[batch] max_lines`` and ``max_bytes``."""
        capabilities: BatchCapabilities = self._providers[provider].batch_capabilities
        inputs = capabilities.max_embedding_inputs
        return (min(self._config.max_lines, capabilities.max_lines),
                min(self._config.max_bytes, capabilities.max_bytes),
                math.inf if inputs is None else inputs)

    def due(self, group: Group, now: float) -> bool:
        max_lines, max_bytes, max_inputs = self.limits(group.candidates[0].provider)
        return (len(group.candidates) >= max_lines
                or group.bytes >= max_bytes
                or group.inputs >= max_inputs
                or now >= self.next_due(group))

    def next_due(self, group: Group) -> float:
        if group.held is not None:
            return group.latest_submit
        return min(group.oldest_at + self._config.max_age, group.latest_submit)

    def split(self, candidates: list[BatchCandidate], token_limit: int
              ) -> list[list[BatchCandidate]]:
        """Cut into batches within the line, byte and embeddings-input limits, and within
        the enqueued-token limit when one is known."""
        max_lines, max_bytes, max_inputs = self.limits(candidates[0].provider)
        if token_limit:
            max_bytes = min(max_bytes, token_limit * 4)
        chunks: list[list[BatchCandidate]] = [[]]
        size = inputs = 0
        for candidate in sorted(candidates, key=lambda c: c.request_id):
            line_bytes = candidate.size + LINE_OVERHEAD
            current = chunks[-1]
            if current and (len(current) >= max_lines or size + line_bytes > max_bytes
                            or inputs + candidate.inputs > max_inputs):
                chunks.append([])
                size = inputs = 0
            chunks[-1].append(candidate)
            size += line_bytes
            inputs += candidate.inputs
        return [chunk for chunk in chunks if chunk]

    def token_limit(self, provider: str, model: str) -> int:
        configured = self._config.max_enqueued_tokens
        learned = self._learned_limits.get((provider, model), 0)
        return min(x for x in (configured, learned) if x) if configured or learned else 0
