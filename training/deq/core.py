"""The DEQ layer: solve z* = f(z*) without autograd, then attach gradients to sampled states.

Training follows the official DEQ-Flow v2.0 cores:
- "sliced" (default): the f_max_iter budget is cut into segments (n_states equal ones, or the gaps
  between explicit `indexing` steps); each segment is solved without grad starting from the previous
  gradient-carrying state, then a gradient term is attached (k phantom steps, or IFT for the last term
  when cfg.ift).
- "indexing": one solve, the gradient terms are attached to its estimates at absolute steps
  (k+1) * (f_max_iter // n_states), or `indexing` + [f_max_iter].
E.g. n_states=2, f_max_iter=24: sliced segments [12, 12], indexing steps [12, 24].
Evaluation: one no-grad solve of `max_iter` (default cfg.eval_max_iter) steps, returning [z*].
Both return (list of states, SolveStats), so the loss code sees one structure. A call may change the
forward solve (deqflow.solver_spec.SolveOverrides, or a whole SolveSpec) without touching the config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deqflow.errors import InputError
from deqflow.solve_stats import SolveStats
from deqflow.solver_spec import SolveOverrides, SolveSpec
from training.deq.config import DEQConfig
from training.deq.grad import attach_ift, attach_phantom
from training.deq.jacobian import estimate_spectral_radius
from training.deq.registry import run_solver
from training.deq.solvers import Func, concat_stats


class DEQ:
    """Callable DEQ engine configured by a DEQConfig (validated here)."""

    def __init__(self, cfg: DEQConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.backward_stats: SolveStats | None = None  # the last IFT backward solve, when cfg.ift

    def schedule(self, max_iter: int | None = None) -> list[int]:
        """Training schedule: segment lengths (sliced core) or absolute solver steps (indexing core)."""
        cfg = self.cfg
        total = cfg.f_max_iter if max_iter is None else int(max_iter)
        return self._segments(total) if cfg.core == "sliced" else self._absolute_steps(total)

    def _absolute_steps(self, total: int) -> list[int]:
        cfg = self.cfg
        if cfg.n_states > total or (cfg.indexing and cfg.indexing[-1] >= total):
            raise InputError(f"{total} solver steps cannot hold n_states={cfg.n_states} / "
                             f"indexing={list(cfg.indexing)}")
        if cfg.n_states > 1:
            return [(k + 1) * (total // cfg.n_states) for k in range(cfg.n_states)]
        return [*cfg.indexing, total]

    def _segments(self, total: int) -> list[int]:
        if self.cfg.n_states > 1:
            self._absolute_steps(total)  # same feasibility check
            return [total // self.cfg.n_states] * self.cfg.n_states
        steps = [0, *self._absolute_steps(total)]
        return [b - a for a, b in zip(steps, steps[1:])]

    def __call__(self, f: Func, z0: Tensor, *, training: bool, solve: SolveSpec | SolveOverrides | None = None,
                 return_trajectory: bool = False, flow_size: int = 0) -> tuple[list[Tensor], SolveStats]:
        """Solve and return (states, stats).

        training: the sampled states with gradients (n_terms of them; k per term with sup_all).
        eval: [z*]; with return_trajectory, the estimates at the indexing-core steps of the evaluation
        budget, the last being z*, so the training loss can be computed on them.
        `solve` changes (SolveOverrides) or replaces (SolveSpec) this call's forward solve; its cap is the
        training budget (default f_max_iter) or the evaluation cap (default eval_max_iter); the IFT backward
        solve keeps the b_* settings. flow_size: how many trailing entries of the state are the flow, which a
        flow tolerance (evaluation only) tests.
        """
        spec = self.cfg.forward_solve(solve, training=training)
        if not training:
            return self._evaluate(f, z0, spec, return_trajectory, flow_size)
        if self.cfg.core == "sliced":
            return self._train_sliced(f, z0, spec)
        return self._train_indexing(f, z0, spec)

    def _evaluate(self, f: Func, z0: Tensor, spec: SolveSpec, return_trajectory: bool,
                  flow_size: int = 0) -> tuple[list[Tensor], SolveStats]:
        steps = self._absolute_steps(spec.stop.max_iter) if return_trajectory else None
        with torch.no_grad():
            result = run_solver(spec, f, z0, indexing=steps, flow_size=flow_size)
        if self.cfg.sradius_mode:
            result.stats.sradius = estimate_spectral_radius(f, result.z)
        states = [*result.trajectory[:-1], result.z] if return_trajectory else [result.z]
        return states, result.stats

    def _gradient_term(self, f: Func, z: Tensor, k: int, last: bool) -> list[Tensor]:
        cfg = self.cfg
        if last and cfg.ift:
            return [attach_ift(f, z, cfg.backward_solve(), safe=cfg.safe_ift, on_backward=self._keep_backward)]
        return attach_phantom(f, z, k=k, tau=cfg.tau, sup_all=cfg.sup_all)

    def _keep_backward(self, stats: SolveStats) -> None:
        self.backward_stats = stats

    def _train_sliced(self, f: Func, z0: Tensor, spec: SolveSpec) -> tuple[list[Tensor], SolveStats]:
        segments = self.schedule(spec.stop.max_iter)
        states: list[Tensor] = []
        parts: list[SolveStats] = []
        z = z0
        for i, (length, k) in enumerate(zip(segments, self.cfg.grad_steps())):
            result = run_solver(spec, f, z, max_iter=length)
            parts.append(result.stats)
            terms = self._gradient_term(f, result.z, k, last=i == len(segments) - 1)
            states += terms
            z = terms[-1]  # the next segment continues from the gradient-carrying state
        return states, concat_stats(parts)

    def _train_indexing(self, f: Func, z0: Tensor, spec: SolveSpec) -> tuple[list[Tensor], SolveStats]:
        steps = self.schedule(spec.stop.max_iter)
        result = run_solver(spec, f, z0, max_iter=steps[-1], indexing=steps)
        states: list[Tensor] = []
        for i, (z, k) in enumerate(zip(result.trajectory, self.cfg.grad_steps())):
            states += self._gradient_term(f, z, k, last=i == len(steps) - 1)
        return states, result.stats

