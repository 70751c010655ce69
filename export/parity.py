"""Inputs and references for checking exports against PyTorch (shared by the export tests and
scripts/bench_export.py): real and synthetic image pairs, the PyTorch eager reference, EPE. Exports run on
ONNX Runtime through the runtime's sessions (runtime.backends.onnxruntime_sessions: the split layout under
deqflow.host_solver's loop).

The reference is the model's own forward with the plain fixed-point solver, no early stop unless asked, and
the last iterate (`return_final`), i.e. the official evaluation protocol that the graphs implement.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from deqflow import middlebury
from deqflow.errors import InputError
from deqflow.padding import InputPadder
from deqflow.solver_spec import FixedPointOptions, SolveOverrides
from training.model.deq_flow import DEQFlow


def _to_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().unsqueeze(0)


def padded_real_pair(height: int, width: int,
                     crop: tuple[int, int] = (3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """The real pair (deqflow.middlebury) at (height - crop[0]) x (width - crop[1]), padded to height x width
    with InputPadder (replicate, the evaluation convention): (1,3,H,W) float32 in 0..255 each."""
    left, right, _, _ = middlebury.real_pair((height - crop[0], width - crop[1]))
    image1, image2 = InputPadder(_to_batch(left).shape, divisor=8).pad(_to_batch(left), _to_batch(right))
    if tuple(image1.shape[-2:]) != (height, width):
        raise InputError(f"padded_real_pair: {height}x{width} minus the crop {crop} does not pad back to "
                         f"{height}x{width}")
    return image1, image2


def synthetic_pair(height: int, width: int, seed: int = 0, max_displacement: float = 40.0):
    """A rendered pair with large motion (training.data.SyntheticFlowDataset): (image1, image2, flow (1,2,H,W))."""
    from training.data.synthetic import SyntheticFlowDataset

    sample = SyntheticFlowDataset(size=(height, width), length=1, seed=seed,
                                  max_displacement=max_displacement).sample(0)
    flow = torch.from_numpy(sample.flow.transpose(2, 0, 1)).unsqueeze(0).float()
    return _to_batch(sample.image1), _to_batch(sample.image2), flow


def reference_model(model: DEQFlow, lookup: str = "grid_sample", tolerance: float = 0.0,
                    stop_mode: str = "abs") -> DEQFlow:
    """A copy of `model` configured like the exported graphs: fixed-point steps, last iterate, no stagnation
    exit (a graph has none; the model's own stop rule may carry one)."""
    ref = copy.deepcopy(model).eval()
    ref.lookup = lookup
    ref.configure_deq(f_solver="fixed_point", f_tol=float(tolerance), f_stop_mode=stop_mode, return_final=True,
                      fixed_point=FixedPointOptions(), stall_window=0)
    return ref


def torch_flow(model: DEQFlow, image1: torch.Tensor, image2: torch.Tensor, iters: int,
               flow_init: torch.Tensor | None = None) -> dict:
    """PyTorch eager forward of a `reference_model`: flow, flow_low, residuals and the steps run."""
    with torch.no_grad():
        out = model(image1, image2, solve=SolveOverrides(max_iter=iters), flow_init=flow_init)
    return {"flow": out.flow_up.numpy(), "flow_low": out.flow_low.numpy(), "iterations": int(out.stats.iterations),
            "residual": out.stats.final_abs.numpy(), "residual_rel": out.stats.final_rel.numpy(),
            "abs_trace": out.stats.abs_trace.numpy(), "rel_trace": out.stats.rel_trace.numpy()}


def epe(a: np.ndarray, b: np.ndarray) -> float:
    """Mean end-point error between two (N,2,H,W) flows."""
    return float(np.sqrt(((a - b) ** 2).sum(axis=1)).mean())
