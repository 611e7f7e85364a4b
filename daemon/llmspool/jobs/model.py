"""A job and its requests, as the front door hands them to the job keeper."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmspool.calls import Endpoint


@dataclass(frozen=True, slots=True)
class JobLine:
    """One request of a job: where it goes and the JSON to send."""

    line: int
    custom_id: str
    endpoint: Endpoint
    provider: str
    model: str
    body: bytes
    cache_key: bytes | None = None  # the response cache's key (None: not cacheable)
    cache_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one input line was refused (``line`` counts from 1, as editors do)."""

    line: int
    custom_id: str | None
    message: str
    code: str = "invalid_request"

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "custom_id": self.custom_id, "message": self.message,
                "code": self.code}


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job, not yet durable."""

    id: str
    created_at: float
    deadline_at: float
    operation: str | None
    tags: dict[str, str]
    uid: int | None
    lines: list[JobLine] = field(repr=False)
    traceparent: str | None = None  # of the request that submitted it
