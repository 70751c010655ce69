"""Measure the peak resident memory of `deqflow infer` at a few frame sizes and set it beside the memory plan's
estimate (deqflow.memory_plan); writes docs/memory_plan.json.

Each run is a fresh subprocess under an address-space limit (--as-limit, default 6 GB), on random frames, with
`--memory-limit` far above the estimate so the plan never refuses; the peak is the child's ru_maxrss.

    python scripts/calibrate_memory_plan.py --checkpoint checkpoints/deqflow-T-synthetic.pth \
        --model out/model.onnx --size 256x320 --size 440x1024 --size 720x1280
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from deqflow.memory_plan import LOOKUP_MODES, PlanRequest, dims_from_checkpoint, dims_from_metadata, estimate

ROOT = Path(__file__).resolve().parents[1]


def write_pair(folder: Path, height: int, width: int, seed: int = 0) -> tuple[Path, Path]:
    from deqflow.image_io import write_image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width + 4, 3), dtype=np.uint8)
    paths = folder / f"a_{height}x{width}.png", folder / f"b_{height}x{width}.png"
    write_image(paths[0], np.ascontiguousarray(base[:, :width]))
    write_image(paths[1], np.ascontiguousarray(base[:, 4:]))
    return paths


def measure_infer(model_args: list[str], height: int, width: int, *, iters: int = 3,
                  as_limit: int = 6 << 30, extra: list[str] = ()) -> dict:
    """Peak resident bytes of one `deqflow infer` subprocess on a random HxW pair, with its exit code."""
    with tempfile.TemporaryDirectory(prefix="deqflow-plan-") as tmp:
        a, b = write_pair(Path(tmp), height, width)
        code = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
        cmd = [sys.executable, "-c", code, "prlimit", f"--as={as_limit}", sys.executable, "-m", "deqflow", "infer",
               *model_args, "--image1", str(a), "--image2", str(b), "--output", str(Path(tmp) / "out"),
               "--iters", str(iters), "--threads", "1", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = done.stdout.strip().splitlines()
    return {"size": [height, width], "returncode": done.returncode, "stderr": done.stderr[-2000:],
            "peak_bytes": int(lines[-1]) * 1024 if lines else 0}


def plan_for(backend: str, path: str, height: int, width: int, corr: str | None = None) -> int:
    """The plan's peak bytes for a checkpoint (torch) or an export (its own lookup decides the mode unless `corr`
    names one)."""
    if backend == "torch":
        dims, lookup = dims_from_checkpoint(path), "grid_sample"
    else:  # the metadata and parameter count exactly as the verbs' plan reads them
        from runtime.commands.common import export_metadata

        meta, files = export_metadata(path)
        dims = dims_from_metadata(meta, parameters=sum(f.stat().st_size for f in files if f.is_file()) // 4)
        lookup = meta.lookup
    mode = corr or LOOKUP_MODES.get(lookup, "all-pairs")
    return estimate(PlanRequest(dims, height, width, corr=mode, backend=backend, lookup=lookup)).total


def main() -> int:
    from deqflow.cli_args import image_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "deqflow-T-synthetic.pth"))
    p.add_argument("--model", default=None, help="ONNX export (dynamic shapes covering every --size)")
    p.add_argument("--size", type=image_size, action="append", default=[])
    p.add_argument("--as-limit", type=int, default=6 << 30)
    p.add_argument("--output", default=str(ROOT / "docs" / "memory_plan.json"))
    args = p.parse_args()
    runs = []
    cases = [("torch", args.checkpoint, ["--checkpoint", args.checkpoint])]
    if args.model:
        cases.append(("onnxruntime", args.model, ["--model", args.model]))
    for backend, path, model_args in cases:
        for h, w in args.size or [(256, 320), (440, 1024)]:
            run = measure_infer(model_args, h, w, as_limit=args.as_limit, extra=["--memory-limit", "64G"])
            run.update(backend=backend, estimate_bytes=plan_for(backend, path, h, w))
            run["ratio"] = run["estimate_bytes"] / run["peak_bytes"] if run["peak_bytes"] else None
            print(json.dumps({k: v for k, v in run.items() if k != "stderr"}), flush=True)
            runs.append(run)
    Path(args.output).write_text(json.dumps({"runs": [{k: v for k, v in r.items() if k != "stderr"}
                                                      for r in runs]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
