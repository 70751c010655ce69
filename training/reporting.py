"""Run the model on one pair and leave what a person looks at: flow picture, error picture, .flo,
residual-vs-iteration plot, and a printed summary (EPE, iterations, final residual)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from deqflow.flow_io import write_flo
from deqflow.image_io import write_image
from deqflow.metrics import flow_metrics
from deqflow.viz import error_map, flow_to_color, residual_plot, side_by_side
from training.inference import estimate_flow
from training.model.deq_flow import DEQFlow


def report_pair(model: DEQFlow, image1: np.ndarray, image2: np.ndarray, out_dir: Path, *,
                gt: tuple[np.ndarray, np.ndarray | None] | None = None, iters: int | None = None,
                device: str = "cpu", label: str = "pair") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = estimate_flow(model, image1, image2, iters=iters, device=device)
    seconds = time.perf_counter() - t0
    flow = result.flow
    stats = result.stats
    write_flo(out_dir / "flow.flo", flow)
    max_flow = None
    if gt is not None:
        gt_flow, gt_valid = gt
        max_flow = float(np.nanmax(np.linalg.norm(np.where(np.isfinite(gt_flow), gt_flow, 0), axis=-1)))
    color = flow_to_color(flow, max_flow=max_flow)
    write_image(out_dir / "flow.png", color)
    panels, labels = [image1, color], ["image1", "flow (DEQ-Flow)"]
    summary: dict = {"label": label, "size": list(image1.shape[:2]), "seconds": round(seconds, 3),
                     "iterations": int(stats.nstep), "final_abs_residual": float(stats.abs_trace[:, -1].max()),
                     "final_rel_residual": float(stats.rel_trace[:, -1].max())}
    if gt is not None:
        gt_flow, gt_valid = gt
        metrics = flow_metrics(flow, gt_flow, gt_valid)
        summary["metrics"] = {k: float(v) for k, v in metrics.items()}
        zero = flow_metrics(np.zeros_like(flow), gt_flow, gt_valid)
        summary["zero_flow_epe"] = float(zero["epe"])
        err = error_map(flow, gt_flow, gt_valid)
        write_image(out_dir / "error.png", err)
        write_image(out_dir / "flow_gt.png", flow_to_color(np.nan_to_num(gt_flow), max_flow=max_flow))
        panels += [err]
        labels += [f"error (EPE {metrics['epe']:.2f} px)"]
    write_image(out_dir / "panel.png", side_by_side(panels, labels))
    residual_plot({"abs residual": stats.abs_trace[0].cpu().numpy(), "rel residual": stats.rel_trace[0].cpu().numpy()},
                  out_dir / "residual.png", title="DEQ-Flow fixed-point residual")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out_dir)
    return summary


def _print_summary(s: dict, out_dir: Path) -> None:
    print(f"{s['label']}: {s['size'][0]}x{s['size'][1]}, {s['iterations']} solver iterations, final residual "
          f"abs {s['final_abs_residual']:.3g} / rel {s['final_rel_residual']:.3g}, {s['seconds']:.2f} s")
    if "metrics" in s:
        m = s["metrics"]
        print(f"  EPE {m['epe']:.3f} px (zero flow: {s['zero_flow_epe']:.3f} px), 1px {100 * m['1px']:.1f}%, "
              f"3px {100 * m['3px']:.1f}%, 5px {100 * m['5px']:.1f}%, Fl-all {m['fl_all']:.2f}%")
    print(f"  wrote {out_dir}/flow.flo, flow.png, panel.png, residual.png" + (", error.png" if "metrics" in s else ""))
