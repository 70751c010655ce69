"""High-resolution benchmark (issue 22): peak memory against frame size for both correlation modes on both CPU
backends, time per solver iteration (local against all-pairs), and a 4K pair with known motion end to end.

Every memory and end-to-end figure is one fresh `deqflow infer` subprocess (peak = the child's ru_maxrss) under an
address-space limit, so a size that does not fit fails inside the process instead of meeting the kernel's
out-of-memory killer. A case whose memory plan exceeds --budget is not run: its row carries the plan's estimate.
Per-iteration times are taken in this process, as the difference of two fixed iteration counts (no early stop),
so the encoder and the correlation set-up cancel out.

    python scripts/bench_highres.py            # -> docs/highres.json, docs/highres.md, docs/highres_memory.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from calibrate_memory_plan import measure_infer, plan_for  # the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]

SIZES = ((256, 320), (440, 1024), (720, 1280), (1080, 1920), (1440, 2560), (2160, 3840))
TIMING_SIZES = ((440, 1024), (1080, 1920))
MODES = ("all-pairs", "local")
LOOKUP_OF_EXPORT = {"all-pairs": "gather", "local": "local"}
K1, K2 = 2, 8  # per-iteration time = (t(K2) - t(K1)) / (K2 - K1)


def export_split(checkpoint: str, mode: str, folder: Path) -> str:
    """A dynamic split export of `checkpoint` in correlation mode `mode`, covering every benchmarked size."""
    out = folder / f"model-{mode}.onnx"
    cmd = [sys.executable, "-m", "deqflow", "export", "--checkpoint", checkpoint, "--layout", "split", "--dynamic",
           "--lookup", LOOKUP_OF_EXPORT[mode], "--height", "440", "--width", "1024", "--min-shape", "128x128",
           "--max-shape", "2160x3840", "--output", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return str(out)


def plan_estimate(model_args: list[str], size: tuple[int, int], mode: str) -> int:
    """The memory plan's peak for this case (`--checkpoint PATH` or `--model PATH`)."""
    backend = "torch" if model_args[0] == "--checkpoint" else "onnxruntime"
    return plan_for(backend, model_args[1], *size, corr=mode)


def memory_rows(cases: dict, sizes, budget: int) -> list[dict]:
    rows = []
    for (backend, mode), model_args in cases.items():
        corr = ["--corr", mode] if backend == "torch" else []
        for size in sizes:
            est = plan_estimate(model_args, size, mode)
            row = {"backend": backend, "mode": mode, "size": list(size), "estimate_bytes": est}
            if est > budget:
                row["status"] = f"not run: the plan's estimate exceeds the {budget / 2**30:.0f} GiB budget"
            else:
                run = measure_infer(model_args, *size, as_limit=budget + (4 << 30),
                                    extra=[*corr, "--memory-limit", "1T", "--threads", "2"])
                ok = run["returncode"] == 0
                row.update(peak_bytes=run["peak_bytes"] if ok else None,
                           status="ok" if ok else f"failed: {run['stderr'].strip().splitlines()[-1:]}")
                if ok:
                    row["estimate_over_peak"] = round(est / run["peak_bytes"], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def refresh_estimates(rows: list[dict], cases: dict) -> None:
    """Recompute each kept row's estimate with the current memory plan (after a recalibration)."""
    for row in rows:
        row["estimate_bytes"] = est = plan_estimate(cases[(row["backend"], row["mode"])], tuple(row["size"]),
                                                    row["mode"])
        if row.get("peak_bytes"):
            row["estimate_over_peak"] = round(est / row["peak_bytes"], 3)


def _backend(kind: str, path: str, mode: str, iters: int):
    from deqflow.solver_spec import SolveOverrides

    settings = SolveOverrides(max_iter=iters, tol=0.0)
    if kind == "torch":
        from runtime.backends.torch_backend import TorchBackend

        lookup = "grid_sample" if mode == "all-pairs" else "local"
        return TorchBackend(path, settings=settings, threads=2, lookup=lookup)
    from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, settings=settings, threads=2)


