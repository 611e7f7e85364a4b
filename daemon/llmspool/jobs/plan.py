"""What the daemon plans for a job's requests, as ``POST /v1/jobs`` answers it: how many go to
which tier, and by when each group is expected to be answered.

The job keeper fills it while it routes a new job (``JobKeeper._route``); a request's tier is
the one chosen at that moment (``batch``, ``cache`` for one answered from the cache or by an
identical request, otherwise ``flex``, ``standard`` or ``priority`` as the planner would
choose now). The plan is a forecast, not a promise: an outage or a slow batch moves requests
to another tier, and ``GET /v1/jobs/{id}`` counts where they were actually served.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmspool.messages import PlanGroupView


@dataclass(slots=True)
class PlanGroup:
    """Requests of one model planned on one tier."""

    requests: int = 0
    expected_by: float = 0.0  # the latest expected answer among them (Unix time)


@dataclass(slots=True)
class JobPlan:
    """The groups of a job's plan, keyed by (tier, model)."""

    groups: dict[tuple[str, str], PlanGroup] = field(default_factory=dict)

    def add(self, tier: str, model: str, expected_by: float) -> None:
        group = self.groups.get((tier, model))
        if group is None:
            group = self.groups[(tier, model)] = PlanGroup()
        group.requests += 1
        group.expected_by = max(group.expected_by, expected_by)

    def to_json(self) -> list[PlanGroupView]:
        return [
            {"tier": tier, "model": model, "requests": group.requests,
             "expected_by": round(group.expected_by, 3)}
            for (tier, model), group in sorted(self.groups.items(),
                                               key=lambda item: item[1].expected_by)
        ]
