"""The front door: HTTP/1.1 on the Unix socket.

- ``listener``: the listening socket (our own, or the one systemd passed), stale-socket checks;
- ``uvicorn_server``: uvicorn, with the caller's peer credentials added to each request;
- ``routes``: the Starlette app (OpenAI-compatible endpoints, health, status, ledger);
- ``forwarding``: turning an OpenAI-compatible request into a ``Call`` and its replies into a
  response, with ``call_builder`` (checking the request, making the ``Call``), ``first_reply``
  (waiting for it, giving up on a client that leaves or a daemon that stops) and ``relay``
  (a streamed answer as server-sent events).
"""
