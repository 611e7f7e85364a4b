"""The listening socket: created on the configured path, or taken from systemd.

A socket file left by a crashed daemon is replaced; a socket a live daemon answers on is not:
starting a second daemon on it fails with a message that says so.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from llmspool.core.errors import StartupError

BACKLOG = 2048


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """A listening Unix stream socket at ``path`` with file mode ``mode``."""
    _clear_stale_socket(path)
    try:
        if not path.parent.exists():
            # Reachable by the socket's users whatever the daemon's umask (0077); who may
            # connect is the socket's own mode.
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
    except OSError as exc:
        raise StartupError(
            f"cannot create {path.parent} for the socket: {exc.strerror}; set [daemon] socket "
            "or LLMSPOOL_SOCKET to a path this user can write"
        ) from None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, mode)
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        hint = " (socket paths are limited to 107 bytes)" if len(str(path)) > 107 else ""
        raise StartupError(f"cannot listen on {path}: {exc.strerror or exc}{hint}") from None
    listener.setblocking(False)
    return listener


def _clear_stale_socket(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"{path} exists and is not a socket; move it away or pick another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot check whether {path} is in use: {exc.strerror}") from None
        path.unlink(missing_ok=True)  # nobody listens: left behind by a crash
        return
    finally:
        probe.close()
    raise StartupError(
        f"another llmspool daemon is already serving {path}; stop it first "
        "(systemctl stop llmspool) or give this one another --socket"
    )


def remove_socket_file(path: Path, listener: socket.socket) -> None:
    """Remove our socket file, if it is still ours (same inode as the one we bound)."""
    try:
        ours = os.fstat(listener.fileno()).st_ino
        if path.stat().st_ino == ours or ours == 0:
            path.unlink(missing_ok=True)
    except OSError:
        path.unlink(missing_ok=True)
