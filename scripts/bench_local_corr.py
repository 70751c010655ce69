"""Time per solver iteration of the on-demand ("local") correlation against the all-pairs lookups, on the CPU:
the PyTorch model's lookup and whole step (shipped checkpoint, real pair), the split export's step graph on ONNX
Runtime, and, where the `localcorr` package is importable, its plugin-free pure-PyTorch (ONNX-export)
formulation on the same features (values compared too). Best of `--repeats` runs; writes JSON.

    PYTHONPATH=$PWD python scripts/bench_local_corr.py --height 440 --width 1024 --output docs/local_corr.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.host_solver import initial_state
from export import export_onnx, read_metadata
from export.parity import padded_real_pair
from runtime.backends.onnxruntime_sessions import SessionConfig, open_session
from training.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def torch_times(model, image1, image2, repeats: int) -> dict:
    """Lookup and whole-step milliseconds per mode at the state after one step (a non-trivial flow)."""
    out = {}
    with torch.no_grad():
        for lookup in ("grid_sample", "gather", "local"):
            model.lookup = lookup
            ctx = model.encode(*model.check_inputs(image1, image2))
            net, coords1 = model.step(ctx, *model.initial_state(ctx))
            out[lookup] = {"lookup_ms": best_ms(lambda c=ctx, x=coords1: c.corr(x), repeats),
                           "step_ms": best_ms(lambda c=ctx, h=net, x=coords1: model.step(c, h, x), repeats)}
    return out


def ort_step_times(image1, image2, height: int, width: int, threads: int, repeats: int) -> dict:
    """Step-graph milliseconds of split exports (gather and local lookups) on ONNX Runtime's CPU provider."""
    out = {}
    config = SessionConfig(threads=threads, inter_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        for lookup in ("gather", "local"):
            result = export_onnx(ROOT / SHIPPED_CHECKPOINT, Path(tmp) / f"{lookup}.onnx", layout="split",
                                 lookup=lookup, height=height, width=width, iters=4)
            parts = {read_metadata(p).part: p for p in result.paths}
            enc, step = open_session(parts["encoder"], config), open_session(parts["step"], config)
            ctx = enc.run_host({"image1": image1.numpy(), "image2": image2.numpy(),
                                "flow_init": np.zeros((1, 2, height // 8, width // 8), np.float32)})
            feed = {k: v for k, v in ctx.items() if k in step.inputs}
            net, coords1 = initial_state(ctx["coords0"], int(step.inputs["net"].shape[1]))
            first = step.run_host({**feed, "net": net, "coords1": coords1})  # one step: a non-trivial flow
            feed.update(net=first["net_next"], coords1=first["coords1_next"])
            out[lookup] = {"step_ms": best_ms(lambda s=step, f=feed: s.run_host(f), repeats),
                           "context_mb": sum(v.nbytes for k, v in feed.items()) / 2**20}
    return out


def localcorr_times(model, image1, image2, repeats: int) -> dict | None:
    """localcorr's pure-PyTorch formulation (row-tiled matmul + grid_sample) on the model's features, if installed."""
    if importlib.util.find_spec("localcorr") is None:
        return None
    from localcorr.onnx_generic import localcorr_pyramid_onnx_generic

    from training.model.local_corr import LocalCorr

    with torch.no_grad():
        fmaps = model.fnet(torch.cat([2 * (image1 / 255) - 1, 2 * (image2 / 255) - 1]))
        f1, f2 = fmaps[:1], fmaps[1:]
        ctx = model.encode(image1, image2)
        coords = model.step(ctx, *model.initial_state(ctx))[1]
        levels, radius = model.cfg.corr_levels, model.cfg.corr_radius
        ours = LocalCorr(f1, f2, levels, radius)
        theirs = lambda: localcorr_pyramid_onnx_generic(f1, f2, coords, levels, radius)  # noqa: E731
        mine = ours(coords)
        diff = (theirs().flatten(1, 2) / f1.shape[1] ** 0.5 - mine).abs().max()
        return {"localcorr_ms": best_ms(theirs, repeats), "deqflow_local_ms": best_ms(lambda: ours(coords), repeats),
                "max_abs_difference": float(diff), "max_abs_value": float(mine.abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--height", type=int, default=440)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", default="docs/local_corr.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ROOT / SHIPPED_CHECKPOINT)[0].eval()
    image1, image2 = padded_real_pair(args.height, args.width)
    report = {"size": [args.height, args.width], "threads": args.threads, "repeats": args.repeats,
              "variant": model.cfg.variant, "feature_dim": model.cfg.dims.feature_dim,
              "torch": torch_times(model, image1, image2, args.repeats),
              "onnxruntime": ort_step_times(image1, image2, args.height, args.width, args.threads, args.repeats),
              "localcorr_pure_pytorch": localcorr_times(model, image1, image2, args.repeats),
              "torch_version": torch.__version__}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
