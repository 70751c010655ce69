"""The `deqflow` command line. Each sub-command lives in the package that owns it and is imported only
when used, so `deqflow --help` (and the runtime commands) work without PyTorch."""

from __future__ import annotations

import argparse
import importlib
import sys

from deqflow import __version__
from deqflow.errors import DeqflowError

# name -> module defining HELP, add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, str] = {
    "demo": "training.commands.demo",
    "infer": "runtime.commands.infer",
    "info": "training.commands.info",
    "train": "training.commands.train",
    "evaluate": "training.commands.evaluate",
    "export": "export.commands",
    "build": "runtime.commands.build",
    "compare": "runtime.commands.compare",
    "bench": "runtime.commands.bench",
    "serve": "runtime.commands.serve",
    "triton-repo": "runtime.commands.triton_repo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deqflow", description="Deep Equilibrium Optical Flow toolkit")
    parser.add_argument("--version", action="version", version=f"deqflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DeqflowError as exc:
        print(f"deqflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deqflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
