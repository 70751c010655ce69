"""Accuracy cost of reduced-resolution inference (`deqflow infer --scale F`, deqflow.resolution): EPE against the
exact ground truth at the input size, solver iterations and wall time per pair at each scale, with the shipped
checkpoint on the torch backend under its own stop rule (what `deqflow infer --checkpoint` does by default).

Pairs: the held-out real validation set of scripts/real_validation.py: the Middlebury motorcycle pair at full
size and the held-out photographs warped by known homographies (training/data/heldout_real.py). A scale whose
reduced size is below the model's minimum (128 px a side for 4 correlation levels) is refused by the runtime,
and the table says so.

    nice -n 5 prlimit --as=$((6*1024**3)) python scripts/bench_reduced_resolution.py
    # -> docs/reduced_resolution.json, docs/reduced_resolution.md (README block)

Wall time: each pair's whole FlowEstimator call (shrink, solve, upsample), on one thread, median of --repeats.
Memory: the full-size motorcycle pair's all-pairs correlation volume is small at 500x741, so the whole run stays
far below the 6 GB address-space limit above (its peak resident memory is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.errors import InputError
from deqflow.metrics import FlowMetricAccumulator
from deqflow.resolution import Resolution

SCALES = (1.0, 0.75, 0.5, 0.35)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per pair (the median is kept, so the first "
                   "call's one-off start-up cost does not count)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="docs/reduced_resolution", help="base name of the .json and .md")
    p.add_argument("--note", default="", help="a sentence about the machine's state, added to the text above "
                   "the tables (e.g. that other jobs ran at the same time)")
    return p.parse_args()


def run_pair(estimator, pair, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls on one pair, and the last answer."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer = estimator(pair.image1, pair.image2)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), answer


def score_scale(backend, pairs, scale: float, repeats: int) -> dict:
    """One row: pooled EPE, mean iterations and seconds per pair at `scale` (or the runtime's refusal)."""
    from runtime.pipeline import FlowEstimator

    resolution = Resolution(scale=scale) if scale < 1 else Resolution()
    estimator = FlowEstimator(backend, resolution=resolution)
    acc, iterations, seconds, sizes = FlowMetricAccumulator(), [], [], set()
    for pair in pairs:
        try:
            t, answer = run_pair(estimator, pair, repeats)
        except InputError as exc:
            return {"scale": scale, "refused": str(exc)}
        acc.add(answer.flow, pair.flow, pair.valid)
        iterations.append(answer.iterations)
        seconds.append(t)
        sizes.add(tuple(answer.model_size))
    summary = acc.summary()
    return {"scale": scale, "refused": None, "model_sizes": sorted(list(s) for s in sizes),
            "epe_per_pixel": float(summary["epe_per_pixel"]), "1px": float(summary["1px"]),
            "mean_iterations": statistics.mean(iterations), "seconds_per_pair": statistics.mean(seconds),
            "per_pair_epe": [float(m["epe"]) for m in acc.per_image], "iterations": iterations}


def markdown(results: dict) -> str:
    lines = [f"Reduced-resolution inference (`deqflow infer --scale F`): {results['checkpoint']} on the torch backend "
             f"({results['threads']} thread), its own stop rule ({results['stop_rule']}); EPE at the input size "
             "against the exact ground truth, pooled over valid pixels; time = the whole call per pair (shrink, "
             "solve, upsample), median of "
             f"{results['repeats']} runs. `python scripts/bench_reduced_resolution.py`. {results['note']}".rstrip(), ""]
    for name, s in results["sets"].items():
        size = "x".join(map(str, s["input_size"]))
        lines += [f"**{name}** ({s['n_pairs']} pair{'s' if s['n_pairs'] > 1 else ''}, {size})", "",
                  "| scale | model runs at | EPE (px) | EPE change | 1px accuracy | iterations | s / pair | speed-up |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        full = next(r for r in s["rows"] if r["scale"] == 1.0)
        for r in s["rows"]:
            if r["refused"]:
                lines.append(f"| {r['scale']:g} | refused: below the model's minimum size | | | | | | |")
                continue
            at = ", ".join("x".join(map(str, m)) for m in r["model_sizes"])
            lines.append(f"| {r['scale']:g} | {at} | {r['epe_per_pixel']:.3f} | "
                         f"{r['epe_per_pixel'] - full['epe_per_pixel']:+.3f} | {100 * r['1px']:.1f}% | "
                         f"{r['mean_iterations']:.1f} | {r['seconds_per_pair']:.2f} | "
                         f"{full['seconds_per_pair'] / r['seconds_per_pair']:.1f}x |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    args = parse_args()
    from runtime.backends import create_backend
    from training.data.heldout_real import HeldoutRealConfig
    from training.heldout_eval import heldout_sets

    sets = heldout_sets(HeldoutRealConfig())
    backend = create_backend("torch", args.checkpoint, threads=args.threads)
    results = {"checkpoint": args.checkpoint, "backend": backend.label, "threads": args.threads,
               "stop_rule": backend.resolved.stop.describe(), "settings": backend.solve_dict(),
               "repeats": args.repeats, "scales": args.scales, "note": args.note, "sets": {}}
    for name in ("motorcycle", "homography"):
        pairs = sets[name]
        rows = []
        for scale in args.scales:
            rows.append(score_scale(backend, pairs, scale, args.repeats))
            print(name, json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("per_")}), flush=True)
        results["sets"][name] = {"n_pairs": len(pairs), "input_size": list(pairs[0].image1.shape[:2]), "rows": rows}
    backend.close()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # whole run
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
