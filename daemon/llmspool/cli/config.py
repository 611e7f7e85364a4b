"""``llmspool config``: writing, checking and reading back the config (and, in
``cli/plugins.py``, which uses the loading here, ``llmspool plugins``)::

    llmspool config init [PATH] [--force]       write the reference config, every key commented
    llmspool config check [PATH]                validate it as the daemon would: exit 0 or 78
    llmspool config show [PATH] [--json]        the effective config, each value's source
    llmspool plugins [--config PATH] [--json]   provider plugins: version, kinds, capabilities,
                                                keys, and the configured providers using each

PATH is found as the daemon finds its config: the argument, else ``$LLMSPOOL_CONFIG``, else no
file (the built-in defaults); the environment's overrides (``LLMSPOOL_<SECTION>__<KEY>``...)
apply as they would to the daemon. A config the daemon would refuse gives one line per problem
on standard error, each naming the key (and the variable, when the environment set it), and
exit status 78, the daemon's own (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llmspool.core import span_limits
from llmspool.core.config.sections import Config
from llmspool.core.config.tables import ConfigProblems
from llmspool.core.config_load import (
    EnvOverride,
    config_file,
    config_to_table,
    environment_overrides,
    load_config,
    read_config_file,
)
from llmspool.core.errors import ConfigError
from llmspool.core.plugins import ProviderKind, load_provider_specs
from llmspool.policy.billing import PriceBook, load_price_book
from llmspool.policy.model_choice import check_routed_models
from llmspool.policy.routing import ModelRouter
from llmspool.sim.config import SimConfig

EXIT_OK = 0
# EX_CONFIG, as the daemon exits for a config it refuses (llmspool.cli.main.EXIT_CONFIG).
EXIT_CONFIG = 78
EXIT_BROKEN_PIPE = 141
REFERENCE = "defaults/llmspool.toml"  # package data: the same bytes as etc/llmspool.toml
SYSTEMD_CONFIG = "/etc/llmspool/llmspool.toml"  # systemd/llmspool.service's LLMSPOOL_CONFIG
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

SHOW_DESCRIPTION = """\
Print every setting of the effective config: the file's values, the environment's overrides
(LLMSPOOL_<SECTION>__<KEY>, LLMSPOOL_SOCKET, LLMSPOOL_STATE_DIR, OPENAI_BASE_URL) on top, and
the defaults (the daemon's, or a provider plugin's) for the rest, each with where it came from.
A table on a terminal; piped, the table is as wide as its longest value, so nothing is cut.
--json prints {"config_file": PATH or null, "settings": [{"key", "value", "source", "origin"}]}:
source is "file", "environment" (origin: the variable), "plugin" (a provider plugin's default;
origin: its kind) or "default".
"""


def add_config_commands(commands: Any) -> None:
    """Add ``config`` (``init``, ``check``, ``show``) to the CLI's commands."""
    config = commands.add_parser(
        "config", help="write, check and show the config file",
        description="Write the reference config (init), validate a config as the daemon would "
        "(check), or print the effective config with where each value came from (show).",
    )
    subcommands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND",
                                        required=True)
    init = subcommands.add_parser(
        "init", help="write the reference config: every key, its default and what it does",
        description="Write the reference config to PATH, or to standard output when PATH is "
        "omitted or '-': every key with its default and a comment saying what it does, ready "
        "to edit (delete what you do not change). Refuses to overwrite an existing file "
        "unless --force is given.",
    )
    init.add_argument("path", nargs="?", default="-", metavar="PATH")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(run=run_config_init)

    check = subcommands.add_parser(
        "check", help="validate a config as the daemon would (exit 0, or 78 with each problem)",
        description="Load the config as the daemon would (PATH, else $LLMSPOOL_CONFIG, else "
        "the built-in defaults; the environment's overrides applied), with the installed "
        "provider plugins' keys and the price files it names. Exit 0 when the daemon would "
        "start with it; otherwise print one line per problem on standard error, each naming "
        "the key, and exit 78 (EX_CONFIG), as the daemon would.",
    )
    check.add_argument("path", nargs="?", metavar="PATH")
    check.set_defaults(run=run_config_check)

    show = subcommands.add_parser(
        "show", help="print the effective config and where each value came from",
        description=SHOW_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("path", nargs="?", metavar="PATH")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(run=run_config_show)


# -- config init -------------------------------------------------------------------------------


def reference_config() -> str:
    """The reference config ``config init`` writes (etc/llmspool.toml, shipped in the package)."""
    return resources.files("llmspool").joinpath(REFERENCE).read_text(encoding="utf-8")


def run_config_init(args: argparse.Namespace) -> int:
    text = reference_config()
    if args.path == "-":
        return write_stdout(text)
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"llmspool: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"llmspool: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}; edit it, then `llmspool config check {path}`")
    return EXIT_OK


