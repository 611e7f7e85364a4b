"""The daemon's configuration, by part: ``sections`` (its shape and defaults, table by table),
``values`` (how one value is read: durations, sizes, plugin-declared keys), ``tables`` (a table
into a section, collecting every problem) and ``checks`` (the tables with rules across keys).

Reading the operator's file and environment into a ``Config`` is ``llmspool.core.config_load``,
outside this package because it asks the installed plugins (``llmspool.core.plugins``) which keys
their providers take, and the plugin contract itself imports this package (``ConfigKey``,
``ProviderConfig``)."""
