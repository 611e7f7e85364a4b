"""``llmspool store check`` and ``llmspool store migrate`` as an operator runs them, on both
backends: the real CLI in a subprocess against a SQLite file and against a real PostgreSQL
server (``postgres_url``: a fresh database on the server the test session starts)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from llmspool.store.backend import Backend
from llmspool.store.database import migrations


def llmspool(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("LLMSPOOL_", "OPENAI_", "COLUMNS"))}
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "llmspool", *args], capture_output=True,
                          text=True, timeout=60, env=clean)


@pytest.fixture(params=[Backend.SQLITE, Backend.POSTGRESQL], ids=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Backend, dict[str, str], str]:
    """(backend, the environment that points the CLI at a new store, its database target)."""
    backend: Backend = request.param
    env = {"LLMSPOOL_STATE_DIR": str(tmp_path / "state")}
    if backend is Backend.POSTGRESQL:
        url: str = request.getfixturevalue("postgres_url")
        env["LLMSPOOL_STORE__URL"] = url
        return backend, env, url
    return backend, env, str(tmp_path / "state" / "llmspool.sqlite3")


def check(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = llmspool("store", "check", "--json", env=env)
    return done.returncode, json.loads(done.stdout)


def test_a_new_store_is_behind_until_migrated_then_current(
    store: tuple[Backend, dict[str, str], str],
) -> None:
    backend, env, _target = store
    names = [name for _v, name, _sql in migrations(backend)]
    status, report = check(env)
    assert status == 1
    assert report["backend"] == backend.value and report["verdict"] == "behind"
    assert report["version"] == 0 and report["pending"] == names

    migrated = llmspool("store", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"applied {len(names)} migration(s)" in migrated.stdout
    status, report = check(env)
    assert (status, report["verdict"], report["pending"]) == (0, "current", [])
    assert report["version"] == report["latest"] == len(names)
    human = llmspool("store", "check", env=env)
    assert human.returncode == 0 and "current" in human.stdout

    again = llmspool("store", "migrate", env=env)
    assert again.returncode == 0 and "already current; nothing to do" in again.stdout


def test_a_store_migrated_by_a_newer_llmspool_is_refused(
    store: tuple[Backend, dict[str, str], str],
) -> None:
    backend, env, target = store
    assert llmspool("store", "migrate", env=env).returncode == 0
    if backend is Backend.SQLITE:
        with sqlite3.connect(target) as connection:
            connection.execute("PRAGMA user_version=99")
    else:
        with psycopg.connect(target, autocommit=True) as connection:
            connection.execute("INSERT INTO llmspool_schema VALUES (99, 'future.sql', 0)")
    status, report = check(env)
    assert (status, report["verdict"], report["version"]) == (1, "newer", 99)
    refused = llmspool("store", "migrate", env=env)
    assert refused.returncode == 1
    assert "schema version 99, newer than this llmspool knows" in refused.stderr


def test_hosts_migrating_one_postgresql_database_at_once_apply_each_migration_once(
    postgres_url: str,
) -> None:
    env = {"LLMSPOOL_STORE__URL": postgres_url}
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("LLMSPOOL_", "OPENAI_", "COLUMNS"))}
    racing = [subprocess.Popen([sys.executable, "-m", "llmspool", "store", "migrate"],
                               env={**clean, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=60) for process in racing]
    assert [process.returncode for process in racing] == [0, 0, 0, 0], outputs
    applied = [out for out, _err in outputs if "applied" in out]
    assert len(applied) >= 1  # the others found some or all of it done
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute("SELECT version FROM llmspool_schema ORDER BY 1").fetchall()
    assert [row[0] for row in rows] == list(range(1, len(migrations(Backend.POSTGRESQL)) + 1))


def test_an_unreachable_or_wrong_store_says_what_to_check(tmp_path: Path) -> None:
    socket_dir = tmp_path / "no-server"
    gone = llmspool("store", "check", "--url", f"postgresql://x@/db?host={socket_dir}",
                    env={})
    assert gone.returncode == 1
    assert "cannot reach the PostgreSQL store" in gone.stderr and "[store] url" in gone.stderr
    wrong = llmspool("store", "check", "--url", "mysql://x/db", env={})
    assert wrong.returncode == 78 and "expected a postgresql:// URL" in wrong.stderr
    in_config = llmspool("store", "check", env={"LLMSPOOL_STORE__URL": "sqlite:///x"})
    assert in_config.returncode == 78 and "store.url" in in_config.stderr
