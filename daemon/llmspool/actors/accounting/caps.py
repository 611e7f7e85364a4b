"""The configured caps, compiled once: which caps apply to a call, and their limits.

A cap is a scope (``("day", "")``, ``("operation", "evals")``, ``("user", "1000")``,
``("provider", "openai")``, ``("session", "s1")``) with a limit in picodollars and the name an
operator knows it by (``[budgets] daily_usd``). Per-request caps bound one call's worst-case
cost; scoped caps bound what is spent and reserved in their scope (a UTC day, or a session).
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from typing import Any

from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ConfigError
from llmspool.core.pricing import PICODOLLARS_PER_USD

Scope = tuple[str, str]  # (kind, key): ("day", ""), ("operation", "evals"), ("session", "s1")


@dataclass(frozen=True, slots=True)
class Cap:
    scope: Scope
    limit: int  # picodollars
    name: str  # how an operator names it: "[budgets] daily_usd"


class Caps:
    """The configured caps, compiled once: which apply to a call, and their limits."""

    def __init__(self, config: BudgetsConfig) -> None:
        self.config = config
        self._users = {self._uid(name): cap for name, cap in config.users.items()}
        self._scoped: dict[tuple[str, str | None, int | None, str | None], list[Cap]] = {}

    @staticmethod
    def _uid(name: str) -> int:
        if name.isdigit():
            return int(name)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise ConfigError(f"budgets.users.{name}", "no such user on this machine") from None

    def per_request(self, provider: str, operation: str | None, uid: int | None
                    ) -> list[tuple[int, str]]:
        found = []
        budgets = self.config
        for value, name in (
            (budgets.per_request_usd, "[budgets] per_request_usd"),
            (_cap_of(budgets.operations, operation, "per_request_usd"),
             f"[budgets.operations.{operation}] per_request_usd"),
            (_cap_of(self._users, uid, "per_request_usd"), f"per_request_usd of user {uid}"),
            (_cap_of(budgets.providers, provider, "per_request_usd"),
             f"[budgets.providers.{provider}] per_request_usd"),
        ):
            if value is not None:
                found.append((picodollars(value), name))
        return found

    def scoped(self, provider: str, operation: str | None, uid: int | None,
               session: str | None) -> list[Cap]:
        key = (provider, operation, uid, session)
        found = self._scoped.get(key)
        if found is None:
            if len(self._scoped) > 10_000:
                self._scoped.clear()  # sessions come and go; keep the cache bounded
            found = self._scoped[key] = self._compute_scoped(provider, operation, uid, session)
        return found

    def _compute_scoped(self, provider: str, operation: str | None, uid: int | None,
                        session: str | None) -> list[Cap]:
        budgets = self.config
        candidates: list[tuple[Scope, float | None, str]] = [
            (("day", ""), budgets.daily_usd, "[budgets] daily_usd"),
            (("operation", operation or ""), _cap_of(budgets.operations, operation, "daily_usd"),
             f"[budgets.operations.{operation}] daily_usd"),
            (("user", str(uid)), _cap_of(self._users, uid, "daily_usd"),
             f"daily_usd of user {uid}"),
            (("provider", provider), _cap_of(budgets.providers, provider, "daily_usd"),
             f"[budgets.providers.{provider}] daily_usd"),
        ]
        if session is not None:
            candidates.append((("session", session), budgets.session_usd,
                               "[budgets] session_usd"))
        return [Cap(scope, picodollars(value), name)
                for scope, value, name in candidates if value is not None]


def _cap_of(table: Any, key: Any, field_name: str) -> float | None:
    if key is None:
        return None
    cap = table.get(key)
    return None if cap is None else getattr(cap, field_name)


def picodollars(usd_value: float) -> int:
    return round(usd_value * PICODOLLARS_PER_USD)
