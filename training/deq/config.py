"""Typed DEQ settings: the official DEQ-Flow flags (`--f_thres`, `--n_losses`, ...) with descriptive names.

Torch-free (solver names, stop modes and options come from deqflow.solver_spec), so configs and checkpoint
metadata can be read and validated where PyTorch is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from deqflow.errors import InputError
from deqflow.solver_spec import (
    SOLVER_OPTIONS,
    AndersonOptions,
    BroydenOptions,
    FixedPointOptions,
    SolveOverrides,
    SolverOptions,
    SolveSpec,
    StopRule,
    canonical_solver,
    check_stop_mode,
)

CORES = ("sliced", "indexing")

LEGACY_OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "damping": ("fixed_point", "damping"),
    "anderson_m": ("anderson", "m"), "anderson_lam": ("anderson", "lam"), "anderson_beta": ("anderson", "beta"),
    "anderson_safeguard": ("anderson", "safeguard"),
    "broyden_memory": ("broyden", "memory"),
}
"""The stored (official flag) key of each solver option -> (solver, option): files keep the flat keys."""


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
    fixed_point: FixedPointOptions = field(default_factory=FixedPointOptions)  # --damping
    anderson: AndersonOptions = field(default_factory=AndersonOptions)  # --anderson_m/_lam/_beta/_safeguard
    broyden: BroydenOptions = field(default_factory=BroydenOptions)  # --broyden_memory
    sradius_mode: bool = False  # --sradius_mode: estimate the Jacobian spectral radius at eval
    stall_window: int = 0  # evaluation only: stop once no residual improvement over this many steps; 0 = off
    stall_margin: float = 0.01  # relative improvement that counts (see deqflow.solver_spec.StopRule)
    flow_tol: float = 0.0  # evaluation only: also stop once the flow step is below this (px at 1/8); 0 = off
    warm_flow_tol: float = 0.0  # evaluation only: flow_tol of warm-started solves (the model's own); 0 = none

    def __post_init__(self) -> None:
        for solver, options_type in SOLVER_OPTIONS.items():
            value = getattr(self, solver)
            if isinstance(value, dict):
                setattr(self, solver, options_type(**value))
            elif type(value) is not options_type:
                raise InputError(f"DEQ {solver} options must be {options_type.__name__}, got {type(value).__name__}")
        self.indexing = tuple(int(i) for i in self.indexing)
        self.phantom_grad = tuple(int(k) for k in self.phantom_grad)
        self.validate()

    @classmethod
    def from_dict(cls, data: dict) -> DEQConfig:
        """A config from its stored form (lists become tuples); the flat option keys of older files are
        folded into the typed options; InputError names keys it does not know."""
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        nested: dict[str, dict] = {}
        for key in [k for k in data if k in LEGACY_OPTION_FIELDS]:
            solver, option = LEGACY_OPTION_FIELDS[key]
            nested.setdefault(solver, {})[option] = data.pop(key)
        for solver, values in nested.items():
            base = data.get(solver) or {}
            data[solver] = {**(base if isinstance(base, dict) else {}), **values}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown DEQ config keys {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        """The stored form: lists for tuples, and each solver option under its official flat key (as files
        have always held them), so the checkpoint format does not change."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SOLVER_OPTIONS}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        for key, (solver, option) in LEGACY_OPTION_FIELDS.items():
            out[key] = getattr(getattr(self, solver), option)
        return out

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
        """The options dataclass of solver `name` (aliases accepted) held by this config."""
        return getattr(self, canonical_solver(name))

    def stop_rule(self, max_iter: int | None = None) -> StopRule:
        """The evaluation stop rule (tolerance, mode, cap, stagnation and flow-step exits) as plain data."""
        return StopRule(tol=float(self.f_tol), stop_mode=self.f_stop_mode, stall_window=int(self.stall_window),
                        max_iter=int(self.eval_max_iter if max_iter is None else max_iter),
                        stall_margin=float(self.stall_margin), flow_tol=float(self.flow_tol),
                        warm_flow_tol=float(self.warm_flow_tol))

    def with_stop_rule(self, rule: StopRule) -> DEQConfig:
        """A copy whose evaluation solves follow `rule` (f_tol and f_stop_mode also apply in training)."""
        return replace(self, f_tol=float(rule.tol), f_stop_mode=rule.stop_mode, eval_f_max_iter=int(rule.max_iter),
                       stall_window=int(rule.stall_window), stall_margin=float(rule.stall_margin),
                       flow_tol=float(rule.flow_tol), warm_flow_tol=float(rule.warm_flow_tol))

    def forward_solve(self, solve: SolveSpec | SolveOverrides | None = None, training: bool = False) -> SolveSpec:
        """The forward solve's spec: this config's (cap f_max_iter in training, eval_max_iter otherwise), changed
        by `solve` (overrides) or replaced by it (a whole spec). Training solves never stop on stagnation or the
        flow step (the official recipe's fixed budget)."""
        if isinstance(solve, SolveSpec):
            spec = solve
        else:
            base = SolveSpec(method=self.f_solver, options=self.solver_options(self.f_solver),
                             stop=self.stop_rule(self.f_max_iter if training else None),
                             return_final=self.return_final)
            spec = base if solve is None else solve.apply(base, options_for=self.solver_options)
        if training:
            spec = replace(spec, stop=replace(spec.stop, stall_window=0, flow_tol=0.0, warm_flow_tol=0.0))
        return spec

    def backward_solve(self) -> SolveSpec:
        """The IFT adjoint solve's spec (b_* fields; the lowest-residual estimate is returned)."""
        stop = StopRule(tol=float(self.b_tol), stop_mode=self.b_stop_mode, max_iter=int(self.b_max_iter))
        return SolveSpec(method=self.b_solver, options=self.solver_options(self.b_solver), stop=stop,
                         return_final=False)
