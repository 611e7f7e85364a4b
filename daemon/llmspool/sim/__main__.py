"""``python -m llmspool.sim``: the same entry point as ``llmspool sim``."""

from llmspool.sim.cli import main

raise SystemExit(main())
