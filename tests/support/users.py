"""Real Unix users for ownership tests: created with ``useradd`` (and removed after), and a way
to call the daemon as one of them (a forked child that drops to the user's uid and gid before
it connects, so the socket's peer credentials are the user's)."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int


def can_create_users() -> str | None:
    """Why users cannot be created here (None: they can)."""
    if os.geteuid() != 0:
        return "creating Unix users needs root"
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        return "useradd and groupadd are not installed"
    return None


@contextlib.contextmanager
def temporary_users(count: int, *, group_of_last: bool = False) -> Iterator[
        tuple[list[User], str | None]]:
    """``count`` new users (no home, no login); with ``group_of_last``, a new group that only
    the last of them is a member of. All are removed afterwards."""
    tag = secrets.token_hex(3)
    group = f"lsp-g-{tag}" if group_of_last else None
    names = [f"lsp-{tag}-{i}" for i in range(count)]
    made: list[str] = []
    try:
        if group is not None:
            _run("groupadd", group)
        for index, name in enumerate(names):
            extra = ["-G", group] if group is not None and index == count - 1 else []
            _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name)
            made.append(name)
        users = [User(name, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid)
                 for name in names]
        yield users, group
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        if group is not None:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def as_user(user: User, work: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Run ``work`` in a forked child with ``user``'s uid, gid and groups; its JSON-ready
    result (or the error it raised, re-raised here)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, work, report, and leave without cleanup
        status = 0
        try:
            os.close(read_end)
            os.initgroups(user.name, user.gid)
            os.setgid(user.gid)
            os.setuid(user.uid)
            payload = orjson.dumps({"result": work()}, default=str)
        except BaseException as exc:  # reported to the parent
            payload = orjson.dumps({"error": f"{type(exc).__name__}: {exc}"})
            status = 1
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    answer = orjson.loads(raw)
    if "error" in answer:
        raise RuntimeError(f"as {user.name}: {answer['error']}")
    return answer["result"]
