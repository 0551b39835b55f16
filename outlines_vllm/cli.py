"""`outlines-vllm`: the command line. Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _model_path(args: argparse.Namespace) -> int:
    from .default_model import prepare

    print(prepare())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main(online=not args.offline_only, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outlines-vllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="the default model")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    model_commands.add_parser(
        "path", help="print the default model folder, preparing it if needed"
    ).set_defaults(run=_model_path)

    demo = commands.add_parser(
        "demo", help="a short structured-generation benchmark on the default model, offline and online"
    )
    demo.add_argument("--offline-only", action="store_true", help="skip the local server")
    demo.add_argument("--out", default="benchmarks/results/latest", help="folder for results and plots")
    demo.set_defaults(run=_demo)

    from .bench.cli import add_parser as add_bench_parser

    add_bench_parser(commands)

    from .server.cli import add_parser as add_serve_parser

    add_serve_parser(commands)

    from .offline.cli import add_parser as add_offline_parser

    add_offline_parser(commands)

    from .k8s import add_parser as add_k8s_parser

    add_k8s_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