def iteration_time(kind: str, path: str, mode: str, size: tuple[int, int], repeats: int) -> dict:
    """Seconds per solver iteration: median over `repeats` of t(K2) - t(K1), interleaved."""
    from runtime.pipeline import FlowEstimator

    rng = np.random.default_rng(0)
    h, w = size
    base = rng.integers(0, 256, (h, w + 4, 3), dtype=np.uint8)
    img1, img2 = np.ascontiguousarray(base[:, :w]), np.ascontiguousarray(base[:, 4:])
    estimators = {k: FlowEstimator(_backend(kind, path, mode, k)) for k in (K1, K2)}
    estimators[K1](img1, img2)  # warm-up (allocator, ORT arena)
    times = {K1: [], K2: []}
    for _ in range(repeats):
        for k, est in estimators.items():
            t0 = time.perf_counter()
            est(img1, img2)
            times[k].append(time.perf_counter() - t0)
    for est in estimators.values():
        est.backend.close()
    diffs = [(b - a) / (K2 - K1) for a, b in zip(times[K1], times[K2])]
    return {"backend": kind, "mode": mode, "size": list(size), "seconds_per_iteration": statistics.median(diffs),
            "seconds_at_k1": statistics.median(times[K1]), "repeats": repeats}


PARITY_ITERS = 12


def parity_rows(checkpoint: str, exports: dict) -> list[dict]:
    """Local against all-pairs flows (max abs, px) after PARITY_ITERS plain iterations from the same start, on
    the real motorcycle pair at full size and a 1080p pair, per backend where both modes fit this machine."""
    from deqflow.middlebury import motorcycle

    left, right, _, _ = motorcycle()
    big = known_motion_pair((1080, 1920), scale=3.5, seed=1080)
    rows = []
    for label, (img1, img2) in (("motorcycle (full size)", (left, right)), ("1080x1920", big[:2])):
        for kind in ("torch", "onnxruntime"):
            if kind == "onnxruntime" and img1.shape[0] >= 1080:
                continue  # the all-pairs export needs more than this machine has at 1080p (its plan says so)
            flows = {}
            for mode in MODES:
                from runtime.pipeline import FlowEstimator

                backend = _backend(kind, checkpoint if kind == "torch" else exports[mode], mode, PARITY_ITERS)
                flows[mode] = FlowEstimator(backend)(np.ascontiguousarray(img1), np.ascontiguousarray(img2)).flow
                backend.close()
            diff = float(np.abs(flows["local"] - flows["all-pairs"]).max())
            rows.append({"pair": label, "size": list(img1.shape[:2]), "backend": kind, "iterations": PARITY_ITERS,
                         "max_abs_px": diff, "flow_max_px": float(np.abs(flows["all-pairs"]).max())})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def known_motion_pair(size: tuple[int, int], scale: float | None, seed: int, photo: str = "coffee",
                      max_disp: float | None = None):
    """A pair of `size` with known motion: a held-out photograph enlarged `scale` times (None: just enough to fill
    the frame with a margin), warped by a homography moving up to `max_disp` px (None: a hundredth of the longer
    side), with the validation set's photometric changes (training.data.heldout_real)."""
    import cv2

    from training.data.heldout_real import HeldoutRealConfig, warped_photo_pair
    from training.data.photos import load_photo_full

    image = load_photo_full(photo)
    if scale is None:
        scale = 1.1 * max(size[0] / image.shape[0], size[1] / image.shape[1])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return warped_photo_pair(image, np.random.default_rng(seed), size,
                             max(size) / 96 if max_disp is None else max_disp, HeldoutRealConfig())


