"""The unit files in systemd/ load cleanly: `systemd-analyze verify` has nothing to say.

systemd-analyze reports a misspelled directive or a bad value as a warning and still exits 0,
so the test fails on any output line that names one of our units, not only on the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
UNITS = ("llmspool.socket", "llmspool.service")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: `apt-get install systemd` on the CI image")
        pytest.skip("systemd-analyze is not installed")
    return found


def installed_console_script() -> str:
    """An executable that exists here, to stand in for ExecStart's /usr/local/bin/llmspool."""
    script = Path(sys.executable).parent / "llmspool"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return shutil.which("true") or "/bin/true"


def staged_units(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart names an executable that exists on this machine."""
    staged = []
    for name in UNITS:
        text = (UNIT_DIR / name).read_text()
        if name.endswith(".service"):
            text, count = re.subn(
                r"^ExecStart=(\S+)",
                lambda _: f"ExecStart={installed_console_script()}",
                text,
                flags=re.MULTILINE,
            )
            assert count == 1, "llmspool.service must have exactly one ExecStart="
        path = tmp_path / name
        path.write_text(text)
        staged.append(path)
    return staged


def test_unit_files_verify_cleanly(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    staged = staged_units(tmp_path)
    done = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, staged)],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    about_us = [line for line in output.splitlines() if "llmspool" in line]
    assert about_us == [], "systemd-analyze verify complained:\n" + output
    assert done.returncode == 0, output


def test_service_and_socket_agree() -> None:
    """What the daemon and the operator rely on, stated in the units themselves."""
    service = (UNIT_DIR / "llmspool.service").read_text()
    socket_unit = (UNIT_DIR / "llmspool.socket").read_text()

    def values(text: str, key: str) -> list[str]:
        return re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)

    assert values(service, "Type") == ["notify"]
    assert values(service, "NotifyAccess") == ["main"]
    assert values(service, "WatchdogSec") != []
    assert values(service, "Restart") == ["on-failure"]
    assert values(socket_unit, "Service") == ["llmspool.service"]
    assert "llmspool.socket" in " ".join(values(service, "Requires"))
    # The socket belongs to the socket unit: the service must not delete /run/llmspool when
    # it stops, or socket activation breaks until the socket unit is restarted.
    assert values(socket_unit, "ListenStream") == ["/run/llmspool/llmspool.sock"]
    assert values(service, "RuntimeDirectory") == ["llmspool"]
    assert values(service, "RuntimeDirectoryPreserve") == ["yes"]
    # The key comes in as a credential named as the daemon expects it.
    assert any(v.startswith("openai_api_key:") for v in values(service, "LoadCredential"))
