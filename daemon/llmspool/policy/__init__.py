"""Decisions without state or I/O, over the core's vocabulary: the tier a call takes
(``planner``), what a usage costs (``billing``, ``estimate`` over ``request_text``,
``reservations``), which model serves (``routing``), deadlines, and what a cache key covers
(``cache_keys``)."""
