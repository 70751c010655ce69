"""The solver registry: each canonical solver name (deqflow.solver_spec) bound to its torch algorithm and
its options dataclass, behind one typed call signature, so callers pick solvers by name and pass options
as data instead of special-casing functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Protocol, runtime_checkable

from torch import Tensor

from deqflow.errors import InputError
from deqflow.solver_spec import SOLVER_OPTIONS, STALL_MARGIN, canonical_solver
from training.deq.config import SolverOptions, SolveSettings
from training.deq.solvers import Func, SolverResult, anderson, broyden, fixed_point_iter


@runtime_checkable
class Solver(Protocol):
    """What every registered solver provides: its name, its options dataclass and the solve."""

    name: str
    options_type: type[SolverOptions]

    def __call__(self, f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
                 indexing: Sequence[int] | None = None, return_final: bool = False,
                 options: SolverOptions | None = None, stall_window: int = 0,
                 stall_margin: float = STALL_MARGIN) -> SolverResult: ...


@dataclass(frozen=True)
class RegisteredSolver:
    """A solver algorithm taking its options as keyword arguments named like the options dataclass fields
    (checked on registration); `options` None means that dataclass's defaults."""

    name: str
    options_type: type[SolverOptions]
    algorithm: Callable[..., SolverResult]

    def __post_init__(self) -> None:
        accepted = inspect.signature(self.algorithm).parameters
        missing = [f.name for f in fields(self.options_type) if f.name not in accepted]
        if missing:
            raise TypeError(f"solver {self.name!r} does not accept its options {missing}")

    def __call__(self, f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
                 indexing: Sequence[int] | None = None, return_final: bool = False,
                 options: SolverOptions | None = None, stall_window: int = 0,
                 stall_margin: float = STALL_MARGIN) -> SolverResult:
        options = self.options_type() if options is None else options
        if type(options) is not self.options_type:
            raise InputError(f"solver {self.name!r} takes {self.options_type.__name__}, "
                             f"got {type(options).__name__}")
        return self.algorithm(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                              return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                              **asdict(options))


SOLVERS: dict[str, Solver] = {
    name: RegisteredSolver(name, SOLVER_OPTIONS[name], algorithm)
    for name, algorithm in (("fixed_point", fixed_point_iter), ("anderson", anderson), ("broyden", broyden))
}
"""Canonical solver name -> registered solver (official aliases resolve through `get_solver`)."""


def get_solver(name: str) -> Solver:
    """The solver registered under `name` or its official alias; InputError naming the choices otherwise."""
    return SOLVERS[canonical_solver(name)]


def run_solver(settings: SolveSettings, f: Func, z0: Tensor, *, max_iter: int,
               indexing: Sequence[int] | None = None) -> SolverResult:
    """One solve with resolved settings (DEQConfig.forward_solve / backward_solve)."""
    return get_solver(settings.solver)(f, z0, max_iter=max_iter, tol=settings.tol, stop_mode=settings.stop_mode,
                                       indexing=indexing, return_final=settings.return_final,
                                       options=settings.options, stall_window=settings.stall_window,
                                       stall_margin=settings.stall_margin)
