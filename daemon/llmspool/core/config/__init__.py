"""The daemon's configuration, by part: ``sections`` (its shape and defaults, table by table),
``values`` (how one value is read: durations, sizes, plugin-declared keys), ``tables`` (a table
into a section, collecting every problem), ``checks`` (the tables with rules across keys) and
``load`` (the file and the environment into a ``Config``, and back into a table)."""
