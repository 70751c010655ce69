"""Typed DEQ settings: the official DEQ-Flow flags (`--f_thres`, `--n_losses`, ...) with descriptive names."""

from __future__ import annotations

from dataclasses import dataclass

from deqflow.errors import InputError
from training.deq.solvers import anderson, fixed_point_iter, get_solver

STOP_MODES = ("abs", "rel")
CORES = ("sliced", "indexing")


@dataclass
class DEQConfig:
    """Forward/backward solver settings and the training gradient schedule.

    Field comments name the official flag. Lists given for `indexing` / `phantom_grad` (e.g. from JSON)
    become tuples. The config validates itself on construction, so a bad value fails where it is set.
    """

    f_solver: str = "anderson"  # --f_solver; "fixed_point" (alias "naive_solver"), "anderson", "broyden"
    b_solver: str = "broyden"  # --b_solver (IFT backward)
    f_max_iter: int = 40  # --f_thres
    b_max_iter: int = 40  # --b_thres
    f_tol: float = 1e-3  # --f_eps; <= 0 never stops early
    b_tol: float = 1e-3  # --b_eps
    f_stop_mode: str = "abs"  # --f_stop_mode
    b_stop_mode: str = "abs"  # --b_stop_mode
    eval_factor: float = 1.5  # --eval_factor
    eval_f_max_iter: int = 0  # --eval_f_thres; > 0 overrides eval_factor
    ift: bool = False  # --ift: the last gradient term is the exact implicit gradient
    safe_ift: bool = False  # --safe_ift: separate graph for the adjoint products
    n_states: int = 1  # --n_losses: states sampled along the trajectory (sparse fixed-point correction)
    indexing: tuple[int, ...] = ()  # --indexing: explicit steps (used when n_states == 1)
    phantom_grad: tuple[int, ...] = (1,)  # --phantom_grad: unrolled steps per term (one value = all terms)
    tau: float = 1.0  # --tau: damping of the phantom steps
    sup_all: bool = False  # --sup_all: supervise every phantom step
    core: str = "sliced"  # "sliced" | "indexing" (--indexing_core)
    return_final: bool = False  # return the last iterate instead of the lowest-residual one
    damping: float = 1.0  # fixed-point damping: z <- (1-d) z + d f(z)
    anderson_m: int = 6
    anderson_lam: float = 1e-4
    anderson_beta: float = 1.0
    sradius_mode: bool = False  # --sradius_mode: estimate the Jacobian spectral radius at eval

    def __post_init__(self) -> None:
        self.indexing = tuple(int(i) for i in self.indexing)
        self.phantom_grad = tuple(int(k) for k in self.phantom_grad)
        self.validate()

    @property
    def eval_max_iter(self) -> int:
        """Iteration cap at test time (official: f_thres * eval_factor unless eval_f_thres > 0)."""
        return self.eval_f_max_iter if self.eval_f_max_iter > 0 else int(self.f_max_iter * self.eval_factor)

    @property
    def n_terms(self) -> int:
        """Number of gradient (loss) terms in training before `sup_all` expansion."""
        return self.n_states if self.n_states > 1 else len(self.indexing) + 1

    def validate(self) -> None:
        """Raise InputError naming the first unusable setting."""
        get_solver(self.f_solver)
        get_solver(self.b_solver)
        for name in ("f_max_iter", "b_max_iter", "n_states", "anderson_m"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"DEQ {name} must be >= 1, got {getattr(self, name)}")
        for name in ("f_stop_mode", "b_stop_mode"):
            if getattr(self, name) not in STOP_MODES:
                raise InputError(f"DEQ {name} must be one of {STOP_MODES}, got {getattr(self, name)!r}")
        if self.core not in CORES:
            raise InputError(f"DEQ core must be one of {CORES}, got {self.core!r}")
        if self.eval_f_max_iter < 0 or self.eval_factor <= 0 or self.eval_max_iter < 1:
            raise InputError(f"evaluation iterations must be >= 1: eval_f_max_iter={self.eval_f_max_iter}, "
                             f"eval_factor={self.eval_factor}, f_max_iter={self.f_max_iter}")
        if self.n_states > self.f_max_iter:
            raise InputError(f"n_states ({self.n_states}) cannot exceed f_max_iter ({self.f_max_iter}): "
                             "each sampled state needs at least one solver step")
        if self.indexing:
            if self.n_states > 1:
                raise InputError("set either n_states > 1 (uniformly spaced states) or indexing, not both")
            steps = (0, *self.indexing, self.f_max_iter)
            if any(b <= a for a, b in zip(steps, steps[1:])):
                raise InputError(f"indexing must be strictly increasing steps in 1..{self.f_max_iter - 1}, "
                                 f"got {list(self.indexing)}")
        if len(self.phantom_grad) not in (1, self.n_terms) or min(self.phantom_grad, default=0) < 1:
            raise InputError(f"phantom_grad must be one value or {self.n_terms} values (one per gradient "
                             f"term), each >= 1; got {list(self.phantom_grad)}")
        if not 0 < self.tau <= 1:
            raise InputError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 < self.damping <= 1:
            raise InputError(f"damping must be in (0, 1], got {self.damping}")
        if self.anderson_lam <= 0:
            raise InputError(f"anderson_lam must be > 0 (it keeps the mixing system non-singular), "
                             f"got {self.anderson_lam}")
        if not 0 < self.anderson_beta <= 1:
            raise InputError(f"anderson_beta must be in (0, 1], got {self.anderson_beta}")

    def grad_steps(self) -> tuple[int, ...]:
        """Phantom steps of each gradient term (a single value is shared by all terms)."""
        if len(self.phantom_grad) == 1:
            return self.phantom_grad * self.n_terms
        return self.phantom_grad

    def solver_kwargs(self, name: str) -> dict:
        """Solver-specific options for the solver registered as `name`."""
        fn = get_solver(name)
        if fn is fixed_point_iter:
            return {"damping": self.damping}
        if fn is anderson:
            return {"m": self.anderson_m, "lam": self.anderson_lam, "beta": self.anderson_beta}
        return {}
