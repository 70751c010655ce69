"""The fixed-point solver vocabulary as plain data, shared by the torch solvers, the host-side solver of the
split ONNX layout, the export metadata and the CLI: names, stop modes and per-solver options.

Torch-free on purpose: configs, exports and the runtime validate solver settings without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from deqflow.errors import InputError

STOP_MODES = ("abs", "rel")
"""`abs`: per-sample ||f(z) - z||; `rel`: that divided by ||f(z)|| + REL_EPS."""

REL_EPS = 1e-8
"""Denominator guard of the relative residual (the official code's value)."""

SOLVER_ALIASES = {"naive_solver": "fixed_point"}
"""Official flag values accepted for the canonical names."""


@dataclass(frozen=True)
class FixedPointOptions:
    """Plain (damped) iteration: z <- (1 - damping) z + damping f(z)."""

    damping: float = 1.0

    def validate(self) -> None:
        if not 0 < self.damping <= 1:
            raise InputError(f"damping must be in (0, 1], got {self.damping}")


@dataclass(frozen=True)
class AndersonOptions:
    """Anderson acceleration with window `m`, Tikhonov regularisation `lam` and mixing `beta`."""

    m: int = 6
    lam: float = 1e-4
    beta: float = 1.0

    def validate(self) -> None:
        if int(self.m) < 1:
            raise InputError(f"anderson m (window) must be >= 1, got {self.m}")
        if not self.lam > 0:
            raise InputError(f"anderson lam must be > 0 (it keeps the mixing system non-singular), got {self.lam}")
        if not 0 < self.beta <= 1:
            raise InputError(f"anderson beta must be in (0, 1], got {self.beta}")


@dataclass(frozen=True)
class BroydenOptions:
    """Limited-memory good Broyden; `memory` rank-one terms (0: as many as the iteration cap)."""

    memory: int = 0

    def validate(self) -> None:
        if int(self.memory) < 0:
            raise InputError(f"broyden memory must be >= 0 (0 = the iteration cap), got {self.memory}")


SOLVER_OPTIONS: dict[str, type] = {
    "fixed_point": FixedPointOptions,
    "anderson": AndersonOptions,
    "broyden": BroydenOptions,
}
"""Canonical solver name -> its options dataclass."""

SOLVER_NAMES = tuple(SOLVER_OPTIONS) + tuple(SOLVER_ALIASES)


def canonical_solver(name: str) -> str:
    """The canonical solver name for `name` (official aliases accepted); a clear error otherwise."""
    if isinstance(name, str):
        name = SOLVER_ALIASES.get(name, name)
        if name in SOLVER_OPTIONS:
            return name
    raise InputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}")


def check_stop_mode(mode: str, what: str = "stop mode") -> str:
    """`mode` if it is one of STOP_MODES, else a clear error naming `what`."""
    if mode not in STOP_MODES:
        raise InputError(f"{what} must be one of {', '.join(STOP_MODES)}, got {mode!r}")
    return mode
