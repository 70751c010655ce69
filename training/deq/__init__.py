"""Generic deep-equilibrium engine: solvers, implicit/phantom gradients, DEQ cores, weight norm.

Knows nothing about optical flow: any f mapping a (B, ...) state to the same shape works.
"""

from training.deq.args import add_deq_args, deq_config_from_args
from training.deq.config import DEQConfig
from training.deq.core import DEQ
from training.deq.grad import attach_ift, attach_phantom
from training.deq.jacobian import estimate_spectral_radius
from training.deq.solvers import (
    SOLVERS,
    SolverResult,
    SolverStats,
    anderson,
    broyden,
    fixed_point_iter,
    get_solver,
)
from training.deq.state import StatePacker
from training.deq.weight_norm import apply_weight_norm, fold_weight_norm, has_weight_norm, reset_weight_norm

__all__ = [
    "DEQ",
    "SOLVERS",
    "DEQConfig",
    "SolverResult",
    "SolverStats",
    "StatePacker",
    "add_deq_args",
    "anderson",
    "apply_weight_norm",
    "attach_ift",
    "attach_phantom",
    "broyden",
    "deq_config_from_args",
    "estimate_spectral_radius",
    "fixed_point_iter",
    "fold_weight_norm",
    "get_solver",
    "has_weight_norm",
    "reset_weight_norm",
]