# -- loading as the daemon would ---------------------------------------------------------------


@dataclass
class _Loaded:
    """A config loaded as the daemon would load it, with what ``show`` needs to explain it."""

    path: Path | None
    file_table: dict[str, Any]
    overrides: list[EnvOverride]
    kinds: dict[str, ProviderKind]
    config: Config | None = None
    prices: PriceBook | None = None
    sim: SimConfig | None = None
    problems: list[ConfigError] = field(default_factory=list)


def load_as_daemon(path_argument: str | None, environ: Mapping[str, str] | None = None) -> _Loaded:
    env = os.environ if environ is None else environ
    loaded = _Loaded(config_file(path_argument, environ=env), {}, environment_overrides(env), {})
    try:
        loaded.kinds = load_provider_specs()
    except ConfigError as exc:  # a broken plugin: the daemon could not start either
        loaded.problems.append(exc)
    keys = {kind: spec.keys for kind, spec in loaded.kinds.items()}
    try:
        if loaded.path is not None:
            loaded.file_table = read_config_file(loaded.path)
        loaded.config = load_config(loaded.path, environ=env, provider_keys=keys)
    except ConfigProblems as exc:
        loaded.problems.extend(exc.problems)
    except ConfigError as exc:
        loaded.problems.append(exc)
    loaded.problems.extend(span_limits.problems(env))
    try:
        loaded.sim = _sim_config(loaded)
    except ConfigError as exc:
        loaded.problems.append(exc)
    if loaded.config is not None:
        try:
            loaded.prices = load_price_book(loaded.config.pricing.file)
            # Routes and cascades must name models a provider serves, as the daemon checks.
            check_routed_models(loaded.config,
                                ModelRouter.build(loaded.config.providers, loaded.prices.table))
        except ConfigError as exc:
            loaded.problems.append(exc)
    return loaded


def _sim_config(loaded: _Loaded) -> SimConfig:
    """The ``[sim]`` table of the file, with the environment applied, read by the simulator's
    own rules: the daemon's config leaves ``[sim]`` alone (the daemon does not depend on the
    simulator), so the command line composes the two."""
    table = copy.deepcopy(dict(loaded.file_table.get("sim", {})))
    for override in loaded.overrides:
        if override.path[:1] == ("sim",) and len(override.path) > 1:
            *parents, key = override.path[1:]
            inner = table
            for part in parents:
                inner = inner.setdefault(part, {})
            inner[key] = override.value
    return SimConfig.from_table(table)


def _problem_line(problem: ConfigError, overrides: Sequence[EnvOverride]) -> str:
    """One line naming the key, and the variable when the environment set that key."""
    line = f"llmspool: config: {problem}"
    for override in reversed(overrides):  # the last one applied is the one that counts
        dotted = ".".join(override.path)
        if problem.key == dotted or problem.key.startswith(dotted + "."):
            return f"{line} (set by {override.variable})"
    return line


def report_problems(loaded: _Loaded) -> int:
    """Print each problem on its own line, and a last line saying what it means; 78."""
    lines = list(dict.fromkeys(_problem_line(p, loaded.overrides) for p in loaded.problems))
    for line in lines:
        print(line, file=sys.stderr)
    where = str(loaded.path) if loaded.path is not None else "the built-in config"
    count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
    print(f"llmspool: config: {count} in {where}; the daemon would refuse to start "
          f"(exit {EXIT_CONFIG})", file=sys.stderr)
    return EXIT_CONFIG


# -- config check ------------------------------------------------------------------------------


def run_config_check(args: argparse.Namespace) -> int:
    loaded = load_as_daemon(args.path)
    if loaded.problems or loaded.config is None or loaded.prices is None:
        return report_problems(loaded)
    providers = ", ".join(f"{name} ({provider.plugin})"
                          for name, provider in loaded.config.providers.items())
    prices = f"{loaded.prices.source}, version {loaded.prices.version}"
    overridden = len({o.path for o in loaded.overrides})
    environment = (f"; {overridden} key{'s' if overridden != 1 else ''} set by the environment"
                   if overridden else "")
    if loaded.path is not None:
        print(f"{loaded.path}: ok (providers: {providers}; prices: {prices}{environment})")
        return EXIT_OK
    print(f"no config file (no PATH, and $LLMSPOOL_CONFIG is not set): the daemon would run on "
          f"the built-in defaults, which are ok (providers: {providers}; prices: {prices}"
          f"{environment})")
    if Path(SYSTEMD_CONFIG).is_file():
        print(f"the systemd unit reads {SYSTEMD_CONFIG}: `llmspool config check "
              f"{SYSTEMD_CONFIG}` checks that one")
    return EXIT_OK


