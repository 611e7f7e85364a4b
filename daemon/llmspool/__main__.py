"""``python -m llmspool`` runs the command line."""

from llmspool.cli import main

raise SystemExit(main())
