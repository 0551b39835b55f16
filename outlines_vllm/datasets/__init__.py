"""Data shipped with the package, so benchmarks and tests run from an installed wheel anywhere.

``jsonschemabench``: the 9,557 real-world JSON schemas of JSONSchemaBench (Geng et al.,
"JSONSchemaBench: A Rigorous Benchmark of Structured Outputs for Language Models",
arXiv 2501.10868; MIT licensed, see ``jsonschemabench/README.md``), one ``{"id", "schema"}``
per line in ten gzipped JSONL sets.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from typing import Any

JSONSCHEMABENCH_SETS = (
    "Github_trivial",
    "Github_easy",
    "Github_medium",
    "Github_hard",
    "Github_ultra",
    "Glaiveai2K",
    "Kubernetes",
    "Snowplow",
    "WashingtonPost",
    "JsonSchemaStore",
)


def jsonschemabench(name: str) -> list[dict[str, Any]]:
    """Every schema of JSONSchemaBench set ``name`` as ``{"id": str, "schema": dict}``, in file order."""
    if name not in JSONSCHEMABENCH_SETS:
        raise ValueError(f"unknown JSONSchemaBench set {name!r}; choose from {list(JSONSCHEMABENCH_SETS)}")
    path = resources.files(__name__) / "jsonschemabench" / f"{name}.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    for row in rows:
        if isinstance(row["schema"], str):
            row["schema"] = json.loads(row["schema"])
    return rows
