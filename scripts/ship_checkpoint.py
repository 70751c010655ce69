#!/usr/bin/env python
"""Turn a training run's state into the shipped model file: weights + model config + a metadata record of how
it was trained (stages, steps, commands, wall time from the run logs). Optimizer and scheduler state are
dropped, so the file is small and loads with `training.checkpoint.load_model` like any deqflow checkpoint.

    python scripts/ship_checkpoint.py --run runs/shipped-T-ft/last.pth --history checkpoints/history.json \
        --output checkpoints/deqflow-T-synthetic.pth
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    from deqflow.checkpoint import make_payload, read_checkpoint_file, split_checkpoint, write_checkpoint
    from training.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a training checkpoint (last.pth of the final stage)")
    ap.add_argument("--history", required=True, help="JSON list of the training phases (stage, steps, command)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    state, cfg, meta = split_checkpoint(read_checkpoint_file(args.run), args.run)
    if cfg is None:
        raise SystemExit(f"{args.run} is not a deqflow training checkpoint (no model config)")
    history = json.loads(Path(args.history).read_text())
    shipped_meta = {"variant": meta.get("variant"), "stage": meta.get("stage"), "step": meta.get("step"),
                    "training_phases": history, "final_train_config": meta.get("train_config")}
    write_checkpoint(args.output, make_payload(state, cfg, shipped_meta))
    model, loaded = load_model(args.output)  # strict reload: the file is usable as written
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: DEQ-Flow-{model.cfg.variant}, {n / 1e6:.2f} M parameters, "
          f"{Path(args.output).stat().st_size / 1e6:.1f} MB, sha256 {loaded['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
