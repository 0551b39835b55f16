"""A tiny Serve deployment where every process of the app publishes its metrics and state.

Prometheus scrapes one URL (the ingress's ``/metrics``), but the numbers live in many processes:
each engine replica's vLLM server (its ``vllm:`` metrics sit on a loopback port, possibly on
another node) and each ingress replica (prometheus-client registries are per process). Each of
them pushes its exposition here every few seconds; the ingress merges the fresh ones. Entries a
process stopped refreshing (it died) expire after ``ttl_s``.
"""

from __future__ import annotations

import time
from typing import Any


class MetricsHub:
    """Serve replica class of the hub deployment (one replica, no CPU reserved)."""

    def __init__(self, ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self.entries: dict[str, tuple[float, str, dict[str, str], dict[str, Any]]] = {}

    def push(self, source: str, text: str, labels: dict[str, str], info: dict[str, Any]) -> None:
        """Store ``source``'s latest exposition ``text`` (to be labelled ``labels``) and ``info``."""
        self.entries[source] = (time.monotonic(), text, labels, info)

    def drop(self, source: str) -> None:
        self.entries.pop(source, None)

    def _fresh(self) -> dict[str, tuple[float, str, dict[str, str], dict[str, Any]]]:
        now = time.monotonic()
        self.entries = {k: v for k, v in self.entries.items() if now - v[0] <= self.ttl_s}
        return self.entries

    def snapshot(self) -> dict[str, tuple[str, dict[str, str]]]:
        """Every fresh source's ``(text, labels)``."""
        return {source: (text, labels) for source, (_, text, labels, _) in self._fresh().items()}

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Fresh engine replicas: ``{replica: {"model", "up", "pid", "pgid", "node", ...}}``."""
        return {s: info for s, (_, _, _, info) in self._fresh().items() if info.get("kind") == "replica"}
