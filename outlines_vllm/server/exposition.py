"""Merge Prometheus text from several processes into one valid exposition, labelling each source.

The ingress's ``/metrics`` shows its own ``outlines_vllm_`` series and every engine replica's
``vllm:`` series. Concatenating their texts would repeat ``# TYPE`` lines (which Prometheus
rejects), so families are merged by name and each source's samples get its labels (``replica``
for an engine, ``ingress`` for an ingress process) so no two sources' series collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


class Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge(sources: Iterable[tuple[str, Mapping[str, str]]]) -> bytes:
    """One exposition of ``(text, labels)`` sources; a source's labels are added to each sample."""
    families: dict[str, Metric] = {}
    for text, labels in sources:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            if merged.type != family.type:
                continue  # two processes disagree on a family's type: keep the first
            merged.samples.extend(s._replace(labels={**s.labels, **labels}) for s in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families.values()))  # type: ignore[arg-type]
    return generate_latest(registry)
