"""A Batch API script as its users write it, with nothing but the ``openai`` package.

Pointed at llmspool's socket (the only change from a script for api.openai.com is the client's
transport, as the README shows), it uploads an input file, creates a batch, polls it until it
ends, and downloads the output and error files; it prints a JSON summary of what it got.

    python openai_batch_script.py SOCKET INPUT.jsonl ENDPOINT [DEADLINE]
"""

import json
import sys
import time

import httpx2
import openai


def main() -> None:
    socket_path, input_path, endpoint = sys.argv[1:4]
    extra_headers = {"x-llmspool-deadline": sys.argv[4]} if len(sys.argv) > 4 else None
    client = openai.OpenAI(
        base_url="http://localhost/v1",
        api_key="unused-on-the-socket",
        http_client=openai.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=socket_path)),
    )

    with open(input_path, "rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,
        completion_window="24h",
        metadata={"description": "nightly eval"},
        extra_headers=extra_headers,
    )
    statuses = [batch.status]
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
        if batch.status != statuses[-1]:
            statuses.append(batch.status)

    output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
    errors = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
    print(json.dumps({
        "file": uploaded.model_dump(),
        "batch": batch.model_dump(),
        "statuses": statuses,
        "output": [json.loads(line) for line in output.splitlines()],
        "errors": [json.loads(line) for line in errors.splitlines()],
    }))


if __name__ == "__main__":
    main()
