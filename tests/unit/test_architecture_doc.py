"""docs/architecture.md stays true: the classes and message types its tables name exist, and
every actor the daemon has is in its table of actors."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

from llmspool import actors, messages

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
QUALIFIED = re.compile(r"`(llmspool(?:\.\w+)+)`")


def tables(heading: str) -> list[list[list[str]]]:
    """The tables under ``## heading``: each a list of body rows, each a list of cells."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found: list[list[list[str]]] = []
    for block in section.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            found.append([[cell.strip() for cell in row.strip("|").split("|")]
                          for row in rows[2:]])
    return found


def resolve(dotted: str) -> object:
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name, None)


def class_column(rows: list[list[str]]) -> list[str]:
    names = []
    for row in rows:
        match = QUALIFIED.search(row[1])
        assert match, f"no class named in the row {row}"
        names.append(match.group(1))
    return names


def test_every_class_the_tables_name_exists() -> None:
    actor_table, other_parts = tables("The actors")
    for dotted in class_column(actor_table) + class_column(other_parts):
        assert inspect.isclass(resolve(dotted)), f"docs/architecture.md names {dotted}"


def test_every_actor_module_is_in_the_table() -> None:
    actor_table, _ = tables("The actors")
    listed = {dotted.rsplit(".", 1)[0] for dotted in class_column(actor_table)}
    package = Path(actors.__file__).parent
    # An actor is a module of the package; its sub-packages hold the parts an actor uses.
    present = {f"llmspool.actors.{path.stem}" for path in package.glob("*.py")
               if path.stem != "__init__"}
    assert present == listed, "docs/architecture.md's table of actors is out of date"


def test_the_actors_run_as_the_doc_says() -> None:
    actor_table, _ = tables("The actors")
    for dotted in class_column(actor_table):
        run = getattr(resolve(dotted), "run", None)
        assert inspect.iscoroutinefunction(run), f"{dotted} has no async run()"
        assert "task_status" in inspect.signature(run).parameters, dotted


def test_the_inbox_messages_exist() -> None:
    actor_table, _ = tables("The actors")
    for row in actor_table:
        for name in re.findall(r"`(\w+)`", row[2]):
            assert inspect.isclass(getattr(messages, name, None)), f"{row[0]}: {name}"


def test_the_inbox_column_lists_every_message_the_inbox_takes() -> None:
    """An actor's inbox type (``StatusQuery[QueueStatus]`` counts as ``StatusQuery``) is in
    its row; the row may name more, sent on streams of their own (``SlotFreed``)."""
    actor_table, _ = tables("The actors")
    for row, dotted in zip(actor_table, class_column(actor_table), strict=True):
        actor = resolve(dotted)
        inbox = typing.get_type_hints(actor.__init__)["inbox"]
        taken = {getattr(typing.get_origin(kind), "__name__", None) or kind.__name__
                 for kind in typing.get_args(typing.get_args(inbox)[0])}
        listed = set(re.findall(r"`(\w+)`", row[2]))
        assert taken <= listed, f"{row[0]}: the inbox also takes {sorted(taken - listed)}"


def test_the_module_maps_name_every_actor_and_part() -> None:
    """``llmspool.actors``'s docstring names each actor module, each sub-package of parts and
    each of their modules; ``llmspool.app``'s names each actor module it starts."""
    from llmspool import app

    package = Path(actors.__file__).parent
    named = set(re.findall(r"``(\w+)``", actors.__doc__ or ""))
    for path in package.rglob("*.py"):
        if path.stem != "__init__":
            assert path.stem in named, f"llmspool.actors does not name {path.stem}"
    for sub in package.iterdir():
        if (sub / "__init__.py").exists():
            assert sub.name in named, f"llmspool.actors does not name {sub.name}"
    started = set(re.findall(r"``actors\.(\w+)``", app.__doc__ or ""))
    assert started == {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
