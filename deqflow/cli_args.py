"""The command-line vocabulary shared by every `deqflow` verb.

One flag means one thing everywhere (tests/test_cli_vocabulary.py checks it): `--iters`, `--tol`, `--stop-mode`,
`--solver`, `--device`, `--size` and `--batch` are defined here once, with the names the verbs accepted before
(the official DEQ-Flow `--f_eps`, `--f_stop_mode`, `--f_solver`) kept as aliases of the same option. Values are
checked by the `type=` functions below while the command line is parsed, so a bad setting is refused in one line
before any work starts. Torch-free on purpose: every verb's parser is built without PyTorch.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
from collections.abc import Callable, Iterable

from deqflow.errors import InputError
from deqflow.shapes import parse_size
from deqflow.solver_spec import SOLVER_ALIASES, SOLVER_OPTIONS, STOP_MODES

MAX_ITERS = 10_000
"""Largest accepted iteration cap: a cap far above this would only hide a solve that never settles."""

SIZE_MULTIPLE = 8
"""Padded image sizes are multiples of 8 (the feature stride of DEQ-Flow)."""


class CliParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (`deqflow VERB: error: ...`) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` to every option that takes a value, unless its help already states the default in
    words (an option whose default is None should say what happens then, e.g. 'default: the model's own';
    otherwise it reads 'default: not set')."""

    UNSET = "(default: not set)"

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and action.nargs != 0:
            action = copy.copy(action)  # argparse prints no help line at all for help=None: give it one
            action.help = self.UNSET if action.default is None else "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or action.nargs == 0 or action.required or "default" in text.lower():
            return text
        return f"{text} {self.UNSET if action.default is None else '(default: %(default)s)'}".lstrip()


# --- argument types (argparse `type=`): each check is written once, the message names the problem ------------