# -- config show -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of the effective config: its value as TOML would hold it, and its source."""

    key: str
    value: Any
    source: str  # "file", "environment", "plugin" or "default"
    origin: str | None  # the file, the variable, or the plugin kind

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "source": self.source,
                "origin": self.origin}


def effective_settings(loaded: _Loaded, config: Config) -> list[Setting]:
    """Every key of ``config`` (``loaded``'s) with the source of its value, section by
    section."""
    table = config_to_table(config)
    table["sim"] = (loaded.sim or SimConfig()).to_table()
    _add_plugin_defaults(table, config, loaded.kinds)
    return [Setting(_dotted(path), value, *_source(path, loaded, config))
            for path, value in _leaves(table)]


def _add_plugin_defaults(table: dict[str, Any], config: Config,
                         kinds: Mapping[str, ProviderKind]) -> None:
    """Show the keys a provider's plugin declares and the file leaves out, at their defaults."""
    for name, provider in config.providers.items():
        spec = kinds.get(provider.plugin)
        for key in spec.keys if spec is not None else ():
            table["providers"][name].setdefault(key.name, key.default)


def _source(path: tuple[str, ...], loaded: _Loaded, config: Config) -> tuple[str, str | None]:
    for override in reversed(loaded.overrides):  # the environment is applied last: it wins
        if path[:len(override.path)] == override.path:
            return "environment", override.variable
    if _in_table(loaded.file_table, path):
        return "file", str(loaded.path)
    if len(path) == 3 and path[0] == "providers":
        kind = config.providers[path[1]].plugin
        spec = loaded.kinds.get(kind)
        if spec is not None and any(key.name == path[2] for key in spec.keys):
            return "plugin", kind
    return "default", None


def _in_table(table: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = table
    for part in path:
        if not isinstance(node, Mapping):
            return True  # inside a value the file sets whole (an inline table)
        if part not in node:
            return False
        node = node[part]
    return True


def _leaves(table: Mapping[str, Any], prefix: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in table.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            yield from _leaves(value, path)  # an empty table sets nothing, and shows nothing
        else:
            yield path, value


def _dotted(path: Sequence[str]) -> str:
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in path)


def toml_value(value: Any) -> str:
    """``value`` as it would be written in TOML, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string, for these values
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_dotted([k])} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return str(value)


def run_config_show(args: argparse.Namespace) -> int:
    loaded = load_as_daemon(args.path)
    if loaded.problems or loaded.config is None:
        return report_problems(loaded)
    settings = effective_settings(loaded, loaded.config)
    if args.json:
        document = {"config_file": None if loaded.path is None else str(loaded.path),
                    "settings": [setting.as_json() for setting in settings]}
        return write_stdout(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    from rich.table import Table

    title = (f"llmspool config: {loaded.path}" if loaded.path is not None
             else "llmspool config: no file (built-in defaults)")
    table = Table(title=text_cell(title), title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", no_wrap=True)
    rows = [(s.key, toml_value(s.value), _describe_source(s)) for s in settings]
    for row in rows:
        # What the operator set stands out from the defaults.
        table.add_row(*map(text_cell, row), style="bold" if row[2] != "default" else None)
    return print_table(table, rows)


def _describe_source(setting: Setting) -> str:
    if setting.source == "environment":
        return f"env {setting.origin}"
    if setting.source == "plugin":
        return f"default of plugin {setting.origin}"
    return setting.source


# -- output ------------------------------------------------------------------------------------


def text_cell(value: str) -> Any:
    """A cell as it is: rich would read "[...]" in a value (a TOML list) as markup."""
    from rich.text import Text

    return Text(value)


def print_table(table: Any, rows: Sequence[Sequence[str]]) -> int:
    """Print a rich table: a terminal's width on a terminal; piped, as wide as the widest row
    needs (rich would assume 80 columns and cut or fold cells), unless COLUMNS says."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(len(table.columns))]
        headers = [len(str(column.header)) for column in table.columns]
        needed = sum(max(w, h) for w, h in zip(widths, headers, strict=True)) \
            + 3 * len(widths) + 1  # borders and padding
        console = Console(width=max(needed, 80))
    try:
        console.print(table)
        sys.stdout.flush()
    except BrokenPipeError:  # `llmspool config show | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_OK


def write_stdout(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_OK
