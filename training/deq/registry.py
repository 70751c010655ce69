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
from deqflow.solver_spec import SOLVER_OPTIONS, SolverOptions, SolveSpec, canonical_solver
from training.deq.solvers import FixedPointResult, FlowStop, Func, anderson, broyden, fixed_point_iter


@runtime_checkable
class Solver(Protocol):
    """What every registered solver provides: its name, its options dataclass and the solve."""

    name: str
    options_type: type[SolverOptions]

    def __call__(self, f: Func, z0: Tensor, spec: SolveSpec, *, max_iter: int | None = None,
                 indexing: Sequence[int] | None = None, flow_size: int = 0) -> FixedPointResult: ...


@dataclass(frozen=True)
class RegisteredSolver:
    """A solver algorithm taking its options as keyword arguments named like the options dataclass fields
    (checked on registration), run from a SolveSpec: its stop rule and options; `max_iter` (a segment of a
    training budget) replaces the rule's cap; `flow_size` > 0 places the flow at the state's end for the
    rule's flow tolerance."""

    name: str
    options_type: type[SolverOptions]
    algorithm: Callable[..., FixedPointResult]

    def __post_init__(self) -> None:
        accepted = inspect.signature(self.algorithm).parameters
        missing = [f.name for f in fields(self.options_type) if f.name not in accepted]
        if missing:
            raise TypeError(f"solver {self.name!r} does not accept its options {missing}")

    def __call__(self, f: Func, z0: Tensor, spec: SolveSpec, *, max_iter: int | None = None,
                 indexing: Sequence[int] | None = None, flow_size: int = 0) -> FixedPointResult:
        if spec.method != self.name:
            raise InputError(f"solver {self.name!r} cannot run a {spec.method!r} spec")
        rule = spec.stop
        flow = None
        if rule.flow_tol > 0:
            if int(flow_size) <= 0:
                raise InputError("a flow tolerance needs the flow's place in the state: pass flow_size")
            flow = FlowStop(rule.flow_tol, int(flow_size))
        return self.algorithm(f, z0, max_iter=rule.max_iter if max_iter is None else int(max_iter), tol=rule.tol,
                              stop_mode=rule.stop_mode, indexing=indexing, return_final=spec.return_final,
                              stall_window=rule.stall_window, stall_margin=rule.stall_margin, flow_stop=flow,
                              **asdict(spec.options))


SOLVERS: dict[str, Solver] = {
    name: RegisteredSolver(name, SOLVER_OPTIONS[name], algorithm)
    for name, algorithm in (("fixed_point", fixed_point_iter), ("anderson", anderson), ("broyden", broyden))
}
"""Canonical solver name -> registered solver (official aliases resolve through `get_solver`)."""


def get_solver(name: str) -> Solver:
    """The solver registered under `name` or its official alias; InputError naming the choices otherwise."""
    return SOLVERS[canonical_solver(name)]


def run_solver(spec: SolveSpec, f: Func, z0: Tensor, *, max_iter: int | None = None,
               indexing: Sequence[int] | None = None, flow_size: int = 0) -> FixedPointResult:
    """One solve as `spec` says (DEQConfig.forward_solve / backward_solve)."""
    return get_solver(spec.method)(f, z0, spec, max_iter=max_iter, indexing=indexing, flow_size=flow_size)
