"""`deqflow` sub-commands backed by the PyTorch model (torch is imported inside `run`)."""


def add_arguments_lazily(parser, add, needs: str = "PyTorch") -> None:
    """Call `add(parser)` only when this sub-command is parsed or its help is shown.

    `deqflow.cli.build_parser` builds every sub-parser up front; options defined by torch-backed modules
    (e.g. the DEQ flags) would import torch, and `deqflow --help` or the runtime commands must work
    without it. Without the needed package, the sub-command exits with a one-line error.
    """
    done = []

    def ensure() -> None:
        if done:
            return
        done.append(True)
        try:
            add(parser)
        except ImportError as exc:
            parser.error(f"this command needs {needs}, which cannot be imported here ({exc})")

    for name in ("parse_known_args", "format_help", "format_usage"):
        original = getattr(parser, name)

        def wrapper(*args, _original=original, **kwargs):
            ensure()
            return _original(*args, **kwargs)

        setattr(parser, name, wrapper)
