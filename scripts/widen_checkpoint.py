"""Function-preserving widening of a checkpoint's encoders (issue 24: measure capacity without throwing away the
CPU-hours already spent). The wider model computes exactly what the source computes:
- the source's channels read only the source's channels: every weight from a new input channel to an old output
  channel starts at zero, so the old channels (and the encoders' outputs) are unchanged;
- the new channels keep the wider model's random initialisation, so they carry features from the first step
  (zero-initialised channels would sit at ReLU's flat zero and never learn), and the zero weights that read
  them get gradients at once.

    python scripts/widen_checkpoint.py --checkpoint checkpoints/deqflow-T-synthetic.pth --encoder-dims 48 64 96 \\
        --output /work/runs/v3-armB-wide/init.pth

The source's metadata (stop rule, training history) is kept, with the widening recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deqflow.checkpoint import SHIPPED_CHECKPOINT, make_payload, write_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="the source (a deqflow checkpoint)")
    p.add_argument("--encoder-dims", type=int, nargs=3, required=True, metavar=("D1", "D2", "D3"),
                   help="the wider encoder stage widths (each at least the source's)")
    p.add_argument("--output", required=True, help="the widened checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights that read the new channels")
    return p.parse_args(argv)


def widened_tensor(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`new` (the wider model's initial tensor) with the source's values in the leading block and, for conv
    weights (out, in, kh, kw), zeros where an old output channel would read a new input channel."""
    if old.shape == new.shape:
        return old.clone()
    out = new.clone()
    if out.dim() == 4:
        out[:old.shape[0], old.shape[1]:] = 0
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def widen(source: str, dims: tuple[int, int, int], seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The widened model (eval mode) and the source's metadata."""
    from training.checkpoint import load_model
    from training.config import ModelConfig
    from training.model.deq_flow import DEQFlow

    model, meta = load_model(source)
    old_dims = model.cfg.encoder_dims
    if any(n < o for n, o in zip(dims, old_dims)):
        raise SystemExit(f"error: --encoder-dims {list(dims)} must be at least the source's {list(old_dims)}")
    torch.manual_seed(seed)
    wide = DEQFlow(ModelConfig.from_dict({**model.cfg.to_dict(), "encoder_dims": list(dims)}))
    old_state, state = model.state_dict(), wide.state_dict()
    wide.load_state_dict({k: widened_tensor(old_state[k], v) for k, v in state.items()})
    return wide.eval(), {**meta, "widened_from": {"checkpoint": str(source), "sha256": meta.get("sha256"),
                                                  "encoder_dims": list(old_dims)}}


def main(argv=None) -> None:
    args = parse_args(argv)
    wide, meta = widen(args.checkpoint, tuple(args.encoder_dims), args.seed)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "weights_sha256")}
    write_checkpoint(args.output, make_payload(wide.state_dict(), wide.cfg.to_dict(), meta))
    print(f"wrote {Path(args.output)}: encoder widths {meta['widened_from']['encoder_dims']} -> "
          f"{list(args.encoder_dims)}, {sum(p.numel() for p in wide.parameters())} parameters")


if __name__ == "__main__":
    main()
