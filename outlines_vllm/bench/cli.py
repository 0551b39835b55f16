"""``outlines-vllm bench online | offline | run``: argument parsing only; the work is imported
when a command runs, so ``outlines-vllm --help`` stays fast."""

from __future__ import annotations

import argparse
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
    local.add_argument("--offline-only", action="store_true", help="skip the local server")
    _common(local)
    local.set_defaults(run=_local)

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


def _client(args: argparse.Namespace) -> int:
    from .client_cost import run

    run(args.out, processes=args.processes, requests=args.requests)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", default="default", help="scenario file, or a shipped name: default, full, tiny"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results and plots")
    parser.add_argument("--requests", type=int, help="measured requests per run")
    parser.add_argument("--warmup", type=int, help="warm-up requests per run (not counted)")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--concurrency", type=int, help="online concurrency of the main runs")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second for an extra run")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workload", action="append", dest="workloads", help="workload(s) to run")


def _scenario(args: argparse.Namespace, **extra: Any) -> Any:
    from .scenario import Scenario

    fields = ("requests", "warmup", "max_tokens", "concurrency", "rate", "seed", "workloads")
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
        with offline_engine(model, backend=backend, seed=scenario.seed) as llm:
            summaries += run_offline(llm, scenario, backend=backend)
    return _finish(summaries, scenario, args.out, model=model, engine_options=ENGINE_OPTIONS)


def _local(args: argparse.Namespace) -> int:
    from .runner import ENGINE_OPTIONS, run_local

    model = _model(args)
    modes = ["offline"] if args.offline_only else None
    scenario = _scenario(args, modes=modes, backends=args.backend)
    return _finish(run_local(model, scenario), scenario, args.out, model=model, engine_options=ENGINE_OPTIONS)


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
