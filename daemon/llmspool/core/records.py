"""``replaced``: ``dataclasses.replace`` for the daemon's frozen, slotted messages, on the
request path.

``dataclasses.replace`` looks the class's fields up, checks each for ``init=False`` and
``InitVar``, collects a keyword dict and calls ``__init__``, which sets each field through
``object.__setattr__`` (the class is frozen). A cache miss copied two messages so (the call it
sends upstream with its own reply stream, the answer marked ``miss``): about 4 µs of a miss in
a hot loop, more between calls. ``replaced`` copies the slots in one loop, a third faster, for
the classes it is meant for: frozen ``slots=True`` dataclasses whose fields are all set by
``__init__`` and have no ``__post_init__`` (what it would skip).
"""

from __future__ import annotations

from typing import Any, TypeVar

Record = TypeVar("Record")
_set = object.__setattr__


def replaced(record: Record, **changes: Any) -> Record:
    """A copy of ``record`` with ``changes`` (field names to new values)."""
    kind = type(record)
    copy = object.__new__(kind)
    for name in kind.__slots__:  # type: ignore[attr-defined]
        _set(copy, name, changes.pop(name) if name in changes else getattr(record, name))
    if changes:
        raise TypeError(f"{kind.__name__} has no field {', '.join(changes)}")
    return copy
