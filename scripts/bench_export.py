#!/usr/bin/env python
"""Export benchmark: every layout x lookup (x precision), against PyTorch eager on the CPU.

Per export: file size, node count, export time, ONNX Runtime session-creation time, float32 parity on a real
image pair, and ONNX Runtime CPU latency against PyTorch eager (the model's forward with the plain
fixed-point solver, no early stop) at the same size, iterations and thread count. Latencies are medians over
interleaved rounds (each round runs every candidate once, in a rotating order), so background load (this
machine shares its CPU with other work) hits all candidates alike; ratios are taken within the run.

    python scripts/bench_export.py                       # 256x320, 24 iterations, 1 thread
    python scripts/bench_export.py --threads 1 2 --repeats 9 --mixed16

Writes JSON (--out) and a Markdown table (--markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / SHIPPED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="checkpoint, or 'random' for random weights")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--iters", type=int, default=24)
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts (torch and ORT alike)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (after one warm-up)")
    p.add_argument("--layouts", nargs="+", default=["unrolled", "loop", "split"])
    p.add_argument("--lookups", nargs="+", default=["gather", "grid_sample"])
    p.add_argument("--no-mixed16", dest="mixed16", action="store_false",
                   help="skip the mixed float16 export (unrolled, first lookup) and its EPE against float32")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench_export.json"))
    p.add_argument("--markdown", default=str(ROOT / "docs" / "bench_export.md"))
    p.add_argument("--workdir", default=None, help="where the ONNX files go (default: a temporary folder)")
    return p.parse_args(argv)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class OrtCandidate:
    """An exported model on the runtime's ONNX Runtime sessions; split files run under the host loop
    (deqflow.host_solver)."""

    def __init__(self, result, threads: int, iters: int) -> None:
        from deqflow.solver_spec import SolveSpec
        from runtime.backends.onnxruntime_sessions import OrtStepParts, SessionConfig, open_session

        self.result, self.settings = result, SolveSpec.of(max_iter=iters, tol=0.0)
        config = SessionConfig(threads=threads, inter_threads=1)
        start = time.perf_counter()
        if result.config.layout == "split":
            self.parts, self.session = OrtStepParts.from_files(result.paths, config), None
        else:
            self.parts, self.session = None, open_session(result.paths[0], config)
        self.session_seconds = time.perf_counter() - start

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from runtime.backends.onnxruntime_sessions import run_split

        if self.parts is None:
            return self.session.run_host(feed)
        return run_split(self.parts, feed, self.settings)


def interleaved(candidates: dict, repeats: int) -> dict[str, list[float]]:
    names = list(candidates)
    for fn in candidates.values():  # warm-up (allocations, ORT arena, caches)
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            candidates[n]()
            times[n].append(time.perf_counter() - t)
    return times


def load_source(args):
    """(model, what export_onnx takes, the checkpoint's label in the report)."""
    import torch

    from training.checkpoint import load_model
    from training.config import ModelConfig
    from training.model.deq_flow import DEQFlow

    if args.checkpoint == "random":
        torch.manual_seed(0)
        model = DEQFlow(ModelConfig(variant="T")).eval()
        return model, model, "random weights (T)"
    model, _ = load_model(args.checkpoint)
    return model, args.checkpoint, os.path.relpath(args.checkpoint, ROOT)


def new_report(args, ckpt_label: str) -> dict:
    """The report's settings and environment; exports and latency rows are added as they are measured."""
    import onnx
    import onnxruntime
    import torch

    from deqflow import __version__

    return {"settings": {"checkpoint": ckpt_label, "height": args.height, "width": args.width,
                         "iterations": args.iters, "repeats": args.repeats, "threads": args.threads,
                         "input": "real pair (Middlebury motorcycle via scikit-image), padded to /8"},
            "environment": {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                            "onnx": onnx.__version__, "deqflow": __version__,
                            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()},
            "exports": [], "latency": []}


def export_all(args, source, workdir: Path, report: dict) -> dict:
    """Every layout x lookup (float32), plus one mixed float16 graph: `layout/lookup/precision` -> result."""
    from export import export_onnx

    results = {}
    jobs = [(layout, lookup, "fp32") for lookup in args.lookups for layout in args.layouts]
    if args.mixed16:  # one mixed float16 graph: its accuracy against float32 (ORT CPU runs fp16 poorly)
        jobs.append(("unrolled", args.lookups[0], "mixed16"))
    for layout, lookup, precision in jobs:
        key = f"{layout}/{lookup}/{precision}"
        start = time.perf_counter()
        res = export_onnx(source, workdir / f"{layout}_{lookup}_{precision}.onnx", layout=layout,
                          lookup=lookup, precision=precision, height=args.height, width=args.width,
                          iters=args.iters)
        wall = time.perf_counter() - start
        results[key] = res
        report["exports"].append({
            "layout": layout, "lookup": lookup, "precision": precision,
            "export_seconds": round(wall, 2),
            "file_mb": round(sum(p.stat().st_size for p in res.paths) / 1e6, 2),
            "nodes": sum(res.nodes.values()),
            "nodes_by_part": res.nodes,
            "top_level_nodes": sum(r.top_level_nodes for r in res.reports),
            "checks_ok": res.ok,
            "files": [p.name for p in res.paths]})
        print(f"exported {key}: {wall:.1f} s, {report['exports'][-1]['nodes']} nodes", flush=True)
    return results


def latency_rows(threads: int, times: dict[str, list[float]]) -> list[dict]:
    """One row per candidate: median, p90, minimum and the ratios to the torch candidates."""
    med = {k: float(np.median(v)) for k, v in times.items()}
    torch_best = min(v for k, v in med.items() if k.startswith("torch"))
    torch_default = med["torch eager (grid_sample)"]
    rows = []
    for k, v in times.items():
        row = {"threads": threads, "candidate": k, "median_s": round(med[k], 4),
               "p90_s": round(float(np.percentile(v, 90)), 4), "min_s": round(float(np.min(v)), 4),
               "runs": len(v), "ratio_vs_torch_grid_sample": round(med[k] / torch_default, 3),
               "ratio_vs_best_torch": round(med[k] / torch_best, 3),
               "ratio_of_minima_vs_best_torch": round(min(v) / min(min(times[t]) for t in times
                                                                    if t.startswith("torch")), 3)}
        if k.startswith("onnxruntime"):
            lk = k.split("/")[1]
            row["ratio_vs_torch_same_lookup"] = round(med[k] / med[f"torch eager ({lk})"], 3)
        rows.append(row)
        print(f"  {k:42s} {med[k] * 1000:8.1f} ms  x{med[k] / torch_best:.3f} of best torch", flush=True)
    return rows


def time_all(args, results: dict, refs: dict, pair, report: dict) -> dict[str, np.ndarray]:
    """Each export on ONNX Runtime and the torch references, interleaved, at every thread count; the exports'
    accuracy against torch goes into their report entries. Returns each export's flow."""
    import torch

    from export.parity import epe, torch_flow

    image1, image2 = pair
    h, w, iters = args.height, args.width, args.iters
    feed = {"image1": image1.numpy(), "image2": image2.numpy(),
            "flow_init": np.zeros((1, 2, h // 8, w // 8), np.float32)}
    ref_flow = torch_flow(refs["grid_sample"], image1, image2, iters)["flow"]
    outputs: dict[str, np.ndarray] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        cands = {}
        for key, res in results.items():
            cand = OrtCandidate(res, threads, iters)
            out = cand(feed)
            outputs[key] = out["flow"]
            entry = next(e for e in report["exports"] if f"{e['layout']}/{e['lookup']}/{e['precision']}" == key)
            entry.setdefault("ort_session_seconds", {})[str(threads)] = round(cand.session_seconds, 3)
            entry["max_abs_flow_diff_vs_torch"] = float(np.abs(out["flow"] - ref_flow).max())
            entry["epe_vs_torch"] = epe(out["flow"], ref_flow)
            cands[f"onnxruntime {key}"] = lambda c=cand: c(feed)
        for lk, ref in refs.items():
            cands[f"torch eager ({lk})"] = lambda r=ref: torch_flow(r, image1, image2, iters)
        print(f"timing {len(cands)} candidates x {args.repeats} rounds at {threads} thread(s)...", flush=True)
        report["latency"] += latency_rows(threads, interleaved(cands, args.repeats))
    return outputs


def mixed16_accuracy(report: dict, outputs: dict[str, np.ndarray], model, pair, iters: int) -> None:
    """The mixed float16 exports' EPE against float32, on ONNX Runtime and with PyTorch's half modules."""
    import torch

    from export.parity import epe
    from export.wrappers import prepare, reference_solve

    for e in report["exports"]:
        if e["precision"] != "mixed16":
            continue
        fp32 = outputs[f"{e['layout']}/{e['lookup']}/fp32"]
        e["epe_vs_fp32_onnxruntime"] = epe(outputs[f"{e['layout']}/{e['lookup']}/mixed16"], fp32)
        with torch.no_grad():
            half = reference_solve(prepare(model, "mixed16"), *pair, iters, e["lookup"])["flow"]
            full = reference_solve(prepare(model), *pair, iters, e["lookup"])["flow"]
        e["epe_vs_fp32_torch_half_modules"] = epe(half.numpy(), full.numpy())
        print(f"mixed16 mean EPE vs float32: ONNX Runtime {e['epe_vs_fp32_onnxruntime']:.4f} px, PyTorch fp16 "
              f"modules {e['epe_vs_fp32_torch_half_modules']:.4f} px", flush=True)


def summarise(args, report: dict) -> dict:
    """Loop-over-unrolled node ratios and the best float32 ONNX Runtime candidate per thread count."""
    nodes = {(e["layout"], e["lookup"], e["precision"]): e["nodes"] for e in report["exports"]}
    summary = {}
    for lk in args.lookups:
        if ("loop", lk, "fp32") in nodes and ("unrolled", lk, "fp32") in nodes:
            ratio = nodes["loop", lk, "fp32"] / nodes["unrolled", lk, "fp32"]
            summary[f"loop_over_unrolled_nodes_{lk}"] = round(ratio, 3)
    for threads in args.threads:
        ort_rows = [r for r in report["latency"] if r["threads"] == threads and r["candidate"].startswith("onnx")
                    and r["candidate"].endswith("fp32")]
        best = min(ort_rows, key=lambda r: r["median_s"])
        summary[f"best_onnxruntime_{threads}t"] = {"candidate": best["candidate"],
                                                  "ratio_vs_best_torch": best["ratio_vs_best_torch"],
                                                  "ratio_vs_torch_grid_sample": best["ratio_vs_torch_grid_sample"]}
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from export.parity import padded_real_pair, reference_model

    model, source, ckpt_label = load_source(args)
    pair = padded_real_pair(args.height, args.width)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export_"))
    report = new_report(args, ckpt_label)
    torch.set_num_threads(min(args.threads))
    refs = {lk: reference_model(model, lookup=lk) for lk in ("grid_sample", "gather")}
    results = export_all(args, source, workdir, report)
    outputs = time_all(args, results, refs, pair, report)
    mixed16_accuracy(report, outputs, model, pair, args.iters)
    report["environment"]["loadavg_end"] = os.getloadavg()
    report["summary"] = summary = summarise(args, report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.markdown).write_text(markdown(report, sys.argv[1:] if argv is None else argv))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {args.markdown}")
    return 0


def markdown(report: dict, argv) -> str:
    s, env = report["settings"], report["environment"]
    cmd = "python scripts/bench_export.py" + ("" if not argv else " " + " ".join(argv))
    lines = [
        "# Export benchmark (ONNX Runtime CPU vs PyTorch eager CPU)", "",
        f"`{cmd}` - {s['checkpoint']}, {s['height']}x{s['width']}, {s['iterations']} fixed-point iterations, "
        f"{s['input']}; {env['cpu']} ({env['cpus']} cores; load average "
        f"{env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}); torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}; {env['date']}.", "",
        "Latency: median of interleaved rounds (each round runs every candidate once), same thread count for "
        "both. Ratio < 1: ONNX Runtime is faster. 'best torch' = the faster of PyTorch's two lookups.", "",
        "| layout | lookup | precision | file MB | nodes | export s | ORT session s | max abs flow diff vs torch px |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in report["exports"]:
        sess = ", ".join(f"{v:.2f}" for v in e.get("ort_session_seconds", {}).values())
        lines.append(f"| {e['layout']} | {e['lookup']} | {e['precision']} | {e['file_mb']:.1f} | {e['nodes']} | "
                     f"{e['export_seconds']:.1f} | {sess} | {e.get('max_abs_flow_diff_vs_torch', float('nan')):.1e} |")
    lines += ["", "| threads | candidate | median ms | p90 ms | vs torch (grid_sample) | vs best torch | "
              "vs torch same lookup | minima vs best torch |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["latency"]:
        same = r.get("ratio_vs_torch_same_lookup")
        lines.append(f"| {r['threads']} | {r['candidate']} | {r['median_s'] * 1000:.0f} | {r['p90_s'] * 1000:.0f} | "
                     f"{r['ratio_vs_torch_grid_sample']:.3f} | {r['ratio_vs_best_torch']:.3f} | "
                     f"{'' if same is None else f'{same:.3f}'} | {r['ratio_of_minima_vs_best_torch']:.3f} |")
    for e in report["exports"]:
        if "epe_vs_fp32_onnxruntime" in e:
            lines += ["", f"Mixed float16 ({e['layout']}, {e['lookup']}): mean EPE against float32 "
                      f"{e['epe_vs_fp32_onnxruntime']:.4f} px on ONNX Runtime CPU, "
                      f"{e['epe_vs_fp32_torch_half_modules']:.4f} px with PyTorch's float16 modules."]
    lines += ["", "Summary: `" + json.dumps(report["summary"]) + "`", "", NOTES]
    return "\n".join(lines)


NOTES = """Notes
- Lookups. `grid_sample` is the model's own formulation: one GridSample per pyramid level over a (N*H/8*W/8)-batch
  of 1-channel volumes; TensorRT runs it natively, ONNX Runtime's CPU kernel is slow on that shape. `gather` is
  the export's formulation: the 81 samples of a pixel's window share one fractional offset, so the lookup is a
  10x10 integer patch (one GatherElements over precomputed flat offsets into a zero-padded, per-pixel packed
  pyramid) followed by two lerps. Same numbers as grid_sample within float rounding; linear in the number of
  pixels; the padded pyramid costs memory (more than the plain one, relatively less at large sizes).
- Layouts on ONNX Runtime CPU: unrolled and Loop run the same nodes at the same speed. The Loop body carries the
  step's weights as its own initializers: with them as outer-scope values, ONNX Runtime skipped its NCHWc
  layout transformation inside the body (generic FusedConv path, slower in a first version). The split
  layout runs one session call per step from Python (plus the context passed in each time).
- Threads: both PyTorch and ONNX Runtime get the same intra-op thread count. On a 2-core machine the 2-thread
  rows use every core, so any other load (see the load average above) hits them hardest (PyTorch's OpenMP
  pool suffers most); the 1-thread rows are the steadier comparison.
- Mixed float16: the graph holds explicit Casts (TensorRT 11 strong typing). ONNX Runtime's CPU provider fuses
  or removes many of them and runs much of the graph in float32, so its EPE mostly reflects float16 weights;
  PyTorch's float16 modules do the float16 arithmetic and are the closer proxy for a GPU. No GPU, TensorRT or
  CUDA number was measured here.
"""


if __name__ == "__main__":
    sys.exit(main())
