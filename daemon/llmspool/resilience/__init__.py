"""Keeping calls flowing when the upstream pushes back: plain, I/O-free objects that the
dispatcher owns and drives on its event loop, each with one job (which failures mean what,
when to retry, when a provider is unwell, how fast each (provider, model) may be called, in
``limits``, per key in ``key_limits``: request, token and concurrency limits that start from
config and adapt to the ``x-ratelimit-*`` headers and 429s that answers bring).
"""
