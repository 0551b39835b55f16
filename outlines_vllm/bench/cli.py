"""``outlines-vllm bench online | offline | run | coverage``: argument parsing only; the work is imported
when a command runs, so ``outlines-vllm --help`` stays fast."""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("benchmarks") / "results" / "latest"


def add_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="structured-generation throughput benchmarks")
    modes = bench.add_subparsers(dest="bench_command", required=True)

    online = modes.add_parser("online", help="benchmark a running OpenAI-compatible vLLM server")
    online.add_argument("--base-url", required=True, help="server root or its /v1 URL")
    online.add_argument("--model", help="served model name (default: the server's first model)")
    online.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY or none)")
    online.add_argument("--backend", default="auto", help="label: the server's structured-output backend")
    _common(online)
    online.set_defaults(run=_online)

    offline = modes.add_parser("offline", help="benchmark an embedded vllm.LLM engine")
    offline.add_argument("--model", help="model folder (default: the default model)")
    offline.add_argument("--backend", action="append", help="structured-output backend(s) to start")
    _common(offline)
    offline.set_defaults(run=_offline)

    local = modes.add_parser("run", help="offline, then online through a local server (the default run)")
    local.add_argument("--model", help="model folder (default: the default model)")
    local.add_argument("--backend", action="append", help="structured-output backend(s) to start")
    only = local.add_mutually_exclusive_group()
    only.add_argument("--offline-only", action="store_true", help="skip the local server")
    only.add_argument("--online-only", action="store_true", help="skip the embedded engine")
    _common(local)
    local.set_defaults(run=_local)

    coverage = modes.add_parser(
        "coverage",
        help="engine-free: which JSONSchemaBench schemas each grammar backend compiles, and how fast",
    )
    coverage.add_argument("--sets", nargs="+", help="JSONSchemaBench sets (default: all ten)")
    coverage.add_argument("--per-set", default="20", help="schemas sampled per set, or 'all' (default 20)")
    coverage.add_argument("--backends", nargs="+", help="xgrammar guidance outlines (default: all three)")
    coverage.add_argument(
        "--variants",
        nargs="+",
        help="json (plain vLLM), package (what we send our engines), package-vanilla (what we send "
        "vLLM's own server); default all three",
    )
    coverage.add_argument("--timeout", type=float, default=30.0, help="CPU seconds per compile")
    coverage.add_argument(
        "--outlines-timeout", type=float, default=5.0, help="outlines' limit (at most vLLM's own 5 s)"
    )
    coverage.add_argument("--workers", type=int, default=2, help="worker processes (default 2: both cores)")
    coverage.add_argument("--mask-per-set", type=int, default=5, help="schemas per set whose masks are timed")
    coverage.add_argument("--mask-steps", type=int, default=32, help="tokens per mask-timing walk")
    coverage.add_argument("--seed", type=int, default=0)
    coverage.add_argument("--max-minutes", type=float, help="start no new schema after this long")
    coverage.add_argument("--model", help="tokenizer folder (default: the default model)")
    coverage.add_argument("--out", type=Path, default=DEFAULT_OUT / "coverage", help="folder for results")
    coverage.add_argument(
        "--render", action="store_true", help="only rewrite the reports from --out's records.jsonl.gz"
    )
    coverage.set_defaults(run=_coverage)

    compliance = modes.add_parser(
        "compliance",
        help="through an embedded engine: accepted schemas and valid answers per JSONSchemaBench set",
    )
    compliance.add_argument("--sets", nargs="+", help="JSONSchemaBench sets (default: all ten)")
    compliance.add_argument("--per-set", type=int, default=4, help="schemas sampled per set (default 4)")
    compliance.add_argument("--backends", nargs="+", default=["xgrammar", "guidance", "outlines"])
    compliance.add_argument("--max-tokens", type=int, default=512)
    compliance.add_argument("--temperature", type=float, default=0.0)
    compliance.add_argument("--seed", type=int, default=0)
    compliance.add_argument("--model", help="model folder (default: the default model)")
    compliance.add_argument(
        "--call-timeout",
        type=float,
        default=600.0,
        help="seconds one engine call (a set's batch) may take before the engine counts as hung "
        "and is started again (default 600)",
    )
    compliance.add_argument("--out", type=Path, default=DEFAULT_OUT / "compliance", help="folder for results")
    compliance.set_defaults(run=_compliance)

    serving = modes.add_parser(
        "serving",
        help="the Ray Serve app's cost: one replica, direct vs through the app, alternating",
        description="Deploy the Ray Serve app with one replica and send the same streamed load to the "
        "replica's own engine endpoint and through the app, alternating, at each concurrency.",
    )
    serving.add_argument(
        "--model", default="default", help="'default', 'tiny' (dummy weights, made on the fly) or a folder"
    )
    serving.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    serving.add_argument("--repeats", type=int, default=3, help="runs per path and concurrency")
    serving.add_argument(
        "--requests",
        type=int,
        nargs="+",
        help="requests per run, one per concurrency (default 8 at c=1, 3c else)",
    )
    serving.add_argument("--max-tokens", type=int, default=48)
    serving.add_argument("--prompt-words", type=int, default=48)
    serving.add_argument("--port", type=int, default=8000, help="the app's HTTP port")
    serving.add_argument(
        "--proxy",
        default="haproxy",
        choices=["haproxy", "serve"],
        help="the HTTP proxy in front of the replicas",
    )
    serving.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "serving-latest")
    serving.set_defaults(run=_serving)

    client = modes.add_parser("client", help="client CPU of this package against the raw openai SDK")
    client.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "client")
    client.add_argument("--processes", type=int, default=5, help="fresh processes per path (first call)")
    client.add_argument("--requests", type=int, default=200, help="requests per block (steady state)")
    client.set_defaults(run=_client)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default="default",
        help="scenario file, or the name of one in outlines_vllm/bench/scenarios/ (default, full, ...)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results and plots")
    parser.add_argument("--requests", type=int, help="measured requests per run")
    parser.add_argument("--warmup", type=int, help="warm-up requests per run (not counted)")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--concurrency", type=int, help="online concurrency of the main runs")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second for an extra run")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workload", action="append", dest="workloads", help="workload(s) to run")
    parser.add_argument(
        "--repeat",
        type=int,
        help="run every measured configuration K times (order alternated); ratios get min-max",
    )


