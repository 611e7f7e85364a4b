"""llmspool: a local daemon that gets LLM API work done at the lowest cost that meets its deadline.

The package is organised as actors (``actors/``) behind a front door (``server/``), a store
(``store/``), and provider plugins loaded through pluggy (``hookspecs.py``, ``plugins.py``).
``app.py`` wires them together; ``cli.py`` is the command line.
"""

__version__ = "0.1.0"
