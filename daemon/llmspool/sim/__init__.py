"""``llmspool sim``: an OpenAI-API-compatible simulator for rehearsals, demos, tests and benchmarks.

It answers chat completions, responses, embeddings and model listings in the shapes of OpenAI's
spec, streamed or not, calling function tools and answering JSON mode and Structured Outputs
(the official client's ``parse()`` works), with configurable latency, usage in every answer,
the ``service_tier`` served, ``x-ratelimit-*`` headers, flex processing (only where priced,
slower, with *resource unavailable* spells), faults injected on purpose (5xx, 429s, slow or hung
answers, dropped connections, cut streams), and the Files and Batch APIs, batches moving through
OpenAI's statuses by the clock and failing on demand. Time can be compressed (``[sim] speed``),
so that a day of work is rehearsed in a minute.

Modules, one job each:

- ``config``: the ``[sim]`` config table (``SimConfig``).
- ``speed``: time compression, rehearsal time against real time.
- ``faults``: fault rules and which request gets which fault.
- ``flex``: which models offer flex, its latency, and its *resource unavailable* spells.
- ``text``: token counting and the deterministic fake content.
- ``vectors``: deterministic unit-length embedding vectors.
- ``catalog``: the models served.
- ``validate``: request checks shared by the endpoints, as OpenAI-shaped errors.
- ``answer``: what an endpoint gets to make an answer and what it gives back.
- ``chat``, ``responses``, ``embeddings``: one endpoint each, from request body to answer bytes.
- ``tools``: ``tools``/``tool_choice``/``parallel_tool_calls`` checked, and what gets called.
- ``structured``: ``response_format`` / ``text.format`` (JSON mode, JSON schemas) checked.
- ``reply``: what the model says (text, JSON or tool calls) and its output tokens.
- ``schema_instance``: a deterministic instance of a JSON schema (``schema_keywords``: what its
  keywords say); ``regex_sample``: a string matching a ``pattern``; ``strict_schema``: the rules
  of ``strict: true`` schemas.
- ``ratelimit``: the per-minute counters behind the ``x-ratelimit-*`` headers.
- ``files``: the Files API store (uploads and batch results, in memory).
- ``upload``: streaming ``multipart/form-data`` parsing for ``POST /v1/files``.
- ``batch_config``: the ``[sim.batch]`` settings, also ``GET``/``POST /_sim/batch``, and the
  seeded draws (which lines fail, each batch's turnaround).
- ``batch_lines``: checking a batch input file, answering its lines, writing result files.
- ``batch_state``: one batch, its statuses and its ``Batch`` object (``SimBatch``);
  ``batch_request``: a create body checked; ``batches``: the batches' lifecycle by the clock
  (``BatchRegistry``).
- ``stats``: what the simulator saw, for ``GET /_sim/stats``.
- ``request_log``: each call billed, by client request id, for ``GET /_sim/requests``.
- ``asgi``: ASGI plumbing (bodies, disconnects, dropping a connection).
- ``flavor``, ``ollama``, ``anthropic``: the API impersonated (``[sim] flavor``): OpenAI's,
  Ollama's OpenAI-compatible routes, or Anthropic's Messages API (``anthropic_validate``, with
  ``anthropic_tools`` and ``anthropic_content``: its request checks; ``anthropic_stream``: its
  answers and events; ``anthropic_batches``: its Message Batches on the batch lifecycle,
  ``anthropic_batch_request``: their create body checked).
- ``app``: the ASGI app tying these together (``build_app``).
- ``cli``: ``llmspool sim`` / ``python -m llmspool.sim``.
"""
