"""What a person looks at after one image pair: the pair report of `deqflow infer` (and so of `deqflow demo`).

Files: flow.flo, flow.png (Baker colour wheel), panel.png (image, flow and, with ground truth, the error
map side by side), residual.png (residual per solver step, when the solver ran on the host or in torch),
error.png and flow_gt.png with ground truth, flow_kitti.png on request, and summary.json. Printed: size,
solver iterations, final residuals and time, and with ground truth the EPE, 1/3/5 px accuracy and Fl-all.
numpy + OpenCV only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deqflow.errors import DeqflowError
from deqflow.fileio import atomic_write_bytes
from deqflow.flow_io import write_flo, write_flow
from deqflow.image_io import write_image
from deqflow.metrics import flow_metrics
from deqflow.viz import error_map, flow_to_color, residual_plot, side_by_side


@dataclass
class PairRun:
    """One solved pair: the first image, the flow at its size and the solver's statistics (first sample)."""

    image1: np.ndarray  # (H,W,3) uint8 RGB
    flow: np.ndarray  # (H,W,2) float32
    iterations: int
    final_abs: float
    final_rel: float | None = None
    seconds: float = 0.0
    abs_trace: np.ndarray | None = None  # residual per step, when known
    rel_trace: np.ndarray | None = None
    backend: str = ""  # e.g. 'torch:cpu', 'onnxruntime:cpu (split)'
    settings: dict = field(default_factory=dict)
    stop_rule: str = ""  # the rule the solve followed, e.g. 'rel < 0.005 or stalled over 6 or 60 iterations'
    stop_reason: str | None = None  # 'tolerance' | 'stalled' | 'cap' | 'nonfinite', when the solver reports it
    model_size: tuple[int, int] | None = None  # (H, W) the model ran at, when smaller than the images
    resolution: dict | None = None  # the reduced-resolution option (deqflow.resolution.Resolution.describe)


def write_pair_report(out_dir: str | Path, run: PairRun, *, gt: tuple[np.ndarray, np.ndarray] | None = None,
                      label: str = "pair", max_flow: float | None = None, kitti: bool = False) -> dict:
    """Write the report of `run` into `out_dir`, print its summary and return it. `gt`: (flow (H,W,2),
    valid (H,W)); `max_flow`: colour scale in px (default: the ground truth's largest flow, else the
    prediction's). When a write fails, the flow is saved elsewhere and the summary printed (`rescue`)."""
    out = Path(out_dir)
    if gt is not None and max_flow is None:
        max_flow = float(np.nanmax(np.linalg.norm(np.where(np.isfinite(gt[0]), gt[0], 0), axis=-1)))
    summary = _summary(run, label, out)
    if gt is not None:
        _add_metrics(summary, run.flow, gt)
    try:
        written = _write_files(out, run, summary, gt=gt, max_flow=max_flow, kitti=kitti)
    except OSError as exc:
        rescue(run, summary, out, exc)
    print_summary(summary, out, written)
    return summary


