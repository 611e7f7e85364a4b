"""The ``llmspool`` command line: ``main`` parses and dispatches (``llmspool.cli:main`` is the
console script); ``config``, ``costs`` and ``jobs`` add their subcommands (the job commands
run in ``job_runs``, share ``job_client``, write results with ``job_results`` and show
``job_views``); ``output`` prints; ``demo`` runs the two-minute tour. The top layer: it may
import any other."""

from llmspool.cli.main import main

__all__ = ["main"]
