"""``llmspool demo``: a rehearsal on embedded defaults, with nothing to configure and no API key.

It starts ``llmspool sim`` on a free loopback port and ``llmspool daemon`` in front of it on a
socket in a temporary directory, then sends a chat completion, a streamed chat completion and
an embedding with the official ``openai`` client over the socket, printing each answer and its
cost, and finally the ledger as the daemon recorded it. Both processes are stopped at the end.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from llmspool.calls import Endpoint

START_TIMEOUT = 20.0


def run_demo() -> int:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletionMessageParam
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or under make: rich would assume 80 columns
        console = Console(width=110)
    with tempfile.TemporaryDirectory(prefix="llmspool-demo-") as workdir, _sim() as sim_url:
        socket_path = Path(workdir) / "llmspool.sock"
        console.print(f"[bold]llmspool sim[/] answering at {sim_url}")
        with _daemon(Path(workdir), socket_path, sim_url):
            console.print(f"[bold]llmspool daemon[/] listening on {socket_path}\n")
            client = openai.OpenAI(
                base_url="http://localhost/v1",
                api_key="not-needed-the-daemon-holds-the-key",
                max_retries=0,
                http_client=openai.DefaultHttpxClient(
                    transport=httpx2.HTTPTransport(uds=str(socket_path))
                ),
            )
            question: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": "What does a print spooler do?"}
            ]

            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=question, max_tokens=24
            )
            completion = raw.parse()
            console.print("[bold cyan]chat completion[/] (gpt-4o-mini):")
            console.print(f"  {completion.choices[0].message.content}")
            console.print(f"  cost ${float(raw.headers['x-llmspool-cost-usd']):.8f} on the "
                          f"{raw.headers['x-llmspool-tier']} tier\n")

            console.print("[bold cyan]streamed chat completion[/] (gpt-5-mini, flex):")
            console.print("  ", end="")
            with client.chat.completions.create(
                model="gpt-5-mini", messages=question, max_completion_tokens=24,
                service_tier="flex", stream=True,
            ) as stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        console.print(chunk.choices[0].delta.content, end="")
            console.print()
            streamed = _ledger(socket_path, 1)[0]
            console.print(f"  cost ${streamed['cost_usd']:.8f} on the {streamed['tier']} tier\n")

            embedding = client.embeddings.create(
                model="text-embedding-3-small", input="print spooler"
            )
            cost = _ledger(socket_path, 1)[0]["cost_usd"]
            vector = embedding.data[0].embedding
            console.print("[bold cyan]embedding[/] (text-embedding-3-small):")
            console.print(f"  {len(vector)} dimensions, starting {vector[:3]}")
            console.print(f"  cost ${cost:.8f}\n")

            table = Table(title="The ledger, as the daemon recorded it")
            for column in ("call", "model", "tier", "in", "out", "cost $", "list $"):
                table.add_column(column, justify="left" if column in ("call", "model", "tier")
                                 else "right", no_wrap=True)
            entries = list(reversed(_ledger(socket_path, 10)))
            for entry in entries:
                table.add_row(
                    Endpoint(entry["endpoint"]).operation_name, entry["model"], entry["tier"],
                    str(entry["input_tokens"]), str(entry["output_tokens"]),
                    f"{entry['cost_usd']:.8f}", f"{entry['standard_cost_usd']:.8f}",
                )
            total = sum(e["cost_usd"] for e in entries)
            table.add_row("total", "", "", "", "", f"{total:.8f}",
                          f"{sum(e['standard_cost_usd'] for e in entries):.8f}")
            console.print(table)
    return 0


def _ledger(socket_path: Path, limit: int) -> list[dict[str, Any]]:
    connection = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    connection.sock = sock
    try:
        connection.request("GET", f"/v1/ledger?limit={limit}")
        entries: list[dict[str, Any]] = orjson.loads(connection.getresponse().read())["entries"]
        return entries
    finally:
        connection.close()


@contextmanager
def _sim() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "llmspool", "sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LLMSPOOL_CONFIG": ""},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline().decode() if ready else ""
        if "http://" not in line:
            raise RuntimeError(f"llmspool sim did not start (it said {line!r})")
        yield line[line.index("http://"):].strip()
    finally:
        _stop(process)


@contextmanager
def _daemon(workdir: Path, socket_path: Path, upstream: str) -> Iterator[None]:
    environment = {
        **os.environ,
        "LLMSPOOL_CONFIG": "",
        "LLMSPOOL_SOCKET": str(socket_path),
        "LLMSPOOL_STATE_DIR": str(workdir / "state"),
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_KEY": "sk-simulated",
    }
    log = (workdir / "daemon.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "llmspool", "daemon"], stdout=log,
                               stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                text = (workdir / "daemon.log").read_text(errors="replace")
                raise RuntimeError(f"llmspool daemon did not start:\n{text}")
            time.sleep(0.02)
        yield
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
