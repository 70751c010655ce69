"""Per-sample stopping in batches (issue 23): wall time per pair, sample-iterations and batch independence for
batches of 1, 4 and 8 mixed pairs under a tolerance stop, on the CPU with the torch backend and ONNX Runtime (a
split export with a dynamic batch axis), against per-batch stopping (what deqflow did before: every pair of a
batch runs until the slowest one stops, emulated by a fixed budget of that many steps).

    python scripts/bench_batching.py            # -> docs/batching.json, docs/batching.md (README block)
    python scripts/bench_batching.py --gpu --output out/batching   # CUDA (scripts/gpu_acceptance.py runs it)

The pairs are 128x160 crops of the real Middlebury pair (their solves need 11 to 39 steps at rel < 0.005).
Each figure is the median of `--repeats` runs, measured one after the other on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.solver_spec import SolveOverrides

CORNERS = [(0, 0), (100, 200), (300, 400), (200, 550), (50, 300), (350, 100), (150, 450), (250, 250)]
BATCHES = (1, 4, 8)
RULE = {"max_iter": 40, "tol": 0.005, "stop_mode": "rel"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="docs/batching")
    p.add_argument("--gpu", action="store_true",
                   help="torch on cuda, ONNX Runtime's CUDA provider: masked (its default there) against compacted")
    return p.parse_args()


def crops() -> tuple[np.ndarray, np.ndarray]:
    from deqflow import middlebury

    left, right, _, _ = middlebury.motorcycle()
    pairs = [np.stack([img[y:y + 128, x:x + 160] for y, x in CORNERS]) for img in (left, right)]
    return tuple(c.transpose(0, 3, 1, 2).astype(np.float32) for c in pairs)


def timed(be, image1: np.ndarray, image2: np.ndarray, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` infer calls on the batch, and the last result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = be.infer(image1, image2)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run_case(be, image1, image2, batch: int, solo, repeats: int) -> dict:
    """Per-sample stopping against per-batch stopping for the batches of `batch` pairs; `solo`: the batch-1
    results (iterations, flows) the batched answers are compared with."""
    per_sample = per_batch = 0.0
    work = batch_work = 0
    deviation = 0.0
    same_counts = True
    for start in range(0, len(image1), batch):
        i1, i2 = image1[start:start + batch], image2[start:start + batch]
        be.configure(SolveOverrides(**RULE))
        seconds, r = timed(be, i1, i2, repeats)
        per_sample += seconds
        work += int(np.sum(r.sample_iterations))
        counts = [solo[start + k][0] for k in range(len(i1))]
        same_counts &= r.sample_iterations.tolist() == counts
        deviation = max([deviation] + [float(np.abs(r.flow[k] - solo[start + k][1]).max()) for k in range(len(i1))])
        be.configure(SolveOverrides(max_iter=max(counts), tol=0.0))  # before: the batch stops together
        seconds, _ = timed(be, i1, i2, repeats)
        per_batch += seconds
        batch_work += max(counts) * len(i1)
    n = len(image1)
    return {"batch": batch, "per_sample_s_per_pair": per_sample / n, "per_batch_s_per_pair": per_batch / n,
            "sample_iterations": work, "sample_iterations_per_batch_stop": batch_work,
            "counts_equal_solo": bool(same_counts), "max_abs_flow_deviation_px": deviation}


def bench_backend(name: str, model: Path, image1, image2, repeats: int, variant: str = "",
                  gpu: bool = False) -> list[dict]:
    """Rows of one backend; `variant`: 'batch_invariant' (torch), 'masked' or 'compacted' (the split layout's
    step run on the whole batch, or only on the pairs still solving, whatever the backend's default)."""
    from runtime import create_backend

    options = {"batch_invariant": True} if variant == "batch_invariant" else {}
    if gpu:
        options.update({"device": "cuda"} if name == "torch" else {"provider": "cuda"})
    with create_backend(name, model, settings=SolveOverrides(**RULE), threads=1, **options) as be:
        if variant in ("masked", "compacted"):
            be.parts.__class__ = type("Parts", (type(be.parts),), {"compactable": variant == "compacted"})
        solo = []
        for k in range(len(image1)):
            r = be.infer(image1[k:k + 1], image2[k:k + 1])
            solo.append((int(r.iterations), r.flow[0]))
        rows = [run_case(be, image1, image2, b, solo, repeats) for b in BATCHES]
    label = name + (":cuda" if gpu else "") + (f" ({variant})" if variant else "")
    return [{"backend": label, **row} for row in rows]


def markdown(result: dict) -> str:
    lines = ["| backend | batch | s per pair, per-sample stop | s per pair, per-batch stop (before) | "
             "sample-iterations (per-batch) | counts as alone | max flow deviation from alone (px) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['per_sample_s_per_pair']:.3f} | "
                     f"{r['per_batch_s_per_pair']:.3f} | {r['sample_iterations']} "
                     f"({r['sample_iterations_per_batch_stop']}) | {'yes' if r['counts_equal_solo'] else 'no'} | "
                     f"{r['max_abs_flow_deviation_px']:.2g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from export import export_onnx

    args = parse_args()
    image1, image2 = crops()
    cases = [("torch", ""), ("torch", "batch_invariant"), ("onnxruntime", ""), ("onnxruntime", "masked")]
    if args.gpu:
        cases = [("torch", ""), ("onnxruntime", "masked"), ("onnxruntime", "compacted")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "dyn.onnx"
        export_onnx(args.checkpoint, onnx, layout="split", height=128, width=160, iters=RULE["max_iter"],
                    dynamic=True, max_shape=f"{max(BATCHES)}x3x128x160")
        for name, variant in tqdm(cases, desc=f"bench_batching: {len(cases)} cases x {len(BATCHES)} batch sizes"):
            model = Path(args.checkpoint) if name == "torch" else onnx
            rows += bench_backend(name, model, image1, image2, args.repeats, variant, args.gpu)
    result = {"script": "scripts/bench_batching.py", "device": "cuda" if args.gpu else "cpu", "rule": RULE,
              "pairs": len(image1), "size": [128, 160],
              "repeats": args.repeats, "threads": 1, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
