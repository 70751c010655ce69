"""Inputs and references for checking exports against PyTorch (shared by the export tests and
scripts/bench_export.py): real and synthetic image pairs, the PyTorch eager reference, ORT sessions, EPE.

The reference is the model's own forward with the plain fixed-point solver, no early stop unless asked, and
the last iterate (`return_final`), i.e. the official evaluation protocol that the graphs implement.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from deqflow.padding import InputPadder
from training.model.deq_flow import DEQFlow


def _to_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().unsqueeze(0)


def real_pair(height: int, width: int, crop: tuple[int, int] = (3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """The Middlebury 'motorcycle' stereo photographs (scikit-image, no download), resized to cover
    (height - crop[0]) x (width - crop[1]), centre-cropped, then padded to height x width with InputPadder
    (replicate, the evaluation convention): (1,3,H,W) float32 in 0..255 each."""
    import cv2
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    h, w = height - crop[0], width - crop[1]
    scale = max(h / left.shape[0], w / left.shape[1])
    sh, sw = max(h, round(left.shape[0] * scale)), max(w, round(left.shape[1] * scale))
    out = []
    for img in (left, right):
        img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        y, x = (sh - h) // 2, (sw - w) // 2
        out.append(_to_batch(img[y:y + h, x:x + w]))
    padder = InputPadder(out[0].shape, divisor=8)
    image1, image2 = padder.pad(*out)
    assert tuple(image1.shape[-2:]) == (height, width), (image1.shape, height, width)
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
    """A copy of `model` configured like the exported graphs: fixed-point steps, last iterate."""
    ref = copy.deepcopy(model).eval()
    ref.lookup = lookup
    ref.configure_deq(f_solver="fixed_point", f_tol=float(tolerance), f_stop_mode=stop_mode, return_final=True,
                      damping=1.0)
    return ref


def torch_flow(model: DEQFlow, image1: torch.Tensor, image2: torch.Tensor, iters: int,
               flow_init: torch.Tensor | None = None) -> dict:
    """PyTorch eager forward of a `reference_model`: flow, flow_low, residuals and the steps run."""
    with torch.no_grad():
        out = model(image1, image2, iters=iters, flow_init=flow_init)
    return {"flow": out.flow_up.numpy(), "flow_low": out.flow_low.numpy(), "iterations": int(out.stats.nstep),
            "residual": out.stats.final_abs.numpy(), "residual_rel": out.stats.final_rel.numpy(),
            "abs_trace": out.stats.abs_trace.numpy(), "rel_trace": out.stats.rel_trace.numpy()}


def ort_session(path: str | os.PathLike | bytes, threads: int = 1):
    """ONNX Runtime CPU session with a fixed thread count (timings compare with torch at the same count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                providers=["CPUExecutionProvider"])


def run_session(sess, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {k: v for k, v in feed.items() if k in wanted})))


def epe(a: np.ndarray, b: np.ndarray) -> float:
    """Mean end-point error between two (N,2,H,W) flows."""
    return float(np.sqrt(((a - b) ** 2).sum(axis=1)).mean())
