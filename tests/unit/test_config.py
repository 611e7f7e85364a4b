"""Config: complete defaults, refusals that name the key, environment overrides, and the
documented etc/llmspool.toml that must match the code's defaults key for key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from llmspool.core.config.sections import Config
from llmspool.core.config.tables import ConfigProblems
from llmspool.core.config_load import config_from_table, config_to_table, load_config
from llmspool.core.errors import ConfigError
from llmspool.sim.config import SimConfig

REPO = Path(__file__).resolve().parents[2]


def test_no_file_gives_complete_defaults() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.daemon.socket_mode == 0o660
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[daemon]\nsokcet = 'x'\n", "daemon.sokcet"),
        ("[deamon]\n", "deamon"),
        ("[daemon]\nshutdown_grace = 'soon'\n", "daemon.shutdown_grace"),
        ("[daemon]\nmax_body_size = '12 parsecs'\n", "daemon.max_body_size"),
        ("[daemon]\nsocket_mode = '0999'\n", "daemon.socket_mode"),
        ("[daemon]\nmax_in_flight = -1\n", "daemon.max_in_flight"),
        ("[daemon]\nmax_json_values = 0\n", "daemon.max_json_values"),
        ("[daemon]\nmax_bodies_in_memory = '16MiB'\n", "daemon.max_bodies_in_memory"),
        ("[daemon]\nbodies_wait = 'a while'\n", "daemon.bodies_wait"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level"),
        ("[providers.openai]\ntimeout = 5\nmodels = 'gpt-4o'\n", "providers.openai.models"),
        ("[providers.openai]\nbase_uri = 'x'\n", "providers.openai.base_uri"),
        ("[tracing]\nenabled = 'maybe'\n", "tracing.enabled"),
        ("[store]\nsync_interval = '0s'\n", "store.sync_interval"),
        ("[store]\nsync_interval = '2m'\n", "store.sync_interval"),
        ("daemon = 3\n", "daemon"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_missing_and_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*config init"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_environment_overrides_any_key() -> None:
    config = load_config(environ={
        "LLMSPOOL_SOCKET": "/tmp/x.sock",
        "LLMSPOOL_STATE_DIR": "/tmp/state",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "LLMSPOOL_DAEMON__MAX_BODY_SIZE": "1MiB",
        "LLMSPOOL_PROVIDERS__OPENAI__MODELS": '["gpt-4o"]',
        "LLMSPOOL_DAEMON__MAX_IN_FLIGHT": "12",
    })
    assert config.daemon.socket == "/tmp/x.sock"
    assert config.daemon.state_dir == "/tmp/state"
    assert config.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert config.daemon.max_body_size == 1024 * 1024
    assert config.providers["openai"].models == ("gpt-4o",)
    assert config.daemon.max_in_flight == 12
    with pytest.raises(ConfigError, match=r"daemon\.max_in_flight"):
        load_config(environ={"LLMSPOOL_DAEMON__MAX_IN_FLIGHT": "many"})


def test_table_round_trip_is_exact() -> None:
    table = config_to_table(Config())
    assert config_from_table(table) == Config()


def test_documented_config_matches_the_defaults_key_for_key() -> None:
    documented = tomllib.loads((REPO / "etc" / "llmspool.toml").read_text())
    # The file documents the daemon's tables and the simulator's [sim] (which the daemon's
    # config leaves to llmspool.sim.config).
    defaults = config_to_table(Config()) | {"sim": SimConfig().to_table()}
    # The default fault and flex outage lists are empty: the file documents [[sim.faults]] and
    # [[sim.flex_outages]] in comments, since an empty array of tables cannot be written as tables.
    assert defaults["sim"].pop("faults") == []
    assert defaults["sim"].pop("flex_outages") == []
    assert documented == defaults
    assert config_from_table(documented) == Config()


def test_every_documented_key_has_a_comment() -> None:
    lines = (REPO / "etc" / "llmspool.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            above = lines[number - 1].lstrip()
            assert above.startswith("#"), f"line {number + 1} has no comment: {line}"


def test_the_shipped_reference_config_is_etc_llmspool_toml() -> None:
    # `llmspool config init` writes the package's copy; pip users have no etc/. It is a symlink
    # to etc/llmspool.toml, as defaults/pricing.toml is to etc/pricing.toml: one file to edit.
    shipped = REPO / "daemon" / "llmspool" / "defaults" / "llmspool.toml"
    assert shipped.read_bytes() == (REPO / "etc" / "llmspool.toml").read_bytes(), (
        "daemon/llmspool/defaults/llmspool.toml must be etc/llmspool.toml (a symlink to it)")


def test_config_init_writes_the_commented_reference_that_loads_back(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "llmspool.toml"
    cli = [sys.executable, "-m", "llmspool", "config", "init"]
    subprocess.run([*cli, str(target)], check=True, capture_output=True, timeout=60)
    assert target.read_text() == (REPO / "etc" / "llmspool.toml").read_text()
    assert load_config(target, environ={}) == Config()
    again = subprocess.run([*cli, str(target)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = subprocess.run([*cli, str(target), "--force"], capture_output=True, timeout=60)
    assert forced.returncode == 0


def test_daemon_refuses_a_bad_config_with_the_key_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[daemon]\nshutdown_grace = 'whenever'\n")
    result = subprocess.run(
        [sys.executable, "-m", "llmspool", "daemon", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 78  # EX_CONFIG: systemd does not restart it
    assert "daemon.shutdown_grace" in result.stderr and "90s" in result.stderr


def test_a_config_the_daemon_cannot_read_exits_78_with_one_line(tmp_path: Path) -> None:
    # A directory stands for a file the service user may not read (root reads any file).
    result = subprocess.run(
        [sys.executable, "-m", "llmspool", "daemon", "--config", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"cannot read {tmp_path}" in line and "read access" in line
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, environ={})


def test_every_problem_in_a_file_is_found_in_one_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[daemon]\nlog_level = 'loud'\nsokcet = 'x'\n\n[breaker]\nfailures = 0\n\n"
                    "[failover]\nopenai = 'nope'\n")
    with pytest.raises(ConfigProblems) as caught:
        load_config(path, environ={"LLMSPOOL_JOBS__MAX_ATTEMPTS": "often"})
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["daemon.log_level", "daemon.sokcet", "breaker.failures", "failover.openai",
                    "jobs.max_attempts"]
    # The daemon's one line names the first and counts the rest.
    assert str(caught.value).startswith("daemon.log_level: expected one of")
    assert "and 4 more; `llmspool config check` lists them all" in str(caught.value)


def test_price_files_are_a_path_or_a_list_relative_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.toml"
    path.parent.mkdir()
    path.write_text('[pricing]\nfile = "mine.toml"\n')
    assert load_config(path, environ={}).pricing.file == (str(path.parent / "mine.toml"),)
    path.write_text('[pricing]\nfile = ["/abs/a.toml", "b.toml"]\n')
    assert load_config(path, environ={}).pricing.file == ("/abs/a.toml",
                                                          str(path.parent / "b.toml"))
    assert load_config(environ={"LLMSPOOL_PRICING__FILE": "x.toml"}).pricing.file == ("x.toml",)
    path.write_text("[pricing]\nfile = 3\n")
    with pytest.raises(ConfigError, match=r"^pricing\.file: expected a path or a list"):
        load_config(path, environ={})
    table = config_to_table(load_config(environ={"LLMSPOOL_PRICING__FILE": '["a", "b"]'}))
    assert table["pricing"]["file"] == ["a", "b"]
    assert config_from_table(table).pricing.file == ("a", "b")
