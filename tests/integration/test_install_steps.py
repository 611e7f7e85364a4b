"""README's "Install as a service" steps, followed as written (as root, as CI runs).

The shell block is read from README.md and run with ``bash -e``, with three kinds of change so
that it can run inside a test: paths move under a temporary root (``/opt/llmspool``,
``/usr/local/bin``, ``/etc/llmspool``, ``/var/lib/llmspool``), the service user gets a name of
its own (removed afterwards), and the steps that need a running systemd (``apt-get``, ``cp`` to
/etc/systemd, ``systemctl``) are left out: the unit files are checked by
``test_systemd_units.py`` and ``test_systemd_daemon.py``. ``pip install .`` installs the
project itself (not its dependencies, which this interpreter already has and which the new
venv sees through a ``.pth`` file), so the test does not download the dependency tree.

Then, as the service user (a forked child with its uid and gid), the config is read exactly as
the daemon reads it. The README's old step (``install -d -m 0750 /etc/llmspool``, owned by
root) is shown to fail that way: the daemon would exit 78.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.users import User, as_user, can_create_users

REPO = Path(__file__).resolve().parents[2]
why_not = can_create_users()
pytestmark = pytest.mark.skipif(
    why_not is not None and not os.environ.get("CI"),
    reason=f"the install steps create a system user: {why_not}")
LEFT_OUT = ("apt-get ", "cp systemd/", "systemctl ")


def install_block() -> list[str]:
    """The commands of README's install section, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Install as a service"):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture
def root() -> Iterator[Path]:
    # Traversable by the service user, unlike pytest's private tmp_path.
    made = Path(tempfile.mkdtemp(prefix="llmspool-install-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def service_name() -> Iterator[str]:
    name = f"lsp-svc-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def adapted(command: str, root: Path, name: str) -> str:
    """One README command, moved under ``root`` and made to name the test's service user."""
    for path in ("/opt/llmspool", "/usr/local/bin", "/etc/llmspool", "/var/lib/llmspool"):
        command = command.replace(path, f"{root}{path}")
    command = re.sub(r"(-g |chgrp )llmspool\b", rf"\g<1>{name}", command)
    if command.startswith("useradd "):
        command = re.sub(r"\bllmspool$", name, command.strip())
    if re.search(r"/bin/pip install \.$", command.strip()):
        command = command.strip() + " --no-deps --quiet"
    return command


def test_the_readme_install_steps_give_the_service_user_a_config_it_can_read(
        root: Path, service_name: str) -> None:
    steps = install_block()
    assert any(step.startswith("python3 -m venv") for step in steps), steps
    assert any("config check" in step for step in steps), steps
    script = ["set -euo pipefail", f"mkdir -p {root}/usr/local/bin {root}/etc"]
    for step in steps:
        if step.startswith(LEFT_OUT):
            continue
        script.append(adapted(step, root, service_name))
        if step.startswith("python3 -m venv"):
            # The dependencies this interpreter has, visible to the new venv (see above).
            script.append(
                f"echo {sysconfig.get_paths()['purelib']} > "
                f"\"$({root}/opt/llmspool/bin/python -c "
                "'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/deps.pth\"")
    # python3 on PATH is this interpreter's, as on a Debian host it is the system's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {key: value for key, value in env.items() if not key.startswith("LLMSPOOL_")}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n---\n" + "\n".join(script)

    # What the unit's ExecStart runs is there, and it is llmspool.
    version = subprocess.run([f"{root}/usr/local/bin/llmspool", "--version"],
                             capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("llmspool"), version
    config = root / "etc" / "llmspool" / "llmspool.toml"
    text = config.read_text()
    assert "[daemon]" in text and text.count("\n# ") > 50  # the commented file

    # The service user reads it as the daemon does; the key file stays root's. (Read once
    # here first: the forked child then needs no module it may not be able to read.)
    assert load(config) == "/var/lib/llmspool"
    entry = pwd.getpwnam(service_name)
    user = User(service_name, entry.pw_uid, entry.pw_gid)
    assert as_user(user, lambda: load(config)) == "/var/lib/llmspool"
    key_mode = (root / "etc" / "llmspool" / "openai_api_key").stat().st_mode & 0o777
    assert key_mode == 0o600

    # The step README had before: a root-only directory the service user cannot read.
    (root / "etc" / "llmspool").chmod(0o750)
    os.chown(root / "etc" / "llmspool", 0, 0)
    with pytest.raises(RuntimeError, match="cannot read"):
        as_user(user, lambda: load(config))


def load(path: Path) -> str:
    """The config as the daemon loads it (its state directory, to show it was read)."""
    from llmspool.core.config_load import load_config

    return load_config(path, environ={}).daemon.state_dir
