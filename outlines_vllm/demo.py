"""The main job: a short structured-generation benchmark on the default model, offline (an
embedded engine) and online (a local vLLM server), printing the table and writing the plots."""

from __future__ import annotations

from pathlib import Path


def main(online: bool = True, out: str | Path = "benchmarks/results/latest") -> int:
    from .bench.cli import command_line
    from .bench.report import publish
    from .bench.runner import ENGINE_OPTIONS, results, run_local
    from .bench.scenario import Scenario
    from .default_model import prepare

    model = str(prepare())
    scenario = Scenario.load("default", modes=None if online else ["offline"])
    summaries = run_local(model, scenario)
    publish(
        results(summaries, scenario, model=model, command=command_line(), engine_options=ENGINE_OPTIONS), out
    )
    return 0
