"""The `deqflow` command line. Each sub-command lives in the package that owns it and imports PyTorch, ONNX
Runtime or TensorRT inside its `run`, so `deqflow --help` and every verb's `--help` work without them, and a verb
whose library is missing says what to install. Only the options of the verb being run are built."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

from deqflow import __version__
from deqflow.cli_args import CliParser, DefaultsHelpFormatter
from deqflow.errors import DeqflowError
from deqflow.extras import LIBRARIES, install_hint, optional
from deqflow.memory_plan import allocation_failure

# name -> module defining HELP, add_arguments(parser), run(args) -> int and optionally requires(args) -> modules
COMMANDS: dict[str, str] = {
    "demo": "runtime.commands.demo",
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
    "plan": "runtime.commands.plan",
}

INSTALL = {module: install_hint(module) for module in LIBRARIES}
"""Libraries a verb may need: module name -> what to install (the deqflow extra that brings it)."""


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `deqflow` parser with the options of `verbs` (default: every verb); the others only list their help,
    so running one verb never pays for the imports behind another verb's options (train's model config)."""
    parser = CliParser(prog="deqflow", description="Deep Equilibrium Optical Flow toolkit", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"deqflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verbs = set(COMMANDS if verbs is None else verbs)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, allow_abbrev=False,
                           formatter_class=DefaultsHelpFormatter)
        if name in verbs:
            module.add_arguments(p)
        p.set_defaults(_run=module.run, _requires=getattr(module, "requires", None))
    return parser


def requested_verb(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def missing_requirement(args: argparse.Namespace) -> str | None:
    """'needs X' for the first library the chosen verb requires (its `requires(args)`) that cannot be imported."""
    for module_name in args._requires(args) if args._requires else ():
        if optional(module_name) is None:
            return f"this command needs {INSTALL.get(module_name, module_name)}, which is not installed here"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser([requested_verb(argv)])
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line argument error already printed
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    prefix = f"deqflow {args.command}: error:"
    missing = missing_requirement(args)  # before unknown flags: options of a missing library are not listed
    if missing:
        print(f"{prefix} {missing}", file=sys.stderr)
        return 2
    if unknown:
        print(f"{prefix} unrecognized arguments: {' '.join(unknown)} (see deqflow {args.command} --help)",
              file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except DeqflowError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in INSTALL:
            raise
        print(f"{prefix} this command needs {INSTALL[root]}, which is not installed here", file=sys.stderr)
        return 2
    except Exception as exc:  # an allocation the plan did not foresee: one line, no traceback
        message = allocation_failure(exc)
        if message is None:
            raise
        print(f"{prefix} {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deqflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
