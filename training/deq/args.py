"""Command-line flags of the DEQ engine, with the official DEQ-Flow names and defaults (torch-free)."""

from __future__ import annotations

import argparse

from deqflow.cli_args import count, count_or_zero, iterations, non_negative_number, positive_number
from deqflow.solver_spec import SOLVER_NAMES, STOP_MODES, AndersonOptions, BroydenOptions, FixedPointOptions
from training.deq.config import DEQConfig


def add_deq_args(parser: argparse.ArgumentParser) -> None:
    """Add the official `add_deq_args` flags (same names, defaults) plus deqflow's solver options."""
    d = DEQConfig()
    g = parser.add_argument_group("DEQ")
    g.add_argument("--wnorm", action="store_true",
                   help="weight norm on the update block (official flag; the model config decides)")
    g.add_argument("--f_solver", default=d.f_solver, choices=sorted(SOLVER_NAMES), help="forward solver")
    g.add_argument("--b_solver", default=d.b_solver, choices=sorted(SOLVER_NAMES), help="IFT backward solver")
    g.add_argument("--f_thres", type=iterations, default=d.f_max_iter, help="forward solver max steps")
    g.add_argument("--b_thres", type=iterations, default=d.b_max_iter, help="backward solver max steps")
    g.add_argument("--f_eps", type=non_negative_number, default=d.f_tol,
                   help="forward stop tolerance (<= 0: no early stop)")
    g.add_argument("--b_eps", type=non_negative_number, default=d.b_tol, help="backward stop tolerance")
    g.add_argument("--f_stop_mode", default=d.f_stop_mode, choices=STOP_MODES)
    g.add_argument("--b_stop_mode", default=d.b_stop_mode, choices=STOP_MODES)
    g.add_argument("--eval_factor", type=positive_number, default=d.eval_factor,
                   help="test steps = f_thres * eval_factor")
    g.add_argument("--eval_f_thres", type=count_or_zero, default=d.eval_f_max_iter,
                   help="test steps (overrides eval_factor when > 0)")
    g.add_argument("--indexing_core", action="store_true",
                   help="one solve with gradients at absolute steps (default: sliced segments)")
    g.add_argument("--ift", action="store_true", help="exact implicit gradient for the last loss term")
    g.add_argument("--safe_ift", action="store_true", help="IFT on a separate graph (one extra f evaluation)")
    g.add_argument("--n_losses", type=count, default=d.n_states,
                   help="states sampled along the trajectory (fixed-point correction)")
    g.add_argument("--indexing", type=count, nargs="+", default=list(d.indexing), help="explicit sampled steps")
    g.add_argument("--phantom_grad", type=count, nargs="+", default=list(d.phantom_grad),
                   help="unrolled phantom-gradient steps (one value, or one per loss term)")
    g.add_argument("--tau", type=positive_number, default=d.tau, help="damping of the phantom steps")
    g.add_argument("--sup_all", action="store_true", help="supervise every phantom step")
    g.add_argument("--sradius_mode", action="store_true", help="Jacobian spectral radius at test")
    g.add_argument("--damping", type=positive_number, default=d.fixed_point.damping,
                   help="fixed-point damping z <- (1-d) z + d f(z)")
    g.add_argument("--anderson_m", type=count, default=d.anderson.m, help="Anderson window")
    g.add_argument("--anderson_lam", type=positive_number, default=d.anderson.lam, help="Anderson regularisation")
    g.add_argument("--anderson_beta", type=positive_number, default=d.anderson.beta, help="Anderson mixing")
    g.add_argument("--anderson_safeguard", type=non_negative_number, default=d.anderson.safeguard,
                   help="Anderson: forget the history when the residual grows by this factor (0: never, official)")
    g.add_argument("--broyden_memory", type=count_or_zero, default=d.broyden.memory,
                   help="Broyden rank-one terms kept (0: the solve's iteration cap)")
    g.add_argument("--return_final", action="store_true",
                   help="return the last iterate instead of the lowest-residual one")


def deq_config_from_args(ns: argparse.Namespace) -> DEQConfig:
    """DEQConfig from parsed flags; flags left None (e.g. filled from stage defaults later) keep the
    DEQConfig default. `--wnorm` belongs to the model config and is not read here."""
    d = DEQConfig()

    def get(flag: str, default):
        value = getattr(ns, flag, None)
        return default if value is None else value

    return DEQConfig(
        f_solver=get("f_solver", d.f_solver), b_solver=get("b_solver", d.b_solver),
        f_max_iter=get("f_thres", d.f_max_iter), b_max_iter=get("b_thres", d.b_max_iter),
        f_tol=get("f_eps", d.f_tol), b_tol=get("b_eps", d.b_tol),
        f_stop_mode=get("f_stop_mode", d.f_stop_mode), b_stop_mode=get("b_stop_mode", d.b_stop_mode),
        eval_factor=get("eval_factor", d.eval_factor), eval_f_max_iter=get("eval_f_thres", d.eval_f_max_iter),
        ift=bool(get("ift", d.ift)), safe_ift=bool(get("safe_ift", d.safe_ift)),
        n_states=get("n_losses", d.n_states), indexing=tuple(get("indexing", d.indexing)),
        phantom_grad=tuple(get("phantom_grad", d.phantom_grad)), tau=get("tau", d.tau),
        sup_all=bool(get("sup_all", d.sup_all)),
        core="indexing" if get("indexing_core", False) else "sliced",
        return_final=bool(get("return_final", d.return_final)),
        fixed_point=FixedPointOptions(damping=get("damping", d.fixed_point.damping)),
        anderson=AndersonOptions(m=get("anderson_m", d.anderson.m), lam=get("anderson_lam", d.anderson.lam),
                                 beta=get("anderson_beta", d.anderson.beta),
                                 safeguard=get("anderson_safeguard", d.anderson.safeguard)),
        broyden=BroydenOptions(memory=get("broyden_memory", d.broyden.memory)),
        sradius_mode=bool(get("sradius_mode", d.sradius_mode)),
    )
