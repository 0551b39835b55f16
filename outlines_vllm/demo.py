"""The main job: a short structured-generation benchmark on the default model, offline (an
embedded engine) and online (a local vLLM server), printing the table and writing the plots."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def main(online: bool = True, out: str | Path = "benchmarks/results/latest") -> int:
    from .bench.report import write
    from .bench.runner import ENGINE_OPTIONS, results, run_local
    from .bench.scenario import Scenario
    from .default_model import prepare

    model = str(prepare())
    scenario = Scenario.load("default", modes=None if online else ["offline"])
    document = results(
        run_local(model, scenario),
        scenario,
        model=model,
        engine_options=ENGINE_OPTIONS,
        command="outlines-vllm " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    files = write(document, out)
    print(files["markdown"].read_text())
    print("\n".join(f"wrote {path}" for path in files.values()))
    return 0
