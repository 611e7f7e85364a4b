"""Deferred work: what a job is (``model``), and how uploads become one (``intake``)."""
