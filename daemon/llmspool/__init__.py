"""llmspool: a local daemon that gets LLM API work done at the lowest cost that meets its deadline.

The package is organised in layers, each importing only those below it (docs/architecture.md,
"The layers"; pyproject.toml's import-linter contracts check it): ``cli``/``testing``, ``app``
(the wiring), ``server``, ``batch_api``, ``actors``, ``jobs``/``batches``/``cache``,
``messages``, ``store``, ``resilience``, ``policy`` and ``core``. Beside them, ``sim`` (the
upstream simulator) and ``client`` import only ``core``; ``plugin_api`` is what provider plugins
import.
"""

__version__ = "0.1.0"
