"""The response cache's counters and the status snapshot (``/v1/status``) made from them."""

from __future__ import annotations

from dataclasses import dataclass

from llmspool.actors.caching.fleet import FleetCache
from llmspool.cache.nearby import NearDuplicates
from llmspool.core.config.sections import CacheConfig
from llmspool.messages import CacheStatus


@dataclass
class CacheCounts:
    """What ``/v1/status`` shows of the cache."""

    hits: int = 0
    misses: int = 0
    shared: int = 0
    corrupt_dropped: int = 0
    written: int = 0
    dropped_writes: int = 0
    too_large: int = 0
    evicted: int = 0
    expired: int = 0
    write_errors: int = 0
    waited_for_batch: int = 0
    near_hits: int = 0
    near_shared: int = 0
    batch_wait_gave_up: int = 0


def snapshot(counts: CacheCounts, config: CacheConfig, entries: int,
             in_flight: int, waiting_on_flights: int,
             near: NearDuplicates | None, fleet: FleetCache | None = None) -> CacheStatus:
    lookups = counts.hits + counts.misses
    return {
        "enabled": config.enabled,
        "entries": entries,
        "max_entries": config.max_entries,
        "hits": counts.hits,
        "misses": counts.misses,
        "hit_ratio": round(counts.hits / lookups, 4) if lookups else None,
        "shared": counts.shared,
        "in_flight": in_flight,
        "waiting_on_flights": waiting_on_flights,
        "written": counts.written,
        "evicted": counts.evicted,
        "expired": counts.expired,
        "too_large": counts.too_large,
        "corrupt_dropped": counts.corrupt_dropped,
        "dropped_writes": counts.dropped_writes,
        "write_errors": counts.write_errors,
        "waited_for_batch": counts.waited_for_batch,
        "batch_wait_gave_up": counts.batch_wait_gave_up,
        "near_duplicates": None if near is None else {
            "vectors": len(near.cached),
            "hits": counts.near_hits,
            "shared": counts.near_shared,
            "embedding_calls": near.embedding_calls,
            "embedding_failures": near.embedding_failures,
        },
        "fleet": None if fleet is None else {
            "hits": fleet.hits, "shared": fleet.shared, "errors": fleet.errors,
        },
    }
