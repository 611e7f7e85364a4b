"""``llmspool config init|check|show`` and ``llmspool plugins`` as a newcomer runs them: the real
CLI in a subprocess, its exit status and what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = (REPO / "etc" / "llmspool.toml").read_text()


def llmspool(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with none of the caller's llmspool or OpenAI variables (a clean shell)."""
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("LLMSPOOL_", "OPENAI_", "COLUMNS"))}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "llmspool", *args], capture_output=True,
                          text=True, timeout=60, env=clean, cwd=cwd)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- config init -------------------------------------------------------------------------------


def test_init_writes_the_commented_reference_and_its_help_names_no_source_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "etc" / "llmspool.toml"
    written = llmspool("config", "init", str(target))
    assert written.returncode == 0, written.stderr
    assert target.read_text() == REFERENCE
    assert f"llmspool config check {target}" in written.stdout
    assert "# Largest request body accepted" in target.read_text()  # commented, key by key
    to_stdout = llmspool("config", "init")
    assert to_stdout.returncode == 0 and to_stdout.stdout == REFERENCE
    again = llmspool("config", "init", str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    assert llmspool("config", "init", str(target), "--force").returncode == 0
    helps = llmspool("config", "init", "--help").stdout + llmspool("--help").stdout
    assert "etc/" not in helps and "source" not in helps


# -- config check ------------------------------------------------------------------------------


def test_check_passes_the_reference_and_finds_it_as_the_daemon_would(tmp_path: Path) -> None:
    path = write(tmp_path / "llmspool.toml", REFERENCE)
    explicit = llmspool("config", "check", str(path))
    assert explicit.returncode == 0, explicit.stderr
    assert explicit.stdout.startswith(f"{path}: ok (providers: openai (openai); prices: "
                                      "the bundled pricing.toml, version p-")
    from_env = llmspool("config", "check", env={"LLMSPOOL_CONFIG": str(path)})
    assert from_env.returncode == 0 and from_env.stdout.startswith(f"{path}: ok")
    none = llmspool("config", "check")
    assert none.returncode == 0
    assert "no config file" in none.stdout and "built-in defaults" in none.stdout
    missing = llmspool("config", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78
    assert "does not exist (write one with `llmspool config init" in missing.stderr


def test_check_prints_one_line_per_problem_naming_the_key_and_exits_78(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", """
[daemon]
log_level = "loud"
sokcet = "/tmp/x.sock"

[providers.openai]
timeout = "soon"

[breaker]
failures = 0
""")
    checked = llmspool("config", "check", str(path),
                       env={"LLMSPOOL_JOBS__MAX_ATTEMPTS": "often"})
    assert checked.returncode == 78
    assert checked.stdout == ""
    lines = checked.stderr.splitlines()
    assert lines[:5] == [
        "llmspool: config: daemon.log_level: expected one of debug, info, warning, error, "
        "got 'loud'",
        "llmspool: config: daemon.sokcet: unknown key (known here: admins, bodies_wait, "
        "header_timeout, keepalive_timeout, log_level, max_bodies_in_memory, max_body_size, "
        "max_connections, max_header_size, max_headers, max_in_flight, max_json_values, "
        "shutdown_grace, socket, socket_mode, state_dir)",
        "llmspool: config: providers.openai.timeout: expected a duration like '250ms', '90s', "
        "'15m', '24h' or '1h30m', got 'soon'",
        "llmspool: config: breaker.failures: must be at least 1",
        "llmspool: config: jobs.max_attempts: expected a non-negative integer, got 'often' "
        "(set by LLMSPOOL_JOBS__MAX_ATTEMPTS)",
    ]
    assert lines[5] == (f"llmspool: config: 5 problems in {path}; the daemon would refuse to "
                        "start (exit 78)")
    assert len(lines) == 6
    # The daemon refuses the same file with the first problem, in one line, and 78 too.
    daemon = llmspool("daemon", "--config", str(path))
    assert daemon.returncode == 78
    [line] = daemon.stderr.strip().splitlines()
    assert line.startswith("llmspool: config: daemon.log_level: expected one of")
    assert "and 3 more; `llmspool config check` lists them all" in line


def test_a_span_limit_opentelemetry_refuses_is_named_in_one_line_not_a_traceback(
        tmp_path: Path) -> None:
    # The SDK reads these as its module loads, and raised there, out of the daemon's start.
    bad = {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "lots", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-1",
           "OTEL_SPAN_EVENT_COUNT_LIMIT": "unset", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": " 7 "}
    checked = llmspool("config", "check", env=bad)
    assert checked.returncode == 78
    assert checked.stderr.splitlines()[:2] == [
        "llmspool: config: OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '-1' is not a whole number of 0 "
        "or more (nor 'unset', for no limit): OpenTelemetry refuses it; correct it or unset "
        "the variable",
        "llmspool: config: OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT: 'lots' is not a whole number of 0 "
        "or more (nor 'unset', for no limit): OpenTelemetry refuses it; correct it or unset "
        "the variable",
    ]
    assert "2 problems" in checked.stderr
    daemon = llmspool("daemon", "--socket", str(tmp_path / "s.sock"),
                      env={**bad, "LLMSPOOL_STATE_DIR": str(tmp_path)})
    assert daemon.returncode == 78
    [line] = daemon.stderr.strip().splitlines()
    assert line.startswith("llmspool: config: OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '-1' is not")


def test_check_refuses_a_plugin_key_of_the_wrong_type_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[providers.openai]\norganization = 42\n'
                                      'orgnization = "org-1"\n\n'
                                      '[providers.local]\nplugin = "ollama"\nbase_url = false\n')
    checked = llmspool("config", "check", str(path))
    assert checked.returncode == 78
    lines = checked.stderr.splitlines()
    assert lines[0] == "llmspool: config: providers.openai.organization: expected a string, got 42"
    assert lines[1].startswith("llmspool: config: providers.openai.orgnization: unknown key "
                               "(plugin 'openai' adds organization, project;")
    assert lines[2] == ("llmspool: config: providers.local.base_url: expected a string, "
                        "got False")
    good = write(tmp_path / "good.toml", '[providers.openai]\norganization = "org-1"\n\n'
                                         '[providers.local]\nplugin = "ollama"\n')
    checked = llmspool("config", "check", str(good))
    assert checked.returncode == 0, checked.stderr
    assert "providers: openai (openai), local (ollama)" in checked.stdout


def test_check_reads_the_price_files(tmp_path: Path) -> None:
    write(tmp_path / "mine.toml", '[openai."my-model".standard]\ninput = 1\noutput = 2\n')
    path = write(tmp_path / "c.toml", '[pricing]\nfile = "mine.toml"\n')
    checked = llmspool("config", "check", str(path), cwd=Path("/"))
    assert checked.returncode == 0, checked.stderr
    assert f"prices: the bundled pricing.toml + {tmp_path / 'mine.toml'}" in checked.stdout
    write(tmp_path / "mine.toml", '[openai."my-model".standard]\noutput = 2\n')
    checked = llmspool("config", "check", str(path))
    assert checked.returncode == 78
    assert checked.stderr.splitlines()[0] == (
        "llmspool: config: pricing.openai.my-model.standard.input: is required "
        f"(in {tmp_path / 'mine.toml'})")


# -- config show -------------------------------------------------------------------------------


def show_json(path: Path, env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    shown = llmspool("config", "show", str(path), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["config_file"] == str(path)
    return {setting["key"]: setting for setting in document["settings"]}


def test_show_says_where_each_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[daemon]\nlog_level = "debug"\n\n'
                                      '[providers.openai]\norganization = "org-1"\n\n'
                                      '[providers.local]\nplugin = "ollama"\n\n'
                                      '[limits.openai."gpt-4.1-mini"]\nrpm = 10\n')
    settings = show_json(path, env={"LLMSPOOL_SOCKET": "/tmp/s.sock",
                                    "LLMSPOOL_PROVIDERS__OPENAI__TIMEOUT": "15m"})

    def source(key: str) -> tuple[object, object, object]:
        setting = settings[key]
        return setting["value"], setting["source"], setting["origin"]

    assert source("daemon.log_level") == ("debug", "file", str(path))
    assert source("daemon.socket") == ("/tmp/s.sock", "environment", "LLMSPOOL_SOCKET")
    assert source("providers.openai.timeout") == (
        "15m", "environment", "LLMSPOOL_PROVIDERS__OPENAI__TIMEOUT")
    assert source("daemon.max_body_size") == ("32MiB", "default", None)
    assert source("providers.openai.organization") == ("org-1", "file", str(path))
    assert source("providers.openai.project") == ("", "plugin", "openai")
    assert source("providers.local.base_url") == ("http://127.0.0.1:11434/v1", "plugin",
                                                  "ollama")
    # Keys are spelled as TOML spells them: quoted where a bare key cannot hold the name.
    assert source('limits.openai."gpt-4.1-mini".rpm') == (10, "file", str(path))
    assert source("pricing.file") == ("", "default", None)


def test_show_piped_prints_a_table_with_nothing_cut(tmp_path: Path) -> None:
    prices = tmp_path / ("a-rather-long-directory-name-" * 4) / "my-own-prices.toml"
    prices.parent.mkdir()
    write(prices, '[openai."my-model".standard]\ninput = 1\n')
    path = write(tmp_path / "c.toml", f'[pricing]\nfile = "{prices}"\n')
    shown = llmspool("config", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if "pricing.file" in line]
    assert f'"{prices}"' in row and row.rstrip().endswith("│")
    assert "file" in row.split("│")[-2]
    [models] = [line for line in shown.stdout.splitlines() if " sim.models " in line]
    assert '"gpt-4o", "gpt-4o-mini"' in models and '"text-embedding-3-large"]' in models


def test_show_of_a_bad_config_lists_its_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[daemon]\nmax_in_flight = -3\n")
    shown = llmspool("config", "show", str(path))
    assert shown.returncode == 78 and shown.stdout == ""
    assert "daemon.max_in_flight: expected a non-negative integer, got -3" in shown.stderr


# -- plugins -----------------------------------------------------------------------------------


def test_plugins_lists_kinds_versions_capabilities_keys_and_users(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[providers.openai]\n\n[providers.local]\n'
                                      'plugin = "ollama"\n\n[providers.backup]\n'
                                      'plugin = "ollama"\n')
    listed = llmspool("plugins", "--config", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {entry["kind"]: entry for entry in json.loads(listed.stdout)["plugins"]}
    version = metadata.version("llmspool")
    openai, ollama = plugins["openai"], plugins["ollama"]
    assert (openai["package"], openai["version"]) == ("llmspool", version)
    assert openai["capabilities"] == ["chat", "responses", "embeddings", "streaming", "flex",
                                      "priority", "batch"]
    assert ollama["capabilities"] == ["chat", "responses", "embeddings", "streaming"]
    # Each batch tier says what one batch may hold and how a lost one is found again.
    assert openai["batch"]["max_lines"] == 50_000 and openai["batch"]["finds_by_metadata"]
    anthropic = plugins["anthropic"]
    assert anthropic["capabilities"] == ["chat", "streaming", "batch"]
    assert anthropic["batch"]["max_lines"] == 100_000
    assert not anthropic["batch"]["uploads_input"] and not anthropic["batch"]["finds_by_metadata"]
    assert ollama["batch"] is None
    assert [key["name"] for key in openai["keys"]] == ["base_url", "organization", "project"]
    assert openai["used_by"] == ["openai"]
    assert ollama["used_by"] == ["local", "backup"]
    table = llmspool("plugins", "--config", str(path))
    assert table.returncode == 0
    [row] = [line for line in table.stdout.splitlines()
             if line.startswith("│ ollama ") and "llmspool" in line]
    assert f"llmspool {version}" in row and "local, backup" in row
    assert "keys the plugins declare for [providers.NAME]" in table.stdout
    [anthropic_batch] = [line for line in table.stdout.splitlines()
                         if line.startswith("│ anthropic ") and "MiB" in line]
    assert "100,000" in anthropic_batch and "with the create call" in anthropic_batch


@pytest.mark.parametrize("command", [["config", "check"], ["config", "show"], ["plugins"]])
def test_the_new_commands_have_help(command: list[str]) -> None:
    helped = llmspool(*command, "--help")
    assert helped.returncode == 0 and "usage: llmspool" in helped.stdout
