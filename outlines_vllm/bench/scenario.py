"""A benchmark scenario: what to send, how hard, and which comparisons to make.

Scenarios are YAML or JSON files; the named ones (``default``, ``full``, ``tiny``) ship in the
package (``outlines_vllm/bench/scenarios/``), so they load from an installed wheel in any
folder. Any field left out takes the default below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .workloads import WORKLOADS

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
NAMED = sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))


@dataclass
class Scenario:
    name: str = "default"
    seed: int = 0
    requests: int = 8  # measured requests per run
    warmup: int = 2  # per run, sent before the clock starts, not counted
    max_tokens: int = 128  # the same budget for every workload, constrained or not
    temperature: float = 0.7
    workloads: list[str] = field(
        default_factory=lambda: [
            "json_fixed",
            "json_free_whitespace",
            "json_unique",
            "jsonschemabench",
            "regex",
            "choice",
            "grammar",
            "none",
        ]
    )
    paths: list[str] = field(default_factory=lambda: ["raw", "package"])
    modes: list[str] = field(default_factory=lambda: ["offline", "online"])
    concurrency: int = 8  # online: the limit for every workload's main run
    sweep: dict[str, Any] = field(
        default_factory=lambda: {"workloads": ["json_fixed", "none"], "concurrency": [1, 4, 16]}
    )
    rate: float | None = None  # Poisson arrivals per second for an extra json_fixed run online
    backends: list[str] = field(default_factory=lambda: ["auto"])
    repeat: int = 1  # every measured run this many times (order alternated): ratios get a spread
    # Engines the benchmark starts keep JSON compact themselves on backends that can (xgrammar,
    # guidance), as this project's engines do; both paths then send schemas, not regexes
    # (engine_info.py). False: vLLM's own settings, compact JSON travels as a regex.
    compact_engine: bool = False
    jsonschemabench: dict[str, Any] = field(
        default_factory=lambda: {"sets": ["Glaiveai2K", "Github_easy"], "schemas": 32}
    )

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
        if set(self.paths) - {"raw", "package"} or set(self.modes) - {"online", "offline"}:
            raise ValueError("paths are 'raw'/'package' and modes 'online'/'offline'")
        if self.requests < 1 or self.warmup < 0 or self.max_tokens < 1 or self.repeat < 1:
            raise ValueError("requests >= 1, warmup >= 0, max_tokens >= 1 and repeat >= 1 are required")

    @classmethod
    def load(cls, source: str | Path | None = None, **overrides: Any) -> Scenario:
        """A scenario from a file (a path, or a shipped name such as ``default``), then ``overrides``."""
        data: dict[str, Any] = {}
        if source is not None:
            path = Path(source)  # a file here, else a shipped name (a folder "backends" is neither)
            if not path.is_file() and (SCENARIO_DIR / f"{source}.yaml").is_file():
                path = SCENARIO_DIR / f"{source}.yaml"
            if not path.is_file():
                raise ValueError(f"no scenario file {source!r}: give a path or one of {NAMED}")
            text = path.read_text()
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"{source}: unknown scenario fields {sorted(unknown)}; known: {sorted(known)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
