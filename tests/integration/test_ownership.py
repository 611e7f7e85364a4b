"""Each user sees only their own work, through the real socket, as real Unix users: the
socket's peer credentials say who calls. User A's job is invisible to user B (404 for it, its
results and its cancel; absent from B's list), B's ledger and cost reports hold none of A's
calls, and only an admin (a member of a group in ``[daemon] admins``) sees everyone's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import Daemon, Sim, start_daemon, unix_exchange
from tests.support.users import User, as_user, can_create_users, temporary_users

BODY = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 5,
        "messages": [{"role": "user", "content": "Whose answer is this?"}]}
LINE = orjson.dumps({"custom_id": "mine", "method": "POST", "url": "/v1/chat/completions",
                     "body": BODY}) + b"\n"

why_not = can_create_users()
pytestmark = pytest.mark.skipif(
    why_not is not None and not os.environ.get("CI"),
    reason=f"ownership is tested as real Unix users: {why_not}")


@pytest.fixture
def users() -> Iterator[tuple[list[User], str | None]]:
    # CI runs as root: there a missing useradd fails the test rather than skip it.
    with temporary_users(3, group_of_last=True) as made:
        yield made


@pytest.fixture
def shared_daemon(tmp_path: Path, sim: Sim,
                  users: tuple[list[User], str | None]) -> Iterator[Daemon]:
    _people, admins = users
    # The socket in a directory every user may enter, open to all of them (mode 0666).
    directory = Path(tempfile.mkdtemp(prefix="llmspool-owners-"))
    directory.chmod(0o755)
    started = start_daemon(
        tmp_path, sim.url, socket_path=directory / "d.sock",
        config_toml=f'[daemon]\nsocket_mode = "0666"\nadmins = ["{admins}"]\n')
    try:
        yield started
    finally:
        started.terminate()
        (directory / "d.sock").unlink(missing_ok=True)
        directory.rmdir()


def call(daemon: Daemon, user: User, method: str, path: str, body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    """One request over the socket as ``user``: (status, the answer)."""
    status, answer, _headers = exchange(daemon, user, method, path, body, content_type)
    return status, answer


def exchange(daemon: Daemon, user: User, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, Any, dict[str, str]]:
    def work() -> list[Any]:
        status, answer, headers = unix_exchange(
            daemon.socket_path, method, path, body,
            {"content-type": content_type} if body is not None else {})
        return [status, answer if not isinstance(answer, bytes) else answer.decode(), headers]

    status, answer, headers = as_user(user, work)
    return int(status), answer, headers


def test_a_user_sees_only_their_own_jobs_and_costs(
        shared_daemon: Daemon, users: tuple[list[User], str | None]) -> None:
    (alice, bob, admin), _group = users
    daemon = shared_daemon
    status, job = call(daemon, alice, "POST", "/v1/jobs?deadline=12m", LINE,
                       "application/jsonl")
    assert status == 202, job
    status, results = call(daemon, alice, "GET", f"/v1/jobs/{job['id']}/results?wait=30")
    assert status == 200 and results["custom_id"] == "mine"

    # Bob: as if the job did not exist.
    for method, path in (("GET", f"/v1/jobs/{job['id']}"),
                         ("GET", f"/v1/jobs/{job['id']}/results"),
                         ("POST", f"/v1/jobs/{job['id']}/cancel")):
        status, answer = call(daemon, bob, method, path)
        assert status == 404 and answer["error"]["code"] == "job_not_found", (path, answer)
    status, listed = call(daemon, bob, "GET", "/v1/jobs")
    assert status == 200 and listed["data"] == []
    status, ledger = call(daemon, bob, "GET", "/v1/ledger")
    assert status == 200 and ledger["entries"] == []
    status, report = call(daemon, bob, "GET", "/v1/ledger?by=user&since=all")
    assert status == 200 and report["total"]["requests"] == 0
    status, refused = call(daemon, bob, "GET", "/v1/ledger?by=user&all_users=true")
    assert status == 403 and refused["error"]["code"] == "admin_only"
    # Bob's identical request is not answered from Alice's cached answer.
    status, _answer, headers = exchange(daemon, bob, "POST", "/v1/chat/completions",
                                        orjson.dumps(BODY))
    assert status == 200 and headers["x-llmspool-cache"] == "miss"

    # Alice sees her own call; the admin (by group) sees both users' and manages the job.
    status, report = call(daemon, alice, "GET", "/v1/ledger?by=user&since=all")
    assert [(row["user"], row["requests"]) for row in report["rows"]] == [(alice.name, 1)]
    status, everyone = call(daemon, admin, "GET", "/v1/ledger?by=user&since=all&all_users=true")
    assert status == 200
    assert sorted((row["user"], row["requests"]) for row in everyone["rows"]) == sorted(
        [(alice.name, 1), (bob.name, 1)])
    status, seen = call(daemon, admin, "GET", f"/v1/jobs/{job['id']}")
    assert status == 200 and seen["status"] == "completed"
    status, listed = call(daemon, admin, "GET", "/v1/jobs")
    assert [j["id"] for j in listed["data"]] == [job["id"]]


def test_files_and_batches_are_their_uploaders(
        shared_daemon: Daemon, users: tuple[list[User], str | None]) -> None:
    (alice, bob, admin), _group = users
    daemon = shared_daemon
    boundary = "owners"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="mine.jsonl"\r\n\r\n').encode() + LINE + f"\r\n--{boundary}--\r\n".encode()
    status, file = call(daemon, alice, "POST", "/v1/files", form,
                        f"multipart/form-data; boundary={boundary}")
    assert status == 200, file
    status, batch = call(daemon, alice, "POST", "/v1/batches", orjson.dumps({
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"}))
    assert status == 200, batch

    # Bob can neither see nor use nor remove them; lists hold none of Alice's.
    for method, path, code in (
            ("GET", f"/v1/files/{file['id']}", "file_not_found"),
            ("GET", f"/v1/files/{file['id']}/content", "file_not_found"),
            ("DELETE", f"/v1/files/{file['id']}", "file_not_found"),
            ("GET", f"/v1/batches/{batch['id']}", "batch_not_found"),
            ("POST", f"/v1/batches/{batch['id']}/cancel", "batch_not_found")):
        status, answer = call(daemon, bob, method, path)
        assert status == 404 and answer["error"]["code"] == code, (path, answer)
    status, answer = call(daemon, bob, "POST", "/v1/batches", orjson.dumps({
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"}))
    assert status == 404 and answer["error"]["param"] == "input_file_id"
    for path in ("/v1/files", "/v1/batches"):
        status, listed = call(daemon, bob, "GET", path)
        assert status == 200 and listed["data"] == [], path

    # Alice and the admin see them.
    status, mine = call(daemon, alice, "GET", "/v1/batches")
    assert [b["id"] for b in mine["data"]] == [batch["id"]]
    status, seen = call(daemon, admin, "GET", f"/v1/batches/{batch['id']}")
    assert status == 200 and seen["input_file_id"] == file["id"]
