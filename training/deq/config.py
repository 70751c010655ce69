"""Typed DEQ settings: the official DEQ-Flow flags (`--f_thres`, `--n_losses`, ...) with descriptive names.

Torch-free (solver names, stop modes and options come from deqflow.solver_spec), so configs and checkpoint
metadata can be read and validated where PyTorch is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deqflow.errors import InputError
from deqflow.solver_spec import (
    SOLVER_OPTIONS,
    AndersonOptions,
    BroydenOptions,
    FixedPointOptions,
    StopRule,
    canonical_solver,
    check_stop_mode,
)

CORES = ("sliced", "indexing")

SolverOptions = FixedPointOptions | AndersonOptions | BroydenOptions

OPTION_FIELDS: dict[str, dict[str, str]] = {
    "fixed_point": {"damping": "damping"},
    "anderson": {"m": "anderson_m", "lam": "anderson_lam", "beta": "anderson_beta",
                 "safeguard": "anderson_safeguard"},
    "broyden": {"memory": "broyden_memory"},
}
"""Canonical solver name -> {option field of its options dataclass: DEQConfig field holding it}."""


@dataclass(frozen=True)
class SolveOverrides:
    """Per-call changes to the forward solve (None keeps the DEQConfig value); the config is not touched.

    `options` must be the options dataclass of the solver used (deqflow.solver_spec.SOLVER_OPTIONS); left
    None, that solver's options come from the config.
    """

    solver: str | None = None
    tol: float | None = None
    stop_mode: str | None = None
    return_final: bool | None = None
    options: SolverOptions | None = None
    stall_window: int | None = None
    stall_margin: float | None = None
    flow_tol: float | None = None


@dataclass(frozen=True)
class SolveSettings:
    """Everything one solver run needs besides f, z0, the step cap and the snapshot steps."""

    solver: str  # canonical name
    tol: float
    stop_mode: str
    return_final: bool
    options: SolverOptions  # an instance of SOLVER_OPTIONS[solver]
    stall_window: int = 0  # stagnation exit (deqflow.solver_spec.StopRule); 0 = off
    stall_margin: float = 0.01
    flow_tol: float = 0.0  # flow-step exit (deqflow.solver_spec.StopRule.flow_tol); 0 = off


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
    anderson_m: int = 6  # Anderson window
    anderson_lam: float = 1e-4  # Anderson regularisation
    anderson_beta: float = 1.0  # Anderson mixing
    anderson_safeguard: float = 0.0  # Anderson restart on residual growth by this factor; 0 = off (official)
    broyden_memory: int = 0  # Broyden rank-one terms kept; 0 = the solve's iteration cap
    sradius_mode: bool = False  # --sradius_mode: estimate the Jacobian spectral radius at eval
    stall_window: int = 0  # evaluation only: stop once no residual improvement over this many steps; 0 = off
    stall_margin: float = 0.01  # relative improvement that counts (see deqflow.solver_spec.StopRule)
    flow_tol: float = 0.0  # evaluation only: also stop once the flow step is below this (px at 1/8); 0 = off

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
        for name in ("f_solver", "b_solver", "f_stop_mode", "b_stop_mode"):
            check = canonical_solver if name.endswith("solver") else check_stop_mode
            try:
                check(getattr(self, name))
            except InputError as exc:
                raise InputError(f"DEQ {name}: {exc}") from None
        for name in ("f_max_iter", "b_max_iter", "n_states"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"DEQ {name} must be >= 1, got {getattr(self, name)}")
        if self.core not in CORES:
            raise InputError(f"DEQ core must be one of {CORES}, got {self.core!r}")
        if self.eval_f_max_iter < 0 or self.eval_factor <= 0 or self.eval_max_iter < 1:
            raise InputError(f"evaluation iterations must be >= 1: eval_f_max_iter={self.eval_f_max_iter}, "
                             f"eval_factor={self.eval_factor}, f_max_iter={self.f_max_iter}")
        self._validate_schedule()
        self.stop_rule()  # validates the stagnation settings
        for solver in SOLVER_OPTIONS:
            self.solver_options(solver).validate()

    def _validate_schedule(self) -> None:
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

    def grad_steps(self) -> tuple[int, ...]:
        """Phantom steps of each gradient term (a single value is shared by all terms)."""
        if len(self.phantom_grad) == 1:
            return self.phantom_grad * self.n_terms
        return self.phantom_grad

    def solver_options(self, name: str) -> SolverOptions:
        """The options dataclass of solver `name` (aliases accepted), filled from this config."""
        solver = canonical_solver(name)
        values = {option: getattr(self, field) for option, field in OPTION_FIELDS[solver].items()}
        return SOLVER_OPTIONS[solver](**values)

    def stop_rule(self, max_iter: int | None = None) -> StopRule:
        """The evaluation stop rule (tolerance, mode, cap, stagnation exit) as plain data."""
        return StopRule(tol=float(self.f_tol), stop_mode=self.f_stop_mode, stall_window=int(self.stall_window),
                        max_iter=int(self.eval_max_iter if max_iter is None else max_iter),
                        stall_margin=float(self.stall_margin), flow_tol=float(self.flow_tol))

    def with_stop_rule(self, rule: StopRule) -> DEQConfig:
        """A copy whose evaluation solves follow `rule` (f_tol and f_stop_mode also apply in training)."""
        return replace(self, f_tol=float(rule.tol), f_stop_mode=rule.stop_mode, eval_f_max_iter=int(rule.max_iter),
                       stall_window=int(rule.stall_window), stall_margin=float(rule.stall_margin),
                       flow_tol=float(rule.flow_tol))

    def forward_solve(self, overrides: SolveOverrides | None = None, training: bool = False) -> SolveSettings:
        """Settings of the forward solve: this config's, changed by `overrides` (validated). Training solves
        never stop on stagnation (the official recipe's fixed budget)."""
        o = overrides or SolveOverrides()
        solver = canonical_solver(self.f_solver if o.solver is None else o.solver)
        options = self.solver_options(solver) if o.options is None else o.options
        if type(options) is not SOLVER_OPTIONS[solver]:
            raise InputError(f"solver {solver!r} takes {SOLVER_OPTIONS[solver].__name__}, "
                             f"got {type(options).__name__}")
        options.validate()
        stop_mode = check_stop_mode(self.f_stop_mode if o.stop_mode is None else o.stop_mode)
        window = self.stall_window if o.stall_window is None else o.stall_window
        margin = self.stall_margin if o.stall_margin is None else o.stall_margin
        flow_tol = self.flow_tol if o.flow_tol is None else o.flow_tol
        rule = StopRule(tol=0.0, stop_mode=stop_mode, stall_window=0 if training else int(window),
                        stall_margin=float(margin), flow_tol=0.0 if training else float(flow_tol))
        return SolveSettings(solver=solver, tol=float(self.f_tol if o.tol is None else o.tol),
                             stop_mode=stop_mode, options=options, stall_window=rule.stall_window,
                             stall_margin=rule.stall_margin, flow_tol=rule.flow_tol,
                             return_final=bool(self.return_final if o.return_final is None else o.return_final))

    def backward_solve(self) -> SolveSettings:
        """Settings of the IFT adjoint solve (b_* fields; the lowest-residual estimate is returned)."""
        return SolveSettings(solver=canonical_solver(self.b_solver), tol=self.b_tol, stop_mode=self.b_stop_mode,
                             return_final=False, options=self.solver_options(self.b_solver))
