"""Steady (npm ``@stdy/cli`` 0.22.1) serving OpenAI's published OpenAPI spec, for conformance.

Steady validates each request against the spec and says so in ``x-steady-request-valid``;
invalid ones get 400. ``.ci/run`` installs it into ``.tools/``; when it is missing outside CI the
tests are skipped with the install command, and in CI they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "reference" / "openai-openapi.yaml"
INSTALL = "npm install --prefix .tools @stdy/cli@0.22.1"


def _steady_binary() -> str | None:
    local = REPO / ".tools" / "node_modules" / ".bin" / "steady"
    return str(local) if local.exists() else shutil.which("steady")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def steady_url() -> Iterator[str]:
    """Base URL of a Steady server (the spec's paths have no /v1 prefix)."""
    binary = _steady_binary()
    problems = []
    if binary is None:
        problems.append(f"Steady is not installed (run: {INSTALL})")
    if not SPEC.exists():
        problems.append(f"the OpenAPI spec is missing at {SPEC}")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))
    assert binary is not None
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "-p", str(port), "-q",
         "--validator-query-array-format=brackets", "--validator-form-array-format=brackets",
         "--validator-query-object-format=brackets", "--validator-form-object-format=brackets",
         str(SPEC)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/_x-steady/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        with contextlib.suppress(AssertionError):  # reported below, with Steady's own words
            wait_for(lambda: healthy() or process.poll() is not None, timeout=60, every=0.2,
                     what="Steady to answer its health check")
        if process.poll() is not None or not healthy():
            error = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"Steady did not start: {error[-2000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        if process.stderr:
            process.stderr.close()
