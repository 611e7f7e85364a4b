"""A batch's files on disk: where they live, writing the input file, reading line ids back
from it, the name it is uploaded under, and removing them once the batch is finished.

Synchronous, like ``store.batches``: the batch actors run these in a worker thread, on their
connection to the store (either backend).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llmspool.core.batch_lines import BatchFiles
from llmspool.store.batches import BatchRow
from llmspool.store.connections import Connection


def write_input_file(connection: Connection, batch: BatchRow, path: Path) -> int:
    """Write the batch's JSONL input file (atomically: whole or absent); returns its lines.

    Line order is by request id, and ``custom_id`` is ``r<request id>``, so a validation error
    naming a line number, and every output line, map back without a lookup table.
    """
    prefix = b'{"custom_id":"r'
    middle = b'","method":"POST","url":"' + batch.endpoint.value.encode() + b'","body":'
    part = path.with_name(path.name + ".part")
    lines = 0
    with part.open("wb") as out:
        rows = connection.execute(
            "SELECT id, body FROM job_requests WHERE batch_id = ? ORDER BY id", (batch.id,)
        )
        for request_id, body in rows:
            out.write(b"".join((prefix, str(request_id).encode(), middle, body, b"}\n")))
            lines += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)
    return lines



def input_line_ids(path: Path, numbers: set[int]) -> dict[int, int]:
    """Line number (from 1) → request id, for the given lines of a batch input file."""
    found: dict[int, int] = {}
    if not numbers or not path.exists():
        return found
    last = max(numbers)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number in numbers:
                match = re.match(rb'\{"custom_id":"r(\d+)"', raw)
                if match:
                    found[number] = int(match.group(1))
            if number >= last:
                break
    return found


def batch_files(state_dir: Path, intent: str) -> BatchFiles:
    """Where a batch's input, output and error files live on disk."""
    folder = state_dir / "batches"
    return BatchFiles(intent, folder / f"{intent}.input.jsonl",
                      folder / f"{intent}.output.jsonl", folder / f"{intent}.errors.jsonl")


def remove_files(files: BatchFiles) -> None:
    """Remove a finished batch's files: the three, their partial copies, and whatever else a
    provider kept beside them under the intent's name."""
    for path in files.input.parent.glob(f"{files.intent}.*"):
        path.unlink(missing_ok=True)



def upload_name(intent: str) -> str:
    """The name a batch's input file is uploaded under: finding it again is how an upload
    interrupted by a crash is recognised."""
    return f"llmspool-{intent}.jsonl"
