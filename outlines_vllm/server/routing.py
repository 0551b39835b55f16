"""Prefix-affinity routing (``routing: prefix_affinity``) that also learns behind HAProxy.

Ray Serve LLM's ``PrefixCacheAffinityRouter`` sends a prompt to the replica whose prefix tree
holds the longest part of it, or, for a new prefix, to the replica holding the fewest cached
characters, while replica loads stay close. It records where a prompt went only once the
replica accepts the request (``on_request_routed``). Behind HAProxy the request router only
*picks* a replica (``choose_replica(_reserve=False)``; HAProxy then forwards the request), that
callback never runs, the tree stays empty, and every prompt goes to the first replica (measured:
all prefixes on one of two replicas). This subclass records the pick when it makes it, so the
policy works on both paths: HAProxy's and Serve's handles (models after the first).

Ray imports this module inside the request router's process only (``request_router_class``).
"""

from __future__ import annotations

import random
import time
from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """``PrefixCacheAffinityRouter`` that inserts each prompt into its prefix tree when it picks
    the replica, and picks the least loaded of equally good replicas (ties at random)."""

    async def choose_replicas(
        self, candidate_replicas: list[Any], pending_request: Any = None
    ) -> list[list[Any]]:
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        if pending_request is None or not pending_request.args or not ranks or not ranks[0]:
            return ranks
        try:
            text = self._extract_text_from_request(pending_request)
        except ValueError:  # no prompt or messages: nothing to learn from
            return ranks
        pick = min(
            ranks[0], key=lambda r: (self._replica_queue_len_cache.get(r.replica_id) or 0, random.random())
        )
        # Not awaited: the tree actor runs this caller's calls in order, before the next match.
        self._tree_actor.insert.remote(text, pick.replica_id.to_full_id_str(), time.time())
        return [[pick]]

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        """Nothing more to record: ``choose_replicas`` did when it picked."""