def _scenario(args: argparse.Namespace, **extra: Any) -> Any:
    from .scenario import Scenario

    fields = ("requests", "warmup", "max_tokens", "concurrency", "rate", "seed", "workloads", "repeat")
    return Scenario.load(args.scenario, **{f: getattr(args, f) for f in fields}, **extra)


def _finish(summaries: list[dict[str, Any]], scenario: Any, out: Path, **context: Any) -> int:
    from .report import publish
    from .runner import results

    publish(results(summaries, scenario, command=command_line(), **context), out)
    return 0


def command_line() -> str:
    """The command as typed, recorded in the results."""
    return "outlines-vllm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _online(args: argparse.Namespace) -> int:
    from .runner import run_online

    scenario = _scenario(args, modes=["online"], backends=[args.backend])
    summaries = run_online(
        args.base_url, scenario, model=args.model, api_key=args.api_key, backend=args.backend
    )
    return _finish(
        summaries, scenario, args.out, model=args.model or "(server default)", base_url=args.base_url
    )


def _model(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from ..default_model import prepare

    return str(prepare())


def _offline(args: argparse.Namespace) -> int:
    from .runner import ENGINE_OPTIONS, offline_engine, run_offline

    model = _model(args)
    scenario = _scenario(args, modes=["offline"], backends=args.backend)
    summaries = []
    for backend in scenario.backends:
        with offline_engine(
            model, backend=backend, seed=scenario.seed, compact=scenario.compact_engine
        ) as llm:
            summaries += run_offline(llm, scenario, backend=backend)
    return _finish(summaries, scenario, args.out, model=model, engine_options=ENGINE_OPTIONS)


def _local(args: argparse.Namespace) -> int:
    from .runner import ENGINE_OPTIONS, run_local

    model = _model(args)
    scenario = _run_scenario(args)
    return _finish(run_local(model, scenario), scenario, args.out, model=model, engine_options=ENGINE_OPTIONS)


def _run_scenario(args: argparse.Namespace) -> Any:
    """The scenario of ``bench run``: the file's modes, less the one skipped."""
    modes = ["offline"] if args.offline_only else ["online"] if args.online_only else None
    return _scenario(args, modes=modes, backends=args.backend)


def _coverage(args: argparse.Namespace) -> int:
    from .coverage import Options, run
    from .coverage_report import load_run, publish, save_run

    if args.render:
        return publish(load_run(args.out), args.out)
    per_set = None if args.per_set == "all" else int(args.per_set)
    given = {"sets": args.sets, "backends": args.backends, "variants": args.variants}
    options = Options(
        **{k: v for k, v in given.items() if v},
        per_set=per_set,
        timeout=args.timeout,
        outlines_timeout=args.outlines_timeout,
        workers=args.workers,
        mask_per_set=args.mask_per_set,
        mask_steps=args.mask_steps,
        seed=args.seed,
        max_minutes=args.max_minutes,
    )
    result = run(options, _model(args)) | {"command": command_line()}
    save_run(result, args.out)
    return publish(result, args.out)


def _compliance(args: argparse.Namespace) -> int:
    from ..datasets import JSONSCHEMABENCH_SETS
    from . import compliance
    from .environment import PACKAGES, _version
    from .paths import Sampling
    from .runner import offline_engine

    model = _model(args)
    rows = compliance.sample(args.sets or list(JSONSCHEMABENCH_SETS), args.per_set, args.seed)
    sampling = Sampling(args.max_tokens, args.temperature, args.seed)
    records = []
    for backend in args.backends:
        start = functools.partial(offline_engine, model, backend=backend, seed=args.seed)
        records += compliance.run(start, rows, backend, sampling, call_timeout_s=args.call_timeout)
    options = {
        k: getattr(args, k)
        for k in ("sets", "per_set", "backends", "max_tokens", "temperature", "seed", "call_timeout")
    }
    document = {
        "command": command_line(),
        "model": model,
        "options": options,
        "versions": {name: _version(name) for name in PACKAGES},
        "results": compliance.aggregate(records),
        "records": records,
    }
    compliance.publish(document, args.out)
    return 0


def _client(args: argparse.Namespace) -> int:
    from .client_cost import run

    run(args.out, processes=args.processes, requests=args.requests)
    return 0


def _serving(args: argparse.Namespace) -> int:
    from ..server.app import DESIGN
    from .serving import Plan, run

    requests = {c: (8 if c == 1 else 3 * c) for c in args.concurrency}
    if args.requests:
        if len(args.requests) != len(args.concurrency):
            raise SystemExit("outlines-vllm bench serving: give one --requests value per --concurrency level")
        requests = dict(zip(args.concurrency, args.requests, strict=True))
    plan = Plan(args.concurrency, args.repeats, requests, args.max_tokens, args.prompt_words)
    run(args.model, plan, args.out, port=args.port, design=DESIGN, command=command_line(), proxy=args.proxy)
    return 0
