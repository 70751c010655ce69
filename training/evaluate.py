"""Evaluation with the official protocol: pad to a multiple of 8 (Sintel or KITTI mode), solve with the
plain fixed-point solver for f_thres x eval_factor iterations, report per-pixel and per-image EPE.

Which EPE is which: `epe_per_pixel` averages over every valid pixel of every image (the Sintel / Chairs /
Things "EPE"); `epe_per_image` averages the per-image means (the KITTI "EPE" of RAFT and DEQ-Flow).
Fl-all is the percentage of valid pixels with EPE > 3 px and > 5 % of |gt| (KITTI "F1").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from deqflow.errors import InputError
from deqflow.metrics import FlowMetricAccumulator
from deqflow.padding import InputPadder
from deqflow.solver_spec import SolveOverrides
from training.model.deq_flow import DEQFlow

# Synthetic evaluation scenes come from this seed; training uses small seeds (scene = f(seed, index)).
HELDOUT_SEED = 9_000_001
SYNTHETIC_EVAL_SIZE = (256, 320)


@dataclass
class EvalSet:
    name: str
    dataset: Dataset
    pad_mode: str  # "sintel" or "kitti"
    headline: str  # the metric the benchmark calls "EPE": "epe_per_pixel" or "epe_per_image"


def size_groups(dataset: Dataset, n: int, batch: int):
    """Samples 0..n-1, each read once, in runs of at most `batch` consecutive samples of one image size (one
    solve each)."""
    group: list = []
    for i in range(n):
        sample = dataset[i][:4]
        if group and (len(group) == batch or sample[0].shape != group[0][0].shape):
            yield group
            group = []
        group.append(sample)
    if group:
        yield group


@torch.no_grad()
def evaluate_dataset(model: DEQFlow, dataset: Dataset, *, pad_mode: str = "sintel", iters: int | None = None,
                     device: str | torch.device = "cpu", max_samples: int | None = None, progress: bool = True,
                     desc: str = "eval", batch: int = 1) -> dict[str, float]:
    """Run the model over a dataset of (image1, image2, flow, valid) samples and pool the metrics. `batch` > 1
    solves runs of same-size samples together; each stops by its own rule, so the metrics are those of batch 1
    (bit-identical with `model.batch_invariant`)."""
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if n == 0:
        raise InputError(f"{desc}: the dataset is empty")
    acc = FlowMetricAccumulator()
    steps, residuals = [], []
    with tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for samples in size_groups(dataset, n, batch):
            bar.update(len(samples))
            _evaluate_group(model, samples, pad_mode, iters, device, acc, steps, residuals)
    summary = {k: float(v) for k, v in acc.summary().items()}
    summary["mean_iterations"] = float(np.mean(steps))
    summary["mean_final_abs_residual"] = float(np.mean(residuals))
    return summary


@torch.no_grad()
def _evaluate_group(model, samples, pad_mode, iters, device, acc, steps, residuals) -> None:
    """One solve of same-size samples; their metrics, per-pair iterations and final residuals booked."""
    padder = InputPadder(samples[0][0][None].shape, mode=pad_mode)
    p1, p2 = padder.pad(torch.stack([s[0] for s in samples]).to(device),
                        torch.stack([s[1] for s in samples]).to(device))
    out = model(p1, p2, solve=None if iters is None else SolveOverrides(max_iter=iters))
    preds = padder.unpad(out.flow_up).permute(0, 2, 3, 1).cpu().numpy()
    for pred, (_, _, flow, valid) in zip(preds, samples):
        acc.add(pred, flow.permute(1, 2, 0).numpy(), valid.numpy())
    steps += [int(k) for k in out.stats.sample_iterations]
    residuals += [float(v) for v in out.stats.final_abs]


def standard_sets(name: str, root: str | Path = "datasets", max_samples: int | None = None) -> list[EvalSet]:
    """The official validation sets of one benchmark name (synthetic, chairs, things, sintel, kitti)."""
    from training.data import KITTI, FlyingChairs, FlyingThings3D, MpiSintel, SyntheticFlowDataset

    root = Path(root)
    if name == "synthetic":
        ds = SyntheticFlowDataset(size=SYNTHETIC_EVAL_SIZE, length=max_samples or 64, seed=HELDOUT_SEED)
        return [EvalSet("synthetic", ds, "sintel", "epe_per_pixel")]
    if name == "chairs":
        return [EvalSet("chairs", FlyingChairs(root / "FlyingChairs_release" / "data", "validation"),
                        "sintel", "epe_per_pixel")]
    if name == "things":
        return [EvalSet(f"things_{p}", FlyingThings3D(root / "FlyingThings3D", f"frames_{p}pass", split="TEST"),
                        "sintel", "epe_per_pixel") for p in ("clean", "final")]
    if name == "sintel":
        return [EvalSet(f"sintel_{p}", MpiSintel(root / "Sintel", "training", p), "sintel", "epe_per_pixel")
                for p in ("clean", "final")]
    if name == "kitti":
        return [EvalSet("kitti", KITTI(root / "KITTI", "training"), "kitti", "epe_per_image")]
    raise InputError(f"unknown evaluation set {name!r}; choose from synthetic, chairs, things, sintel, kitti")


def run_sets(model: DEQFlow, sets: list[EvalSet], *, iters: int | None = None, device="cpu",
             max_samples: int | None = None, progress: bool = True, batch: int = 1) -> dict[str, dict[str, float]]:
    return {s.name: {"headline_metric": s.headline,
                     **evaluate_dataset(model, s.dataset, pad_mode=s.pad_mode, iters=iters, device=device,
                                        max_samples=max_samples, progress=progress, desc=s.name, batch=batch)}
            for s in sets}


def validate(model: DEQFlow, names, *, root: str | Path = "datasets", max_samples: int | None = None,
             device="cpu", progress: bool = False, iters: int | None = None) -> dict[str, float]:
    """Flat {set_metric: value} dictionary for training logs (headline EPE, Fl-all, 1px)."""
    flat: dict[str, float] = {}
    for name in names:
        for set_name, m in run_sets(model, standard_sets(name, root, max_samples), iters=iters, device=device,
                                    max_samples=max_samples, progress=progress).items():
            flat[f"{set_name}_epe"] = m[m["headline_metric"]]
            flat[f"{set_name}_1px"] = m["1px"]
            flat[f"{set_name}_fl_all"] = m["fl_all"]
            flat[f"{set_name}_iterations"] = m["mean_iterations"]
    return flat


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per evaluation set, both EPE variants named."""
    head = ("| set | EPE (headline) | EPE per-pixel | EPE per-image | 1px % | 3px % | 5px % | Fl-all % | "
            "iterations |\n|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name, m in results.items():
        rows.append(f"| {name} | {m[m['headline_metric']]:.3f} ({m['headline_metric'].replace('epe_', '')}) | "
                    f"{m['epe_per_pixel']:.3f} | {m['epe_per_image']:.3f} | {100 * m['1px']:.1f} | "
                    f"{100 * m['3px']:.1f} | {100 * m['5px']:.1f} | {m['fl_all']:.2f} | "
                    f"{m['mean_iterations']:.1f} |")
    return "\n".join(rows)
