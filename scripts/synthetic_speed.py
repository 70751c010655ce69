"""Samples per second of the synthetic data generator for each preset at the training render size (one
process, one thread), wall clock and CPU time of the process (the steadier number on a shared machine), and
what the samples hold: flow-magnitude percentiles, the share of sub-pixel and small motion, visible pixels.

    OMP_NUM_THREADS=1 python scripts/synthetic_speed.py --output docs/synthetic_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from training.data import SYNTHETIC_PRESETS, SyntheticFlowDataset


def measure(preset: str, size: tuple[int, int], samples: int) -> dict[str, float]:
    ds = SyntheticFlowDataset(size=size, length=samples + 1, seed=0, preset=preset)
    ds.sample(samples)  # photographs loaded
    wall, cpu = time.perf_counter(), time.process_time()
    drawn = [ds.sample(i) for i in range(samples)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mags = np.concatenate([np.linalg.norm(s.flow, axis=2).ravel() for s in drawn])
    return {"samples": samples, "samples_per_second_wall": samples / wall, "samples_per_second_cpu": samples / cpu,
            "flow_magnitude_percentiles": {str(q): float(np.percentile(mags, q)) for q in (10, 25, 50, 75, 90, 99)},
            "share_below_1px": float(np.mean(mags < 1.0)), "share_below_4px": float(np.mean(mags < 4.0)),
            "visible_share": float(np.mean([s.noc.mean() for s in drawn]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--size", type=int, nargs=2, default=(232, 312), help="render size H W (192x256 crops x1.2)")
    ap.add_argument("--output", default="docs/synthetic_speed.json")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    results = {"size": list(args.size), "presets": {}}
    for preset in SYNTHETIC_PRESETS:
        results["presets"][preset] = r = measure(preset, tuple(args.size), args.samples)
        print(f"{preset}: {r['samples_per_second_cpu']:.1f} samples/s (CPU), {r['samples_per_second_wall']:.1f} wall")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
