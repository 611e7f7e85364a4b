"""How a config value is read and written: the converters for each kind of field (durations,
sizes, modes, paths, plain TOML types) and ``ConfigKey``, a key a provider plugin declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from llmspool.core.config.routes import parse_cascade, parse_routes
from llmspool.core.errors import ConfigError
from llmspool.core.units import parse_duration, parse_size


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"kind": "duration"})


def _size(default: str) -> Any:
    return field(default=parse_size(default), metadata={"kind": "size"})


KeyType = Literal["str", "int", "float", "bool", "duration", "size", "list[str]"]


KEY_TYPES: tuple[str, ...] = get_args(KeyType)


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """A key a provider plugin declares for its ``[providers.NAME]`` tables.

    ``default`` is written as an operator would write it in TOML (``"5m"`` for a duration);
    ``help`` is one line saying what the key does. A plugin may also declare a key every
    provider has (``base_url``...) to give it its own default and help; its type must then be
    that key's type.
    """

    name: str
    type: KeyType
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        """``value`` as read from TOML, checked against the key's type: seconds for a duration,
        bytes for a size, a tuple for a list. Raises ``ValueError`` or ``TypeError`` saying
        what was expected."""
        if self.type == "duration":
            return parse_duration(value)
        if self.type == "size":
            return parse_size(value)
        return _check_plain(self.type, value, self.choices)

    @property
    def default_value(self) -> Any:
        """The default, converted as ``convert`` converts a value from the file."""
        return self.convert(self.default)


ProviderKeys = Mapping[str, Sequence[ConfigKey]]
"""The keys each provider kind declares, by kind
(``llmspool.core.plugins.provider_config_keys``)."""


def _field_key_type(fld: dataclasses.Field[Any]) -> str:
    """The ``ConfigKey`` type that describes a ``ProviderConfig`` field."""
    kind = fld.metadata.get("kind")
    if kind in ("duration", "size"):
        return str(kind)
    return _plain_type(fld)


def _plain_type(fld: dataclasses.Field[Any]) -> str:
    expected = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "")
    expected = expected.removesuffix(" | None")  # optional keys: absent means inherit
    return "list[str]" if expected.startswith("tuple[str") else expected


def _options_to_table(options: Mapping[str, Any]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in options.items()}


def _convert(fld: dataclasses.Field[Any], value: Any, dotted: str) -> Any:
    kind = fld.metadata.get("kind")
    converters: dict[str | None, Callable[[Any], Any]] = {
        "duration": parse_duration,
        "size": parse_size,
        "mode": _parse_mode,
        "paths": _parse_paths,
        "routes": parse_routes,
        "cascade": parse_cascade,
    }
    try:
        if kind in converters:
            return converters[kind](value)
        return _check_plain(_plain_type(fld), value, fld.metadata.get("choices", ()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(dotted, str(exc)) from None


def _check_plain(expected: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` checked as a TOML value of type ``expected`` (as ``ConfigKey`` names types)."""
    if expected.startswith("Mapping["):
        raise TypeError("must be a table")
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise TypeError(f"expected a non-negative number, got {value!r}")
        return float(value)
    if expected == "str":
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    if expected == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"expected a non-negative integer, got {value!r}")
        return value
    if expected == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if expected == "list[str]":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"no converter for {expected}")  # a programming error, not an operator's


def _parse_mode(value: Any) -> int:
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode like '0660', got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ValueError(f"expected an octal file mode like '0660', got {value!r}")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"file mode {value!r} is outside 0000..0777")
    return mode


def _parse_paths(value: Any) -> tuple[str, ...]:
    """A path or a list of paths; "" (or []) is none."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TypeError(f"expected a path or a list of paths, got {value!r}")


def _paths_to_table(paths: tuple[str, ...]) -> str | list[str]:
    """As an operator writes it: "" for none, a string for one, a list for more."""
    if len(paths) <= 1:
        return paths[0] if paths else ""
    return list(paths)
