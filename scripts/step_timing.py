"""Seconds per training step (wall and CPU time of the process) of candidate model/solver configurations,
to choose what to train for a CPU budget; CPU time is the steadier number on a shared machine. Writes JSON.

    OMP_NUM_THREADS=1 python scripts/step_timing.py --steps 4 --output docs/step_timing.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.train import TrainConfig, Trainer

CANDIDATES = {
    "T-enc32-f36-n6": dict(encoder_dims=(32, 48, 64), f_max_iter=36, n_states=6),
    "T-enc32-f60-n6": dict(encoder_dims=(32, 48, 64), f_max_iter=60, n_states=6),
    "T-enc64-f36-n6": dict(encoder_dims=(64, 96, 128), f_max_iter=36, n_states=6),
}


def time_candidate(spec: dict, steps: int, batch: int, size: tuple[int, int], preset: str) -> dict:
    deq = DEQConfig(f_solver="fixed_point", f_max_iter=spec["f_max_iter"], n_states=spec["n_states"],
                    phantom_grad=(1,))
    model = ModelConfig(variant="T", encoder_dims=spec["encoder_dims"], deq=deq)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(stage="synthetic", output=out, num_steps=steps + 1, batch_size=batch, image_size=size,
                          synthetic_preset=preset, model=model, ckpt_every=10**9, val_every=10**9)
        trainer = Trainer(cfg)
        loader, _ = trainer._loader()
        batches = iter(loader)
        trainer.train_mode()
        trainer.train_step(next(batches))  # warm-up
        data_s, step_s, cpu_s = [], [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            b = next(batches)
            t1, c1 = time.perf_counter(), time.process_time()
            trainer.train_step(b)
            data_s.append(t1 - t0)
            step_s.append(time.perf_counter() - t1)
            cpu_s.append(time.process_time() - c1)
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"parameters": params, "data_seconds": sum(data_s) / steps, "step_seconds": sum(step_s) / steps,
            "step_cpu_seconds": sum(cpu_s) / steps, "step_seconds_all": step_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image-size", type=int, nargs=2, default=(192, 256))
    ap.add_argument("--preset", default="realistic")
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    ap.add_argument("--output", default="docs/step_timing.json")
    args = ap.parse_args()
    results = {"torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
               "image_size": list(args.image_size), "preset": args.preset, "candidates": {}}
    for name, spec in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        results["candidates"][name] = r = time_candidate(spec, args.steps, args.batch_size,
                                                         tuple(args.image_size), args.preset)
        print(f"{name}: {r['step_seconds']:.2f} s/step wall, {r['step_cpu_seconds']:.2f} s CPU "
              f"(+{r['data_seconds']:.2f} s data), "
              f"{r['parameters']} parameters", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
