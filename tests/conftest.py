"""Fixtures shared by every test: a real simulator, a real daemon in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Daemon, Sim, start_daemon, start_sim, stop_process


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    started = start_sim(tmp_path)
    try:
        yield started
    finally:
        stop_process(started.process)


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    started = start_daemon(tmp_path, sim.url)
    try:
        yield started
    finally:
        started.terminate()
