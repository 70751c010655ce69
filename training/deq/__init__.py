"""Generic deep-equilibrium engine: solvers, implicit/phantom gradients, DEQ cores, weight norm.

Knows nothing about optical flow: any f mapping a (B, ...) state to the same shape works. Names are
loaded on first use (PEP 562), so `training.deq.config` and `training.deq.args` import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "add_deq_args": "args",
    "deq_config_from_args": "args",
    "DEQConfig": "config",
    "DEQ": "core",
    "attach_ift": "grad",
    "attach_phantom": "grad",
    "estimate_spectral_radius": "jacobian",
    "SOLVERS": "registry",
    "Solver": "registry",
    "get_solver": "registry",
    "FixedPointResult": "solvers",
    "concat_stats": "solvers",
    "anderson": "solvers",
    "broyden": "solvers",
    "fixed_point_iter": "solvers",
    "StatePacker": "state",
    "apply_weight_norm": "weight_norm",
    "fold_weight_norm": "weight_norm",
    "has_weight_norm": "weight_norm",
    "reset_weight_norm": "weight_norm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
