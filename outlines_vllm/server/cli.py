"""``outlines-vllm serve``: the Ray Serve app from flags (the same app as server/serve-config.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="vLLM replicas on Ray Serve behind one OpenAI-compatible endpoint",
        description="Run vLLM server replicas on Ray Serve behind one OpenAI-compatible ingress "
        "(/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics). "
        "Flags after '--' go to every replica's vLLM server.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        help="an app config file (YAML/JSON: the 'args' of server/serve-config.yaml, any number of "
        "models); replaces the model and scaling flags",
    )
    serve.add_argument("--model", default="default", help="model folder or name (default: the default model)")
    serve.add_argument(
        "--name", help="served model name (default: the folder name; 'smollm2' for the default)"
    )
    scale = serve.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, help="a fixed number of replicas")
    scale.add_argument("--min-replicas", type=int, help="autoscaling lower bound (default 1)")
    serve.add_argument("--max-replicas", type=int, help="autoscaling upper bound (default: min)")
    serve.add_argument(
        "--target-ongoing-requests", type=float, default=8, help="autoscaling target per replica"
    )
    serve.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per replica")
    serve.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (or $OUTLINES_VLLM_API_KEY)"
    )
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies get 413")
    serve.add_argument(
        "--ray-address", help="join this Ray cluster ('auto' for the local one) instead of starting Ray"
    )
    serve.add_argument(
        "--proxy",
        default="haproxy",
        choices=["haproxy", "serve"],
        help="HTTP proxy in front of the replicas when this command starts Ray (default haproxy)",
    )
    serve.add_argument("vllm_args", nargs="*", help="after '--': extra vLLM server flags")
    serve.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> Any:
    from .config import AppConfig

    if args.config is not None:
        import yaml

        data = yaml.safe_load(args.config.read_text()) or {}
        if "applications" in data:  # a whole Serve config file: take the app's args
            data = data["applications"][0].get("args", {})
        if args.api_key:
            data["api_key"] = args.api_key
        return AppConfig.model_validate(data)

    model: dict[str, Any] = {
        "model": args.model,
        "name": args.name,
        "target_ongoing_requests": args.target_ongoing_requests,
        "tensor_parallel_size": args.tensor_parallel_size,
        "vllm_args": args.vllm_args,
    }
    if args.replicas is not None:
        if args.max_replicas is not None:
            raise SystemExit(
                "outlines-vllm serve: --replicas fixes the count; use --min/--max-replicas to autoscale"
            )
        model["replicas"] = args.replicas
    else:
        model["min_replicas"] = 1 if args.min_replicas is None else args.min_replicas
        model["max_replicas"] = args.max_replicas or max(model["min_replicas"], 1)
    return AppConfig(models=[model], api_key=args.api_key, max_body_bytes=args.max_body_bytes)


def run(args: argparse.Namespace) -> int:
    from .app import run as run_app

    run_app(
        config_from_args(args), host=args.host, port=args.port, ray_address=args.ray_address, proxy=args.proxy
    )
    return 0