def _parse(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") \
            from None


def count(text: str) -> int:
    """A count of things (steps, pairs, runs, batch size): a whole number >= 1."""
    value = _parse(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def count_or_zero(text: str) -> int:
    """A count where 0 has a meaning of its own (threads: 0 = automatic; warm-up runs: none)."""
    value = _parse(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {value}")
    return value


def iterations(text: str) -> int:
    """A solver iteration cap: 1 .. MAX_ITERS."""
    value = _parse(text, int)
    if not 1 <= value <= MAX_ITERS:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {MAX_ITERS} iterations, got {value} (to stop early, set a tolerance with --tol "
            "instead of raising the cap)")
    return value


def _finite(text: str) -> float:
    value = _parse(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (learning rate, frame rate, colour scale, gradient clip)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (tolerances, where 0 means 'never stop early'; weight decay; allowed slowdown)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def scale_factor(text: str) -> float:
    """A shrink factor in (0, 1] (--scale: 1 keeps the full size)."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of each side), got {text}")
    return value


def max_side(text: str) -> int:
    """A longest side in pixels: a whole number of at least the feature stride (the model's own minimum, which
    depends on its correlation levels, is checked when it is loaded)."""
    value = _parse(text, int)
    if value < SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels >= {SIZE_MULTIPLE}, got {value}")
    return value


def fraction(text: str) -> float:
    """A finite number in [0, 1) (dropout probability)."""
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def multiple_of_8(flag: str | None = None) -> Callable[[str], int]:
    """Type for a padded size; the error suggests the nearest valid values in command-line terms."""

    def size(text: str) -> int:
        value = _parse(text, int)
        if value >= SIZE_MULTIPLE and value % SIZE_MULTIPLE == 0:
            return value
        lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
        options = [v for v in (lower, lower + SIZE_MULTIPLE) if v >= SIZE_MULTIPLE]
        use = " or ".join(map(str, options))
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of {SIZE_MULTIPLE}; use "
                                         + (f"{flag} {use}" if flag else use))

    size.__name__ = "size"
    return size


def image_size(text: str) -> tuple[int, int]:
    """'HxW' (also 'H,W') with H, W >= 1, e.g. 128x160: deqflow.shapes' parser as an argparse type."""
    try:
        return parse_size(str(text))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TORCH_DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")
"""The torch devices a verb accepts: cpu, cuda, cuda:N, mps (whether it exists is checked when it is used)."""


def torch_device(text: str) -> str:
    """--device: a torch device name, checked while parsing so a typo is refused before a model is loaded."""
    if TORCH_DEVICE.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(f"must be a torch device (cpu, cuda, cuda:N or mps), got {text!r}")


def npz_file(text: str) -> str:
    """A .npz file name (a golden file of `deqflow compare`)."""
    if text.endswith(".npz"):
        return text
    raise argparse.ArgumentTypeError(f"must be a .npz file, got {text!r}")


def solver_name(text: str) -> str:
    """Canonical solver name (official aliases such as `naive_solver` accepted); `choices` rejects the rest."""
    return SOLVER_ALIASES.get(text, text)


# --- shared options: device, size, batch (one definition each; a verb adds only its help note) ---------------


def _note(text: str, note: str) -> str:
    return f"{text}; {note}" if note else text


def add_device_arg(parser, note: str = "", default: str = "cpu") -> argparse.Action:
    """--device: the torch device a verb runs the model on."""
    return parser.add_argument("--device", type=torch_device, default=default, metavar="DEVICE",
                               help=_note("torch device (cpu, cuda, cuda:1)", note))


def add_size_arg(parser, note: str = "", *, repeatable: bool = False) -> argparse.Action:
    """--size HxW: an image size (repeatable where a verb runs several sizes)."""
    options: dict = {"action": "append", "default": []} if repeatable else {"default": None}
    return parser.add_argument("--size", type=image_size, metavar="HxW",
                               help=_note("image size HxW" + (", repeatable" if repeatable else ""), note), **options)


def add_batch_arg(parser, *aliases: str, default: int | None = 1, help: str = "images per run",
                  dest: str = "batch") -> argparse.Action:
    """--batch N: the batch size (train keeps its --batch-size as a second spelling of the same option)."""
    return parser.add_argument("--batch", *aliases, type=count, default=default, dest=dest, metavar="N", help=help)


def add_batch_invariant_arg(parser) -> argparse.Action:
    """--batch-invariant: the torch model's answers bit-identical whatever a pair is batched with."""
    return parser.add_argument("--batch-invariant", action="store_true",
                               help="torch: a pair's flow bit-identical whatever it is batched with (slower per "
                                    "step on the CPU; docs/batching.md)")


def add_resolution_args(parser, note: str = "") -> argparse._MutuallyExclusiveGroup:
    """--scale F | --max-side N: run the model on a shrunk copy of the images and return the flow at the input
    size (deqflow.resolution); one of the two at most."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scale", type=scale_factor, default=None, metavar="F",
                       help=_note("faster, less accurate: run the model at F x each side (0 < F <= 1, sides rounded "
                                  "to multiples of 8) and upsample the flow to the input size, vectors scaled per "
                                  "axis (docs/reduced_resolution.md); default: full size", note))
    group.add_argument("--max-side", type=max_side, default=None, metavar="N",
                       help=_note("like --scale, with the factor that brings the longer side to at most N pixels "
                                  "(smaller images run at full size); default: full size", note))
    return group


def resolution_from_args(args):
    """The deqflow.resolution.Resolution of a verb's --scale / --max-side."""
    from deqflow.resolution import Resolution

    return Resolution(scale=getattr(args, "scale", None), max_side=getattr(args, "max_side", None))


# --- the solver group -----------------------------------------------------------------------------------------

SOLVER_FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "iters": (("--iters",), {"type": iterations, "metavar": "N",
                             "help": "fixed-point solver iteration cap (the solve may stop earlier, see --tol)"}),
    "tol": (("--tol", "--f_eps"), {"type": non_negative_number, "metavar": "TOL",
                                   "help": "stop once every sample's residual (see --stop-mode) is below TOL; "
                                           "0: never stop early"}),
    "stop_mode": (("--stop-mode", "--f_stop_mode"), {"choices": STOP_MODES, "metavar": "MODE",
                                                      "help": "residual that --tol applies to: abs = |f(z) - z|, "
                                                              "rel = |f(z) - z| / |f(z)|"}),
    "solver": (("--solver", "--f_solver"), {"type": solver_name, "choices": tuple(SOLVER_OPTIONS), "metavar": "NAME",
                                            "help": f"fixed-point solver: {', '.join(SOLVER_OPTIONS)} "
                                                    "(naive_solver = fixed_point)"}),
    "stall_window": (("--stall-window",), {"type": count_or_zero, "metavar": "W",
                                           "help": "also stop once every sample's residual has stopped "
                                                   "improving (by the model's stall margin) over W "
                                                   "iterations; 0: off"}),
}
"""Name -> (option strings, argparse keywords). The second and later option strings are the official names,
accepted wherever the flag is."""


def add_solver_group(parser: argparse.ArgumentParser, flags: Iterable[str] = tuple(SOLVER_FLAGS), *,
                     defaults: dict | None = None, notes: dict[str, str] | None = None,
                     unset: str = "", aliases: dict[str, tuple[str, ...]] | None = None,
                     dests: dict[str, str] | None = None, title: str = "solver", description: str | None = None,
                     replace_existing: bool = False) -> argparse._ArgumentGroup:
    """Add the shared solver flags named in `flags` (keys of SOLVER_FLAGS) as one argument group.

    defaults: flag -> default (missing: None); notes: flag -> text appended to the shared help; unset: what a
    None default means (e.g. "default: the model's own"), appended where no note is given; aliases: flag ->
    extra option strings a verb accepted before; dests: flag -> attribute name (train keeps the DEQConfig flag
    names). replace_existing: these definitions take over option strings defined earlier on the parser (train's
    official DEQ flags), so each setting stays one option.
    """
    defaults, notes, aliases, dests = defaults or {}, notes or {}, aliases or {}, dests or {}
    kwargs = {"conflict_handler": "resolve"} if replace_existing else {}
    group = parser.add_argument_group(title, description, **kwargs)
    for name in flags:
        names, options = SOLVER_FLAGS[name]
        options = {**options, "dest": dests.get(name, name), "default": defaults.get(name)}
        note = notes.get(name) or (unset if options["default"] is None else "")
        if note:
            options["help"] = f"{options['help']}; {note}"
        group.add_argument(*names, *aliases.get(name, ()), **options)
    return group


# --- the memory plan (deqflow.memory_plan) ---------------------------------------------------------------------


def memory_size(text: str) -> int:
    """--memory-limit: bytes, or a number with K/M/G/T (powers of 1024), e.g. 8G, 512M."""
    from deqflow.memory_plan import parse_memory

    try:
        return parse_memory(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_memory_args(parser, note: str = "") -> None:
    """--corr and --memory-limit: how the memory plan (checked before any model is loaded) chooses the
    correlation and what it checks it against."""
    from deqflow.memory_plan import ALL_PAIRS_HEADROOM, CORR_CHOICES

    parser.add_argument("--corr", choices=CORR_CHOICES, default="auto",
                        help=_note("correlation: all-pairs (builds the whole volume, memory grows with the square "
                                   "of the pixel count) or local (on demand, grows with the pixel count); auto: "
                                   f"all-pairs when its plan needs at most {ALL_PAIRS_HEADROOM * 100:.0f}%% of "
                                   "the memory limit, else local; an ONNX export or engine keeps the mode it was "
                                   "exported with",
                                   note))
    add_memory_limit_arg(parser)


def add_memory_limit_arg(parser) -> None:
    """--memory-limit: what the memory plan is checked against."""
    parser.add_argument("--memory-limit", type=memory_size, default=None, metavar="BYTES",
                        help="memory a run may use, e.g. 8G or 512M (default: the machine's available memory, or "
                             "the process's address-space / cgroup limit when lower); a frame whose plan exceeds it "
                             "is refused before any work")