def timing_rows(args, cases: dict, exports: dict, budget: int) -> list[dict]:
    """iteration_time per case and timing size; a case whose memory plan exceeds the budget is not run (this
    runs in-process: an allocation beyond physical memory would meet the out-of-memory killer)."""
    rows = []
    for size in args.timing_sizes:
        for (kind, mode), model_args in cases.items():
            est = plan_estimate(model_args, tuple(size), mode)
            if est > budget:
                row = {"backend": kind, "mode": mode, "size": list(size), "estimate_bytes": est,
                       "status": "not run: the plan's estimate exceeds the budget"}
            else:
                row = iteration_time(kind, args.checkpoint if kind == "torch" else exports[mode], mode, size,
                                     args.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def pair_4k(folder: Path) -> tuple[Path, Path, Path]:
    """The 2160x3840 pair with known motion (up to 40 px) written as PNGs and a .flo."""
    from deqflow.flow_io import write_flow
    from deqflow.image_io import write_image

    img1, img2, flow, _ = known_motion_pair((2160, 3840), scale=7.0, seed=4096)
    paths = folder / "4k_1.png", folder / "4k_2.png", folder / "4k_gt.flo"
    write_image(paths[0], img1)
    write_image(paths[1], img2)
    write_flow(paths[2], flow)
    return paths


def end_to_end_4k(cases: dict, folder: Path) -> list[dict]:
    """`deqflow infer` with defaults (--corr auto, the model's stop rule) on the 4K pair, per backend/export."""
    a, b, gt = pair_4k(folder)
    rows = []
    for label, model_args in cases.items():
        out = folder / f"out-{label}"
        code = ("import resource, subprocess, sys, time; t = time.perf_counter(); done = subprocess.run(sys.argv[1:]);"
                " print(time.perf_counter() - t); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
                " sys.exit(done.returncode)")
        cmd = [sys.executable, "-c", code, "prlimit", "--as=24000000000", sys.executable, "-m", "deqflow", "infer",
               *model_args, "--image1", str(a), "--image2", str(b), "--gt", str(gt), "--output", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = done.stdout.strip().splitlines()
        row = {"case": label, "returncode": done.returncode, "wall_seconds": float(lines[-2]),
               "peak_bytes": int(lines[-1]) * 1024}
        if done.returncode == 0:
            s = json.loads((out / "summary.json").read_text())
            row.update(iterations=s.get("iterations"), epe=s.get("metrics", {}).get("epe"),
                       solve_seconds=s.get("seconds"), zero_flow_epe=s.get("zero_flow_epe"),
                       stop_reason=s.get("stop_reason"), model_size=s.get("model_size"))
        else:
            row["message"] = done.stderr.strip().splitlines()[-1:]
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows.append(_dis_row(a, b, gt))
    return rows


def _dis_row(a: Path, b: Path, gt: Path) -> dict:
    """OpenCV's DIS (medium preset) on the same pair: the classical baseline of the model card."""
    from deqflow.baselines import opencv_flow
    from deqflow.flow_io import read_flow
    from deqflow.image_io import read_image
    from deqflow.metrics import flow_metrics

    img1, img2 = read_image(a), read_image(b)
    t0 = time.perf_counter()
    flow = opencv_flow("dis_medium", img1, img2)
    seconds = time.perf_counter() - t0
    gt_flow, valid = read_flow(gt)
    return {"case": "OpenCV DIS (medium), for scale", "returncode": 0, "wall_seconds": seconds,
            "peak_bytes": None, "iterations": None, "epe": float(flow_metrics(flow, gt_flow, valid)["epe"])}


def _gb(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def markdown(r: dict) -> str:
    lines = ["**Peak memory against frame size** (GiB; measured peak RSS, the plan's estimate in brackets)", "",
             "| frame | " + " | ".join(f"{b} {m}" for b, m in r["memory_cases"]) + " |",
             "|---|" + "---:|" * len(r["memory_cases"])]
    for size in r["sizes"]:
        cells = []
        for b, m in r["memory_cases"]:
            row = next((x for x in r.get("memory", []) if x["backend"] == b and x["mode"] == m and x["size"] == size),
                       None)
            if row is None:
                continue
            shown = _gb(row.get("peak_bytes")) if row["status"] == "ok" else "not run" if "not run" in row["status"] \
                else "failed"
            cells.append(f"{shown} ({_gb(row['estimate_bytes'])})")
        lines.append(f"| {size[0]}x{size[1]} | " + " | ".join(cells) + " |")
    lines += ["", f"**Time per solver iteration** (s; t({K2}) - t({K1}) over {K2 - K1} iterations, median)", "",
              "| backend | frame | all-pairs | local | local / all-pairs |", "|---|---|---:|---:|---:|"]
    for b in ("torch", "onnxruntime"):
        for size in r["timing_sizes"]:
            t = {x["mode"]: x.get("seconds_per_iteration") for x in r.get("timing", [])
                 if x["backend"] == b and x["size"] == size}
            if None in t.values() and len(t) == 2:
                shown = {m: "not run (memory)" if v is None else f"{v:.3f}" for m, v in t.items()}
                lines.append(f"| {b} | {size[0]}x{size[1]} | {shown['all-pairs']} | {shown['local']} | - |")
                continue
            if len(t) == 2:
                lines.append(f"| {b} | {size[0]}x{size[1]} | {t['all-pairs']:.3f} | {t['local']:.3f} | "
                             f"{t['local'] / t['all-pairs']:.2f} |")
    lines += ["", f"**Local against all-pairs flows** ({PARITY_ITERS} plain iterations each, same start)", "",
              "| pair | backend | max abs difference (px) | largest flow (px) |", "|---|---|---:|---:|"]
    for x in r.get("parity", []):
        lines.append(f"| {x['pair']} | {x['backend']} | {x['max_abs_px']:.2e} | {x['flow_max_px']:.1f} |")
    lines += ["", "**A 2160x3840 pair with known motion**, `deqflow infer` with defaults (a photograph enlarged 7x, "
              "moving up to 40 px)", "",
              "| backend / model | result | wall time (s) | iterations | EPE (px) | peak memory (GiB) |",
              "|---|---|---:|---:|---:|---:|"]
    for x in r.get("end_to_end_4k", []):
        ok = x["returncode"] == 0
        result = "ran" if ok else "refused: " + " ".join(x.get("message", []))[:160]
        epe = f"{x['epe']:.3f}" if ok and x.get("epe") is not None else "-"
        lines.append(f"| {x['case']} | {result} | {x['wall_seconds']:.1f} | {x.get('iterations') or '-'} | {epe} | "
                     f"{_gb(x['peak_bytes'])} |")
    lines += _zero_flow_note(r)
    return "\n".join(lines) + "\n"


def _zero_flow_note(r: dict) -> list[str]:
    zero = next((x["zero_flow_epe"] for x in r.get("end_to_end_4k", []) if x.get("zero_flow_epe")), None)
    return ["", f"Zero flow on this pair: EPE {zero:.3f} px."] if zero else []


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for b, m in r["memory_cases"]:
        rows = [x for x in r.get("memory", []) if x["backend"] == b and x["mode"] == m]
        px = [x["size"][0] * x["size"][1] / 1e6 for x in rows]
        line, = ax.plot([p for p, x in zip(px, rows) if x.get("peak_bytes")],
                        [x["peak_bytes"] / 2**30 for x in rows if x.get("peak_bytes")], marker="o", label=f"{b} {m}")
        ax.plot(px, [x["estimate_bytes"] / 2**30 for x in rows], ls="--", color=line.get_color(), alpha=0.6)
    ax.axhline(24, color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="megapixels per frame", ylabel="peak memory (GiB)",
           title="peak memory (solid: measured, dashed: memory plan)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    from deqflow.cli_args import image_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "deqflow-T-synthetic.pth"))
    p.add_argument("--budget", type=float, default=18.0, help="GiB: cases whose plan exceeds it are not run")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats per case")
    p.add_argument("--skip", nargs="*", default=[], choices=["memory", "timing", "parity", "4k"])
    p.add_argument("--sizes", type=image_size, nargs="+", default=list(SIZES), help="memory sizes HxW")
    p.add_argument("--timing-sizes", type=image_size, nargs="+", default=list(TIMING_SIZES))
    p.add_argument("--output", default=str(ROOT / "docs" / "highres.json"))
    args = p.parse_args()
    out = Path(args.output)
    result = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="deqflow-highres-") as tmp:
        exports = {m: export_split(args.checkpoint, m, Path(tmp)) for m in MODES}
        cases = {("torch", m): ["--checkpoint", args.checkpoint] for m in MODES}
        cases.update({("onnxruntime", m): ["--model", exports[m]] for m in MODES})
        result.update(checkpoint=args.checkpoint, sizes=[list(s) for s in args.sizes],
                      timing_sizes=[list(s) for s in args.timing_sizes], memory_cases=[list(c) for c in cases],
                      machine=f"{os.cpu_count()} CPU cores")
        if "memory" not in args.skip:
            result["memory"] = memory_rows(cases, args.sizes, int(args.budget * 2**30))
            out.write_text(json.dumps(result, indent=2) + "\n")  # each section is kept as soon as it is measured
        else:  # measurements kept: the estimates follow the current plan
            refresh_estimates(result.get("memory", []), cases)
        if "timing" not in args.skip:
            result["timing"] = timing_rows(args, cases, exports, int(args.budget * 2**30))
            out.write_text(json.dumps(result, indent=2) + "\n")
        if "parity" not in args.skip:
            result["parity"] = parity_rows(args.checkpoint, exports)
            out.write_text(json.dumps(result, indent=2) + "\n")
        if "4k" not in args.skip:
            result["end_to_end_4k"] = end_to_end_4k(
                {"torch (checkpoint)": ["--checkpoint", args.checkpoint],
                 "torch (checkpoint), --max-side 1920": ["--checkpoint", args.checkpoint, "--max-side", "1920"],
                 "torch (checkpoint), --max-side 960": ["--checkpoint", args.checkpoint, "--max-side", "960"],
                 "onnxruntime (split export, local)": ["--model", exports["local"]],
                 "onnxruntime (split export, all-pairs)": ["--model", exports["all-pairs"]]}, Path(tmp))
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_name("highres_memory.png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
