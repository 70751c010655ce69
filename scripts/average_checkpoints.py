#!/usr/bin/env python
"""Average the weights of several snapshots of one training run (stochastic weight averaging after the fact).

Successive snapshots of a small CPU run differ by more on the held-out set than the run improves between them
(docs/training_curve_phase4.json), so their mean can be a better model than any one of them. Floating-point
tensors (weights, BatchNorm running statistics) are averaged; integer buffers (BatchNorm's batch counter) are
taken from the last snapshot. The model config and metadata come from the last snapshot too.

    python scripts/average_checkpoints.py runs/x/snapshots/step_0008*.pth runs/x/snapshots/step_001000.pth \
        --output /tmp/averaged.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def average(paths: list[str]) -> tuple[dict, dict, dict]:
    """(averaged state dict, model config, metadata) of checkpoints with identical keys and shapes."""
    import torch

    from deqflow.checkpoint import read_checkpoint_file, split_checkpoint
    from deqflow.errors import CheckpointError

    states, cfg, meta = [], None, {}
    for path in paths:
        state, cfg, meta = split_checkpoint(read_checkpoint_file(path), path)
        states.append(state)
    first = states[0]
    for path, state in zip(paths, states):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise CheckpointError(f"{path} does not have the same weights as {paths[0]} (another architecture?)")
    out = {}
    for key, last in states[-1].items():
        out[key] = (torch.stack([s[key] for s in states]).mean(0) if last.is_floating_point() else last.clone())
    return out, cfg, meta


def main(argv: list[str] | None = None) -> int:
    from deqflow.checkpoint import make_payload, write_checkpoint
    from training.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="snapshots of one run (at least 2)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least 2 checkpoints to average")
    state, cfg, meta = average(args.checkpoints)
    if cfg is None:
        raise SystemExit(f"error: {args.checkpoints[-1]} has no model config (not a deqflow checkpoint)")
    meta = {**meta, "averaged_from": [str(Path(p)) for p in args.checkpoints]}  # make_payload renews the digest
    write_checkpoint(args.output, make_payload(state, cfg, meta))
    load_model(args.output)  # strict reload: the file is usable as written
    print(f"wrote {args.output}: mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
