"""OpenTelemetry's span limits, applied by the export child as the SDK applies them.

The SDK's span bounds what it keeps with ``SpanLimits``, read from the standard variables:
``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` (or ``OTEL_ATTRIBUTE_COUNT_LIMIT``),
``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (or ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``),
``OTEL_SPAN_EVENT_COUNT_LIMIT``, ``OTEL_SPAN_LINK_COUNT_LIMIT``,
``OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT`` and ``OTEL_LINK_ATTRIBUTE_COUNT_LIMIT``. llmspool's own
spans (``spans.LeanSpan``) keep what they are given on the event loop, up to 128 attributes,
events and links (the SDK's defaults, a bound on memory); the export child, which inherits the
daemon's environment, then applies whatever limits are set, so that the spans a collector gets
are the ones the SDK would have sent:

- past a count, the oldest attribute (by when it was last set) or event or link makes room for
  the newer, and the span, event or link says how many it dropped
  (``dropped_attributes_count``, ``dropped_events_count``, ``dropped_links_count``);
- a string value longer than the length limit is cut to it, and so is each string in a
  sequence: the span's attributes by the span attribute limit, its events' and links' by the
  general one.

Two differences: a span's attributes are taken as set through ``SpanFields`` first, then
through the API's setters (which of two set at the same moment was the older is not kept), and
a limit above 128 keeps 128. An exporter that does not lend its HTTP client for the bytes
(``span_export.bytes_sender``) gets the spans cut but not the dropped counts. With the limits
at their defaults (no length limit), the child does none of this work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmspool.core.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the SDK's module reads these limits as it loads
    from opentelemetry.sdk.trace import SpanLimits

_KEPT_ON_THE_LOOP = 128  # what ``spans.LeanSpan`` keeps of each (its ``_LIMIT``)
VARIABLES = ("OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
             "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
             "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT",
             "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT")


def problems(environ: Mapping[str, str]) -> list[ConfigError]:
    """The span limit variables in ``environ`` that OpenTelemetry would refuse. Its SDK reads
    them as its module loads and raises a ``ValueError`` there: the daemon would die with a
    traceback instead of saying which variable is wrong (``llmspool daemon`` and ``llmspool
    config check`` say it first)."""
    found = []
    for name in VARIABLES:
        value = environ.get(name, "").strip().lower()
        if value in ("", "unset"):  # the default; "unset": no limit (the SDK's word)
            continue
        try:
            valid = int(value) >= 0
        except ValueError:
            valid = False
        if not valid:
            found.append(ConfigError(name, f"{environ[name]!r} is not a whole number of 0 or "
                                           "more (nor 'unset', for no limit): OpenTelemetry "
                                           "refuses it; correct it or unset the variable"))
    return found


class BoundedDict(dict[str, Any]):
    """Attributes that a limit cut, and how many it dropped (what OTLP's
    ``dropped_attributes_count`` says)."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0


class BoundedTuple(tuple[Any, ...]):
    """Events or links that a limit cut, and how many it dropped."""

    dropped: int

    def __new__(cls, kept: Iterable[Any], dropped: int) -> BoundedTuple:
        bounded = super().__new__(cls, kept)
        bounded.dropped = dropped
        return bounded


def truncated(value: Any, length: int | None) -> Any:
    """``value`` with its strings cut to ``length`` characters (the SDK's rule: a string, and
    each string of a sequence; other values as they are)."""
    if length is None:
        return value
    if type(value) is str:
        return value[:length]
    if type(value) is tuple:
        return tuple(item[:length] if type(item) is str else item for item in value)
    return value


def bounded(pairs: Iterable[tuple[str, Any]], count: int | None,
            length: int | None) -> BoundedDict:
    """``pairs`` set one after another into attributes holding at most ``count``, as the SDK's
    ``BoundedAttributes`` sets them: setting a name again makes it the newest; a new name when
    full drops the oldest; with a count of 0 nothing is kept."""
    kept = BoundedDict()
    for key, value in pairs:
        if count == 0:
            kept.dropped += 1
            continue
        if key in kept:
            del kept[key]
        elif count is not None and len(kept) >= count:
            del kept[next(iter(kept))]
            kept.dropped += 1
        kept[key] = truncated(value, length)
    return kept


def newest(items: Sequence[Any], count: int | None) -> BoundedTuple:
    """The last ``count`` of ``items`` (all of them for no limit), as the SDK's ``BoundedList``
    keeps them, and how many went."""
    if count is None or len(items) <= count:
        return BoundedTuple(items, 0)
    return BoundedTuple(items[len(items) - count:] if count else (), len(items) - count)


class SpanLimiter:
    """Applies ``limits`` to the export child's spans (``span_data`` tuples)."""

    def __init__(self, limits: SpanLimits) -> None:
        self.limits = limits

    @classmethod
    def from_environment(cls) -> SpanLimiter | None:
        """The limiter for the ``OTEL_*`` limits set; None if they change nothing that the
        daemon's spans do not already keep to (the defaults)."""
        from opentelemetry.sdk.trace import SpanLimits

        limits = SpanLimits()
        counts = (limits.max_span_attributes, limits.max_events, limits.max_links,
                  limits.max_event_attributes, limits.max_link_attributes)
        if (all(count is None or count >= _KEPT_ON_THE_LOOP for count in counts)
                and limits.max_span_attribute_length is None
                and limits.max_attribute_length is None):
            return None
        return cls(limits)

    def limit(self, span: tuple[Any, ...], attributes: Iterable[tuple[str, Any]]
              ) -> tuple[Any, ...]:
        """``span`` with ``attributes`` (its attributes in the order they were set) as its
        attributes, no fields, and its events and links, all within the limits."""
        limits = self.limits
        (name, context, parent, resource, _attributes, events, links, kind, scope, status,
         description, start_time, end_time, _fields) = span
        kept = bounded(attributes, limits.max_span_attributes,
                       limits.max_span_attribute_length)
        events = newest(events, limits.max_events)
        links = newest(links, limits.max_links)
        return (name, context, parent, resource, kept,
                BoundedTuple(((event_name, self._bounded(event_attributes,
                                                         limits.max_event_attributes), at)
                              for event_name, event_attributes, at in events), events.dropped),
                BoundedTuple(((link_context, self._bounded(link_attributes,
                                                           limits.max_link_attributes))
                              for link_context, link_attributes in links), links.dropped),
                kind, scope, status, description, start_time, end_time, ())

    def _bounded(self, attributes: Mapping[str, Any], count: int | None) -> BoundedDict:
        return bounded(attributes.items(), count, self.limits.max_attribute_length)
