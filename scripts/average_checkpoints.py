#!/usr/bin/env python
"""Average the weights of several snapshots of one training run (stochastic weight averaging after the fact).

Successive snapshots of a small CPU run differ by more on the held-out set than the run improves between them
(docs/training_curve_phase4.json), so their mean can be a better model than any one of them. Floating-point
tensors (weights, BatchNorm running statistics) are averaged; integer buffers (BatchNorm's batch counter) are
taken from the last snapshot. The model config and metadata come from the last snapshot too.

With --weights it is a weighted mean, e.g. an interpolation between a fine-tuning run's starting weights and
its end (WiSE-FT, Wortsman et al., CVPR 2022: keeps more of what the starting model was good at).

    python scripts/average_checkpoints.py runs/x/snapshots/step_0008*.pth runs/x/snapshots/step_001000.pth \
        --output /tmp/averaged.pth
    python scripts/average_checkpoints.py start.pth final.pth --weights 0.3 0.7 --output /tmp/interpolated.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path


def average(paths: list[str], weights: list[float] | None = None) -> tuple[dict, dict, dict]:
    """(averaged state dict, model config, metadata) of checkpoints with identical keys and shapes; `weights`
    (one per checkpoint, normalised to sum 1) make it a weighted mean. The metadata is the last checkpoint's,
    plus where the average came from."""
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
    w = torch.tensor(weights if weights is not None else [1.0] * len(states), dtype=torch.float64)
    w = w / w.sum()
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            stacked = torch.stack([s[key].double() for s in states])
            out[key] = torch.tensordot(w, stacked, dims=1).to(last.dtype)
        else:
            out[key] = last.clone()
    meta = {**meta, "averaged_from": [str(Path(p)) for p in paths]}  # make_payload renews the digest
    if weights is not None:
        meta["averaging_weights"] = w.tolist()
    return out, cfg, meta


def main(argv: list[str] | None = None) -> int:
    from deqflow.checkpoint import make_payload, write_checkpoint
    from training.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="snapshots of one run (at least 2)")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="one non-negative weight per checkpoint (default: equal)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least 2 checkpoints to average")
    if args.weights is not None and (len(args.weights) != len(args.checkpoints) or min(args.weights) < 0
                                     or sum(args.weights) <= 0):
        ap.error(f"--weights needs {len(args.checkpoints)} non-negative numbers with a positive sum, "
                 f"got {args.weights}")
    state, cfg, meta = average(args.checkpoints, args.weights)
    if cfg is None:
        raise SystemExit(f"error: {args.checkpoints[-1]} has no model config (not a deqflow checkpoint)")
    write_checkpoint(args.output, make_payload(state, cfg, meta))
    load_model(args.output)  # strict reload: the file is usable as written
    how = "weighted mean" if args.weights is not None else "mean"
    print(f"wrote {args.output}: {how} of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
