#!/usr/bin/env python
"""Max |flow difference| between ONNX Runtime CPU and PyTorch for every export layout and correlation lookup of
one checkpoint, on the real Middlebury pair (no early stop, same iteration count). The tests assert the same
thing (tests/test_export_parity.py); this prints the numbers.

    python scripts/parity_table.py --size 128x160 --iters 10  # the shipped checkpoint by default
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from deqflow.checkpoint import SHIPPED_CHECKPOINT


def main(argv=None) -> int:
    from deqflow.middlebury import real_pair
    from deqflow.shapes import parse_size
    from export import export_onnx
    from runtime import SolveOverrides, create_backend, prepare

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    ap.add_argument("--size", default="128x160")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    h, w = parse_size(args.size)
    a, b, _, _ = real_pair((h, w))
    batch = prepare(a, b)
    settings = SolveOverrides(max_iter=args.iters, tol=0.0)
    with create_backend("torch", args.checkpoint, settings=settings) as ref_backend:
        ref = ref_backend.infer(batch.image1, batch.image2).flow
    print("| layout | lookup | max abs flow diff vs torch (px) | iterations |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for lookup in ("gather", "grid_sample"):
            for layout in ("unrolled", "loop", "split"):
                path = Path(tmp) / f"{layout}_{lookup}.onnx"
                export_onnx(args.checkpoint, path, layout=layout, lookup=lookup, height=h, width=w, iters=args.iters)
                with create_backend("onnxruntime", path, threads=1,
                                    settings=settings if layout == "split" else None) as be:
                    r = be.infer(batch.image1, batch.image2)
                print(f"| {layout} | {lookup} | {float(np.abs(r.flow - ref).max()):.2e} | {r.iterations} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
