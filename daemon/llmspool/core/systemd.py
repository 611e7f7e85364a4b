"""The daemon's side of systemd: socket activation, readiness, status and the watchdog.

This module owns the three small protocols systemd speaks with a service, written here with
the standard library because each is a few lines (the ``sdnotify`` package is unmaintained):

- **socket activation** (``sd_listen_fds(3)``): :func:`listen_fds` takes the listening sockets
  systemd passed as fds 3, 4, ... (``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``), marks
  them close-on-exec and removes those variables so that no child inherits them.
- **notification** (``sd_notify(3)``): :class:`Notifier` sends ``READY=1``, ``RELOADING=1``,
  ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``EXTEND_TIMEOUT_USEC=...`` datagrams to
  ``$NOTIFY_SOCKET`` (a path, or an abstract address written ``@name``). Without
  ``NOTIFY_SOCKET`` every method is a cheap no-op, so the daemon calls them unconditionally.
  A failed send never raises into the daemon; it is logged once.
- **the watchdog** (``sd_watchdog_enabled(3)``): :meth:`Notifier.watchdog_interval` reads
  ``WATCHDOG_USEC``/``WATCHDOG_PID`` and :func:`run_watchdog` is the task, run in the daemon's
  task group, that pings at half the configured timeout. Because the ping comes from the event
  loop, a wedged loop stops the pings and systemd restarts the service.

Nothing here holds global state: the daemon builds one :class:`Notifier` at start-up and hands
it to whoever needs it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType

import anyio
import anyio.abc

__all__ = [
    "SD_LISTEN_FDS_START",
    "Notifier",
    "listen_fds",
    "listen_fds_with_names",
    "run_watchdog",
]

logger = logging.getLogger(__name__)

#: The first fd systemd passes; fds 0-2 are stdin, stdout and stderr.
SD_LISTEN_FDS_START = 3

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds_with_names(
    environ: MutableMapping[str, str] | None = None,
) -> list[tuple[str, socket.socket]]:
    """Take the sockets systemd passed, each with its name from ``FileDescriptorName=``.

    Returns ``[]`` when the process was not socket-activated, or when the variables were meant
    for another process (``LISTEN_PID`` is not ours). The ``LISTEN_*`` variables are removed
    from ``environ`` (default ``os.environ``) in every case, as ``sd_listen_fds(1)`` does, so a
    child process never mistakes them for its own. A name defaults to ``"unknown"`` as in
    systemd. A passed fd that is not a socket is logged and skipped.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    pid_text = env.get("LISTEN_PID")
    count_text = env.get("LISTEN_FDS")
    names_text = env.get("LISTEN_FDNAMES")
    for name in _LISTEN_VARS:
        env.pop(name, None)

    if pid_text is None or count_text is None:
        return []
    try:
        pid = int(pid_text)
        count = int(count_text)
    except ValueError:
        logger.warning(
            "ignoring malformed socket activation variables LISTEN_PID=%r LISTEN_FDS=%r",
            pid_text,
            count_text,
        )
        return []
    if pid != os.getpid() or count <= 0:
        return []

    names = names_text.split(":") if names_text else []
    taken: list[tuple[str, socket.socket]] = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else "unknown"
        try:
            os.set_inheritable(fd, False)
            # fileno= makes Python ask the kernel for the family, type and protocol.
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            logger.warning(
                "systemd passed fd %d (%s) that is not a usable socket: %s", fd, name, exc
            )
            continue
        taken.append((name, sock))
    return taken


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Take the sockets systemd passed (fds 3, 4, ...); ``[]`` when not socket-activated.

    See :func:`listen_fds_with_names`, which this calls; the names are dropped.
    """
    return [sock for _, sock in listen_fds_with_names(environ)]


def _notify_address(value: str) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, or None if we cannot speak to it."""
    if value.startswith("@"):
        # Abstract namespace: systemd writes the leading NUL byte as "@".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Newer systemd may hand a "vsock:" address to a VM guest; not a case for this daemon.
    return None


def _one_line(text: str) -> str:
    """A value fit for one ``KEY=VALUE`` line: newlines would start a new assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends ``sd_notify`` messages to systemd; a no-op when not run under systemd.

    Build it with :meth:`from_env`. Every method returns at once: the socket is non-blocking,
    and a message that cannot be sent is dropped with one warning in the log for the life of
    the notifier, never an exception.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """``address`` is a filesystem path or ``"\\0name"`` (None: send nothing).

        ``watchdog_usec`` is the watchdog timeout systemd asked this process to honour.
        """
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` describe.

        ``environ`` defaults to ``os.environ``; it is read, never changed.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        raw_address = env.get("NOTIFY_SOCKET", "")
        address = _notify_address(raw_address) if raw_address else None
        if raw_address and address is None:
            logger.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", raw_address)
        return cls(address, watchdog_usec=_watchdog_usec_for_us(env))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``NOTIFY_SOCKET`` was set and understood)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is complete (``READY=1``), with an optional status line.

        Also send it again after a reload has finished.
        """
        self._send("READY=1", status)

    def reloading(self) -> None:
        """Tell systemd a configuration reload has begun; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd 253+) uses to match the
        reload to this message; older systemd ignores it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", None, f"MONOTONIC_USEC={now_usec}")

    def stopping(self, status: str | None = None) -> None:
        """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
        self._send("STOPPING=1", status)

    def status(self, text: str) -> None:
        """Set the one-line status ``systemctl status`` shows."""
        self._send(None, text)

    def watchdog(self) -> None:
        """Ping the watchdog (``WATCHDOG=1``)."""
        self._send("WATCHDOG=1", None)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before systemd's start, stop or reload timeout fires.

        For a start-up or drain that is known to be slow (a long migration, many open batches).
        """
        usec = max(0, round(seconds * 1_000_000))
        self._send(f"EXTEND_TIMEOUT_USEC={usec}", None)

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of ``WATCHDOG_USEC``, as systemd recommends.

        None when there is no watchdog for this process: ``WATCHDOG_USEC`` unset or not
        positive, ``WATCHDOG_PID`` naming another process, or no ``NOTIFY_SOCKET``.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the datagram socket; later messages open a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, state: str | None, status: str | None, *extra: str) -> None:
        if self._address is None:
            return
        lines = [line for line in (state, *extra) if line is not None]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        message = "\n".join(lines).encode()
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Never stall the event loop on a receiver that is not reading.
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "cannot notify systemd at NOTIFY_SOCKET (%s); further failures are not logged",
                    exc,
                )


def _watchdog_usec_for_us(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if the watchdog is meant for this process, else None."""
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID")
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != os.getpid():
            return None
    except ValueError:
        logger.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec_text, pid_text)
        return None
    return usec if usec > 0 else None


async def run_watchdog(
    notifier: Notifier,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Ping systemd's watchdog at :meth:`Notifier.watchdog_interval` until cancelled.

    Start it with ``await task_group.start(run_watchdog, notifier)``. Returns at once (after
    reporting started) when there is no watchdog. Pings keep to a fixed schedule, so a slow
    wake-up does not push every later ping back.
    """
    interval = notifier.watchdog_interval()
    task_status.started()
    if interval is None:
        return
    next_ping = anyio.current_time()
    while True:
        notifier.watchdog()
        next_ping += interval
        now = anyio.current_time()
        if next_ping < now:
            # The loop was blocked for more than an interval; restart the schedule from now.
            next_ping = now + interval
        await anyio.sleep(next_ping - now)
