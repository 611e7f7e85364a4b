"""``llmspool store``: the store's schema, without the daemon::

    llmspool store check [--config PATH] [--url URL] [--json]   is the schema current? exit 0 / 1
    llmspool store migrate [--config PATH] [--url URL]          apply the migrations it lacks

The store is the config's (``[store] url``; empty: SQLite in ``[daemon] state_dir``) unless
``--url`` names another. The daemon migrates at start as well; ``migrate`` is for doing it
ahead of a rollout, or from one host for a fleet that shares a PostgreSQL database.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import anyio
import orjson

from llmspool.cli.output import console
from llmspool.core.config.sections import Config, StoreConfig
from llmspool.core.config_load import load_config
from llmspool.core.errors import ConfigError
from llmspool.store.backend import StoreLocation
from llmspool.store.schema import SchemaState, migrate_store, schema_state

EXIT_CURRENT = 0
EXIT_NOT_CURRENT = 1

CHECK_DESCRIPTION = """\
Read the store's schema version and compare it with the migrations this llmspool knows.
Exit 0 when it is current; 1 when migrations are pending (run `llmspool store migrate`) or
when a newer llmspool migrated it (run that version). Changes nothing."""

MIGRATE_DESCRIPTION = """\
Apply the migrations the store lacks, each in one transaction, and say which ran. A new
SQLite file (and its directory) is created. Several daemons or hosts may run this against one
PostgreSQL database at once: one migrates, the others wait and find nothing left to do."""


def add_store_commands(commands: Any) -> None:
    """Add ``store check`` and ``store migrate`` to the CLI's commands."""
    store = commands.add_parser(
        "store", help="check or migrate the store's schema (SQLite or PostgreSQL)",
        description="The store keeps jobs, batches, the cost ledger and budgets: SQLite in "
        "[daemon] state_dir, or the PostgreSQL database [store] url names.")
    actions = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="is the schema current? (exit 0, else 1)",
                               description=CHECK_DESCRIPTION)
    migrate = actions.add_parser("migrate", help="apply the migrations the store lacks",
                                 description=MIGRATE_DESCRIPTION)
    for action in (check, migrate):
        action.add_argument("--config", metavar="PATH", help="config file (default: "
                            "$LLMSPOOL_CONFIG, else built-in defaults)")
        action.add_argument("--url", metavar="URL", help="a postgresql:// URL to use instead "
                            "of the config's store")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(run=_run_check)
    migrate.set_defaults(run=_run_migrate)


def _location(args: argparse.Namespace) -> StoreLocation:
    config: Config = load_config(args.config)
    if args.url is not None:
        if not args.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("--url", f"expected a postgresql:// URL, got {args.url!r}")
        config = dataclasses.replace(config, store=StoreConfig(url=args.url))
    return StoreLocation.of(config)


def _run_check(args: argparse.Namespace) -> int:
    state: SchemaState = anyio.run(schema_state, _location(args))
    verdict = ("newer" if state.newer else "behind" if state.pending else "current")
    if args.json:
        sys.stdout.write(orjson.dumps({
            "backend": state.location.backend.value, "store": state.location.shown(),
            "version": state.version, "latest": state.latest, "pending": list(state.pending),
            "verdict": verdict,
        }).decode() + "\n")
    else:
        out = console()
        out.print(f"store     {state.location.backend.value}: {state.location.shown()}",
                  highlight=False)
        out.print(f"schema    version {state.version} of {state.latest}", highlight=False)
        if state.newer:
            out.print("verdict   migrated by a newer llmspool: run that version", highlight=False)
        elif state.pending:
            out.print(f"pending   {', '.join(state.pending)}", highlight=False)
            out.print("verdict   behind: run `llmspool store migrate`", highlight=False)
        else:
            out.print("verdict   current", highlight=False)
    return EXIT_CURRENT if verdict == "current" else EXIT_NOT_CURRENT


def _run_migrate(args: argparse.Namespace) -> int:
    location = _location(args)
    applied = anyio.run(migrate_store, location)
    out = console()
    where = f"{location.backend.value}: {location.shown()}"
    if applied:
        out.print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}",
                  highlight=False)
    else:
        out.print(f"{where} is already current; nothing to do", highlight=False)
    return EXIT_CURRENT
