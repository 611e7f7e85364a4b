"""The vocabulary every other layer uses, depending on nothing above it: calls and units,
errors and states, the wire format, the config, the price table, the provider plugin interface
(``provider``, ``hookspecs``, ``plugins``) and the plumbing they need (HTTP pools, tracing,
the Unix socket, systemd). The simulator and the client may import from here and nowhere else
in the daemon; ``pyproject.toml``'s import-linter contracts hold it."""
