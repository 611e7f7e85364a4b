"""``llmspool plugins``: the installed provider plugins, their kinds, capabilities and keys,
and the configured providers of each kind (loaded as ``llmspool config`` loads the config)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from llmspool.cli.config import (
    EXIT_OK,
    load_as_daemon,
    print_table,
    report_problems,
    text_cell,
    toml_value,
    write_stdout,
)
from llmspool.core.config.sections import COMMON_PROVIDER_KEYS, Config
from llmspool.core.plugins import ProviderKind
from llmspool.core.provider import batch_capabilities_of, provider_capabilities


def add_plugins_command(commands: Any) -> None:
    """Add ``plugins`` to the CLI's commands."""
    plugins = commands.add_parser(
        "plugins", help="list the provider plugins: versions, kinds, capabilities, keys",
        description="List the installed provider plugins (the \"llmspool\" entry-point "
        "group): each provider kind with the package and version it came in, what its "
        "providers can do (endpoints, streaming, flex and priority tiers, the Batch API), "
        "the config keys it declares for [providers.NAME], and the configured providers of "
        "that kind. --json prints {\"plugins\": [{\"kind\", \"plugin\", \"package\", "
        "\"version\", \"capabilities\", \"keys\", \"used_by\"}]}.",
    )
    plugins.add_argument("--config", metavar="PATH", help="the config whose providers to "
                         "show (default: $LLMSPOOL_CONFIG, else the built-in defaults)")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of tables")
    plugins.set_defaults(run=run_plugins)


def plugin_report(kinds: Mapping[str, ProviderKind],
                  config: Config | None) -> list[dict[str, Any]]:
    """One entry per provider kind, as ``llmspool plugins --json`` prints it."""
    report = []
    for kind, spec in sorted(kinds.items()):
        batch = None
        try:
            capabilities: Any = provider_capabilities(spec.factory)
            batch = batch_capabilities_of(spec.factory)
        except (ImportError, AttributeError) as exc:  # a plugin whose class is not there
            capabilities = f"cannot load the provider class: {exc}"
        report.append({
            "kind": kind,
            "plugin": spec.plugin,
            "package": spec.package,
            "version": spec.version,
            "capabilities": list(capabilities) if isinstance(capabilities, tuple)
            else capabilities,
            "batch": None if batch is None else {
                "max_lines": batch.max_lines, "max_bytes": batch.max_bytes,
                "max_embedding_inputs": batch.max_embedding_inputs,
                "uploads_input": batch.uploads_input,
                "finds_by_metadata": batch.finds_by_metadata,
                "endpoints": sorted(endpoint.operation_name for endpoint in batch.endpoints)},
            "keys": [{"name": key.name, "type": key.type, "default": key.default,
                      "help": key.help, "every_provider_has_it": key.name in COMMON_PROVIDER_KEYS,
                      **({"choices": list(key.choices)} if key.choices else {})}
                     for key in spec.keys],
            "used_by": [] if config is None else
            [name for name, provider in config.providers.items() if provider.plugin == kind],
        })
    return report


def run_plugins(args: argparse.Namespace) -> int:
    loaded = load_as_daemon(args.config)
    status = report_problems(loaded) if loaded.problems else EXIT_OK
    report = plugin_report(loaded.kinds, loaded.config)
    if args.json:
        written = write_stdout(json.dumps({"plugins": report}, indent=2, ensure_ascii=False)
                                + "\n")
        return written or status
    from rich.table import Table

    if not report:
        print("no provider plugins are installed (entry-point group \"llmspool\")")
        return status
    kinds = Table(title=text_cell("provider plugins"), title_justify="left")
    for column in ("kind", "plugin", "package", "capabilities", "used by"):
        kinds.add_column(column, overflow="fold")
    rows = []
    for entry in report:
        package = (f"{entry['package']} {entry['version']}" if entry["package"]
                   else "(not from a package)")
        capabilities = entry["capabilities"]
        rows.append((entry["kind"], entry["plugin"], package,
                     ", ".join(capabilities) if isinstance(capabilities, list)
                     else capabilities or "unknown (a factory function)",
                     ", ".join(entry["used_by"]) or "-"))
    for row in rows:
        kinds.add_row(*map(text_cell, row))
    written = print_table(kinds, rows)
    keys = Table(title=text_cell("keys the plugins declare for [providers.NAME]"),
                 title_justify="left")
    for column in ("kind", "key", "type", "default", "what it does"):
        keys.add_column(column, overflow="fold")
    key_rows = [(entry["kind"], key["name"], key["type"], toml_value(key["default"]),
                 key["help"]) for entry in report for key in entry["keys"]]
    for row in key_rows:
        keys.add_row(*map(text_cell, row))
    if key_rows and not written:
        written = print_table(keys, key_rows)
    batches = Table(title=text_cell("batch tiers: what one batch may hold, and how a batch lost in "
                                "a crash is found"), title_justify="left")
    for column in ("kind", "endpoints", "lines", "bytes", "requests go", "found after a crash"):
        batches.add_column(column, overflow="fold")
    batch_rows = [(entry["kind"], ", ".join(batch["endpoints"]), f"{batch['max_lines']:,}",
                   f"{batch['max_bytes'] / 2**20:,.0f} MiB",
                   "uploaded as a file" if batch["uploads_input"] else "with the create call",
                   "by metadata" if batch["finds_by_metadata"]
                   else "by listing and matching (intent in custom_id)")
                  for entry in report if (batch := entry["batch"]) is not None]
    for batch_row in batch_rows:
        batches.add_row(*map(text_cell, batch_row))
    if batch_rows and not written:
        written = print_table(batches, batch_rows)
    return written or status