def _write_files(out: Path, run: PairRun, summary: dict, *, gt, max_flow: float | None, kitti: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = ["flow.flo", "flow.png", "panel.png"]
    write_flo(out / "flow.flo", run.flow)
    color = flow_to_color(run.flow, max_flow=max_flow)
    write_image(out / "flow.png", color)
    if kitti:
        write_flow(out / "flow_kitti.png", run.flow)
        written.append("flow_kitti.png")
    panels, labels = [run.image1, color], ["image1", f"flow ({run.backend or 'DEQ-Flow'})"]
    if gt is not None:
        panels.append(_write_ground_truth_pictures(out, run.flow, gt, max_flow))
        labels.append(f"error (EPE {summary['metrics']['epe']:.2f} px)")
        written.append("error.png")
    write_image(out / "panel.png", side_by_side(panels, labels))
    if run.abs_trace is not None:
        traces = {"abs residual": run.abs_trace}
        if run.rel_trace is not None:
            traces["rel residual"] = run.rel_trace
        suffix = f" ({run.backend})" if run.backend else ""
        residual_plot(traces, out / "residual.png", title=f"DEQ-Flow fixed-point residual{suffix}")
        written.insert(3, "residual.png")
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    return written


def rescue(run: PairRun, summary: dict, out: Path, exc: OSError) -> None:
    """A late write failed: the computed flow goes to a fresh temporary folder, the summary to stdout, and a
    one-line DeqflowError says where (the inference is not lost)."""
    import tempfile

    text = json.dumps(summary, indent=2)
    print(text)
    reason = f"cannot write the report in {out} ({exc.strerror or exc})"
    try:
        kept = Path(tempfile.mkdtemp(prefix="deqflow-pair-"))
        write_flo(kept / "flow.flo", run.flow)
        atomic_write_bytes(kept / "summary.json", text.encode())
    except OSError:
        raise DeqflowError(f"{reason}; the summary is printed above (the flow could not be saved anywhere)") \
            from None
    raise DeqflowError(f"{reason}; the flow and summary were saved in {kept} instead (summary printed above)") \
        from None


def _summary(run: PairRun, label: str, out: Path) -> dict:
    summary = {"label": label, "size": list(run.image1.shape[:2]), "seconds": round(run.seconds, 3),
               "iterations": int(run.iterations), "final_abs_residual": float(run.final_abs),
               "final_rel_residual": None if run.final_rel is None else float(run.final_rel)}
    if run.backend:
        summary.update(backend=run.backend, settings=run.settings)
    if run.stop_rule:
        summary.update(stop_rule=run.stop_rule, stop_reason=run.stop_reason)
    if run.model_size is not None:
        summary.update(model_size=list(run.model_size), resolution=run.resolution)
    summary["peak_rss_bytes"] = peak_rss_bytes()
    return summary


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (what the memory plan is checked against); None where the
    platform does not say."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def _add_metrics(summary: dict, flow: np.ndarray, gt: tuple[np.ndarray, np.ndarray]) -> None:
    """The metrics (and the zero-flow EPE, the trivial baseline) into `summary`."""
    gt_flow, gt_valid = gt
    metrics = flow_metrics(flow, gt_flow, gt_valid)
    summary["metrics"] = {k: float(v) for k, v in metrics.items()}
    summary["zero_flow_epe"] = float(flow_metrics(np.zeros_like(flow), gt_flow, gt_valid)["epe"])


def _write_ground_truth_pictures(out: Path, flow: np.ndarray, gt: tuple[np.ndarray, np.ndarray],
                                 max_flow: float | None) -> np.ndarray:
    """error.png and flow_gt.png; returns the error map for the panel."""
    gt_flow, gt_valid = gt
    err = error_map(flow, gt_flow, gt_valid)
    write_image(out / "error.png", err)
    write_image(out / "flow_gt.png", flow_to_color(np.nan_to_num(gt_flow), max_flow=max_flow))
    return err


def print_summary(s: dict, out: Path, written: list[str]) -> None:
    rel = "-" if s["final_rel_residual"] is None else f"{s['final_rel_residual']:.3g}"
    backend = f" ({s['backend']})" if s.get("backend") else ""
    ran = f" (model run at {s['model_size'][0]}x{s['model_size'][1]})" if s.get("model_size") not in (None, s["size"]) \
        else ""
    print(f"{s['label']}: {s['size'][0]}x{s['size'][1]}{ran}, {s['iterations']} solver iterations, final residual "
          f"abs {s['final_abs_residual']:.3g} / rel {rel}, {s['seconds']:.2f} s{backend}"
          + (f", peak memory {s['peak_rss_bytes'] / 2**30:.2f} GiB" if s.get("peak_rss_bytes") else ""))
    if s.get("stop_rule"):
        reason = f" (stopped: {s['stop_reason']})" if s.get("stop_reason") else ""
        print(f"  stop: {s['stop_rule']}{reason}")
    if "metrics" in s:
        m = s["metrics"]
        print(f"  EPE {m['epe']:.3f} px (zero flow: {s['zero_flow_epe']:.3f} px), 1px {100 * m['1px']:.1f}%, "
              f"3px {100 * m['3px']:.1f}%, 5px {100 * m['5px']:.1f}%, Fl-all {m['fl_all']:.2f}%")
    print(f"  wrote {out}/" + ", ".join(written))
