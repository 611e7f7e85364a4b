"""Reading a table into a section: unknown keys refused, each value converted by its field's
kind, and every problem collected (``ConfigProblems``) rather than stopping at the first."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from llmspool.core.config.routes import cascade_to_table, routes_to_table
from llmspool.core.config.values import _convert, _paths_to_table
from llmspool.core.errors import ConfigError
from llmspool.core.units import format_duration, format_size

_Section = TypeVar("_Section")


class ConfigProblems(ConfigError):
    """Every problem found in one config, in the order of the file. ``key`` and the message are the
    first one's, with a count of the others, so the daemon still refuses in one line;
    ``problems`` has them all (``llmspool config check`` prints one line each)."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        message = str(first).removeprefix(f"{first.key}: ")
        if len(problems) > 1:
            message += (f" (and {len(problems) - 1} more; `llmspool config check` lists them "
                        "all)")
        super().__init__(first.key, message)
        self.problems: tuple[ConfigError, ...] = tuple(problems)


# The problems of the load in progress: a problem is noted and the rest of the file still
# checked, so that one run of `llmspool config check` shows every mistake, not the first.
_PROBLEMS: ContextVar[list[ConfigError] | None] = ContextVar("llmspool_config_problems",
                                                             default=None)


@contextmanager
def _collecting() -> Iterator[list[ConfigError]]:
    problems: list[ConfigError] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


def _problem(error: ConfigError) -> None:
    """Note ``error`` and go on checking; outside ``config_from_table``, raise it."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise error
    problems.append(error)


def _table_at(table: Mapping[str, Any], key: str, dotted: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        _problem(ConfigError(dotted, f"must be a table ([{dotted}]), got "
                                     f"{type(value).__name__}"))
        return {}
    return value


def _refuse_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}{key}"
            _problem(ConfigError(dotted, f"unknown key (known here: {', '.join(sorted(known))})"))


def _section(
    cls: type[_Section],
    table: Mapping[str, Any],
    prefix: str,
    *,
    defaults: _Section | None = None,
) -> _Section:
    """Build one section dataclass from its table, validating each value by its field kind; a
    bad value is a problem noted, and the default stands in for it."""
    fields = {fld.name: fld for fld in dataclasses.fields(cls)  # type: ignore[arg-type]
              if fld.metadata.get("kind") != "options"}
    base = defaults if defaults is not None else cls()
    values: dict[str, Any] = {}
    for key, value in table.items():  # in the file's order, so problems are listed in it
        fld = fields.get(key)
        if fld is None:
            _refuse_unknown({key: value}, set(fields), f"{prefix}.")
            continue
        try:
            values[key] = _convert(fld, value, f"{prefix}.{key}")
        except ConfigError as exc:
            _problem(exc)
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _section_to_table(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        kind = fld.metadata.get("kind")
        if value is None or kind == "options":
            continue  # TOML has no null: an unset optional key is left out
        if kind == "duration":
            value = format_duration(value)
        elif kind == "size":
            value = format_size(value)
        elif kind == "mode":
            value = f"{value:04o}"
        elif kind == "paths":
            value = _paths_to_table(value)
        elif kind == "routes":
            value = routes_to_table(value)
        elif kind == "cascade":
            value = cascade_to_table(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[fld.name] = value
    return out
