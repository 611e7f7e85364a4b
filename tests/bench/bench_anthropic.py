"""What the Anthropic plugin costs: translation per call, added latency, and a large batch.

1. **Translation, in process**: microseconds to turn an OpenAI chat request into Messages
   params and a Messages answer into a chat completion, and per streamed event.
2. **Added latency at concurrency 1**, side by side in one run: the daemon in front of the
   simulator's OpenAI flavor (a chat completion forwarded as it is) and in front of its
   Anthropic flavor (translated both ways), each against the same simulator called directly
   (keep-alive HTTP/1.1, one client; medians of rounds).
3. **A 100,000-request Message Batch**: the seconds to translate the daemon's input file into
   the create call and the results back into the daemon's result lines, and the peak memory
   those take (tracemalloc), since both run on a worker thread of the daemon.

    python -m tests.bench.bench_anthropic [--rounds 5] [--calls 400] [--lines 100000]

Figures, not pass/fail: the machine is noisy.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from llmspool.core.batch_lines import BatchFiles
from llmspool.core.calls import Endpoint
from llmspool.core.provider import BatchSubmission
from llmspool_anthropic.answers import openai_completion
from llmspool_anthropic.batches import AnthropicBatches, tagged, translate_results
from llmspool_anthropic.stream import ChunkTranslator
from llmspool_anthropic.translate import anthropic_params

from tests.support.processes import (
    UNLIMITED_SIM,
    UnixHTTPConnection,
    start_daemon,
    start_sim,
)

CHAT = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "hello there, how are you today?"}]}
MESSAGE = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
           "content": [{"type": "text", "text": "I am well, thank you for asking."}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 0,
                     "cache_creation_input_tokens": 0}}


VIA_PATH = "/v1/chat/completions"  # the daemon's: the client speaks OpenAI either way


def per_call_us(work: Callable[[], object], count: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(count):
        work()
    return (time.perf_counter() - started) / count * 1e6


def stream_events() -> bytes:
    events = [("message_start", {"type": "message_start", "message": {
        **MESSAGE, "content": [], "stop_reason": None, "usage": {"input_tokens": 12,
                                                                 "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": f"word{i} "}})
               for i in range(50)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 50}}),
               ("message_stop", {"type": "message_stop"})]
    return b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
                    for name, data in events)


def translation(rounds: int) -> dict[str, float]:
    body = orjson.dumps(CHAT)
    stream = stream_events()
    events = stream.count(b"\n\n")

    def translate_stream() -> None:
        translator = ChunkTranslator(include_usage=True)
        translator.feed(stream)
        translator.flush()

    return {
        "request_us": statistics.median(per_call_us(
            lambda: anthropic_params(orjson.loads(body), default_max_tokens=4096))
            for _ in range(rounds)),
        "answer_us": statistics.median(per_call_us(lambda: openai_completion(MESSAGE))
                                       for _ in range(rounds)),
        "stream_event_us": statistics.median(per_call_us(translate_stream, 2_000) / events
                                             for _ in range(rounds)),
    }


def timed_calls(connection: http.client.HTTPConnection, path: str, body: bytes,
                headers: dict[str, str], calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        seconds.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    return seconds


def added_latency(workdir: Path, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    for name in ("o", "a", "d"):
        (workdir / name).mkdir()
    openai_sim = start_sim(workdir / "o", UNLIMITED_SIM, process=True)
    anthropic_sim = start_sim(workdir / "a", UNLIMITED_SIM + 'flavor = "anthropic"\n', process=True)
    daemon = start_daemon(workdir / "d", openai_sim.url, config_toml=(
        '[providers.anthropic]\nplugin = "anthropic"\n'
        f'base_url = "{anthropic_sim.url}"\napi_key_env = "OPENAI_API_KEY"\n'), process=True)
    try:
        json_headers = {"content-type": "application/json"}
        cases = {
            "openai": (openai_sim, "/v1/chat/completions",
                       orjson.dumps({**CHAT, "model": "gpt-4o-mini"}),
                       {**json_headers, "authorization": "Bearer sk-test"}),
            "anthropic": (anthropic_sim, "/v1/messages",
                          orjson.dumps(anthropic_params(dict(CHAT), default_max_tokens=16)),
                          {**json_headers, "x-api-key": "sk-test",
                           "anthropic-version": "2023-06-01"}),
        }
        figures: dict[str, dict[str, list[float]]] = {
            name: {"p50": [], "p99": []} for name in cases}
        for _ in range(rounds):
            for name, (sim, direct_path, direct_body, direct_headers) in cases.items():
                host, port = sim.base.removeprefix("http://").split(":")
                direct = http.client.HTTPConnection(host, int(port))
                via = UnixHTTPConnection(daemon.socket_path)
                via_body = orjson.dumps({**CHAT, "model": "gpt-4o-mini"}) \
                    if name == "openai" else orjson.dumps(CHAT)
                try:
                    timed_calls(direct, direct_path, direct_body, direct_headers, 20)  # warm
                    timed_calls(via, VIA_PATH, via_body, json_headers, 20)
                    direct_s = timed_calls(direct, direct_path, direct_body, direct_headers,
                                           calls)
                    via_s = timed_calls(via, VIA_PATH, via_body, json_headers, calls)
                finally:
                    direct.close()
                    via.close()
                figures[name]["p50"].append(
                    (statistics.median(via_s) - statistics.median(direct_s)) * 1000)
                figures[name]["p99"].append(
                    (quantile(via_s, 0.99) - quantile(direct_s, 0.99)) * 1000)
        return {name: {f"added_{k}_ms": statistics.median(v) for k, v in values.items()}
                for name, values in figures.items()}
    finally:
        daemon.terminate()
        openai_sim.terminate()
        anthropic_sim.terminate()


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def large_batch(workdir: Path, lines: int) -> dict[str, float]:
    intent = "1764633600-a1b2c3d4e5f6"
    files = BatchFiles(intent, workdir / f"{intent}.input.jsonl",
                       workdir / f"{intent}.output.jsonl", workdir / f"{intent}.errors.jsonl")
    with files.input.open("wb") as out:
        for number in range(1, lines + 1):
            body = {**CHAT, "messages": [{"role": "user", "content": f"question {number}"}]}
            out.write(b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions",'
                      b'"body":%s}\n' % (number, orjson.dumps(body)))
    raw = workdir / "raw.jsonl"
    with raw.open("wb") as out:
        for number in range(1, lines + 1):
            out.write(orjson.dumps({"custom_id": tagged(intent, f"r{number}"),
                                    "result": {"type": "succeeded", "message": MESSAGE}}) + b"\n")
    batches = AnthropicBatches.__new__(AnthropicBatches)
    batches._default_max_tokens = 4096
    submission = BatchSubmission(intent, Endpoint.CHAT, CHAT["model"], lines,  # type: ignore[arg-type]
                                 files.input, None, submitted_after=0.0)
    tracemalloc.start()
    started = time.perf_counter()
    body, _sent = batches._request_body(submission, workdir / "refused.jsonl")
    create_s = time.perf_counter() - started
    _current, create_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    written = translate_results(raw, files)
    results_s = time.perf_counter() - started
    _current, results_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert written == lines
    return {"lines": lines, "create_body_s": create_s, "create_body_mb": body.stat().st_size / 1e6,
            "create_peak_mib": create_peak / 2**20, "results_s": results_s,
            "results_peak_mib": results_peak / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400, help="calls per round and case")
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    figures: dict[str, Any] = {"translation": translation(args.rounds)}
    with tempfile.TemporaryDirectory() as work:
        figures["latency_c1"] = added_latency(Path(work), args.rounds, args.calls)
    with tempfile.TemporaryDirectory() as work:
        figures["batch"] = large_batch(Path(work), args.lines)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
