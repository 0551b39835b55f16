"""`outlines-vllm offline run`: the command line of offline jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    """Add ``offline run`` to the ``outlines-vllm`` subcommands."""
    offline = commands.add_parser("offline", help="offline batch jobs: JSONL prompts in, JSONL records out")
    sub = offline.add_subparsers(dest="offline_command", required=True)
    run = sub.add_parser(
        "run",
        help="run or resume a job",
        description="Run a job, or resume it: records already in --output are kept and skipped.",
    )
    run.add_argument("--spec", help="a YAML/JSON job spec; flags given here override it")
    run.add_argument("--model", help="a local model folder (default: the default model)")
    run.add_argument("--input", help="input JSONL: {id, prompt | messages, [schema|regex|choices|grammar]}")
    run.add_argument("--output", help="output JSONL, appended to (resumable)")
    kind = run.add_mutually_exclusive_group()
    kind.add_argument(
        "--schema", dest="schema_file", metavar="FILE", help="a JSON-schema file for every line"
    )
    kind.add_argument("--regex", help="a regex every output must match")
    kind.add_argument("--choices", type=lambda s: s.split(","), help="comma-separated choices")
    kind.add_argument("--grammar", metavar="FILE", type=_read_text, help="a grammar file (Lark or EBNF)")
    kind.add_argument("--json-object", action="store_true", default=None, help="any JSON object")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--chunk-size", type=int, help="prompts per engine call (default 16)")
    run.add_argument(
        "--endpoint", choices=["chat", "completions"], help="completions: raw prompts, no chat template"
    )
    run.add_argument(
        "--engine-arg",
        dest="engine_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine argument for vllm.LLM (VALUE read as JSON when it parses), repeatable",
    )
    run.add_argument("--ray", action="store_true", default=None, help="data-parallel on Ray Data")
    run.add_argument("--replicas", type=int, help="engine replicas on Ray (default 1)")
    run.add_argument("--gpus-per-replica", type=float, help="GPUs per replica on Ray (default 0: CPU)")
    run.add_argument("--ray-address", help="an existing Ray cluster (default: a local Ray for this job)")
    run.set_defaults(run=_run)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--engine-arg takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from ..errors import OfflineJobError
    from .job import run_job
    from .spec import load_spec, make_spec

    options = {
        key: getattr(args, key)
        for key in (
            "model", "input", "output", "schema_file", "regex", "choices", "grammar", "json_object",
            "max_tokens", "temperature", "seed", "chunk_size", "endpoint", "ray", "replicas",
            "gpus_per_replica", "ray_address",
        )
    }  # fmt: skip
    engine = _engine_args(args.engine_args)
    try:
        if args.spec:
            spec = load_spec(args.spec, **options)
        else:
            spec = make_spec(**{key: value for key, value in options.items() if value is not None})
        spec.engine.update(engine)
        result = run_job(spec)
    except OfflineJobError as exc:
        print(f"outlines-vllm offline: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.total} records in {spec.output} ({result.written} written now, {result.errors} of them "
        f"errors; {result.skipped} were done before)",
        file=sys.stderr,
    )
    return 0
