"""The mixed16 split export's trajectory against float32 on the real Middlebury motorcycle pair, recorded in
docs/ so that a change in fp16 behaviour shows as a change in this curve.

    python scripts/trace_mixed16.py [--checkpoint PATH] [--size 504x744] [--iters N] [--output docs/trace_mixed16]

Exports the checkpoint's split layout in float32 and mixed16 at --size (the pair resized / cropped as
`deqflow compare --inputs real` does; the default is its full size padded to multiples of 8, under a minute on
two CPU cores),
then runs `deqflow compare --trace` with the torch float32 reference, the mixed16 export as candidate and the
float32 export as node reference (the same graph structure as mixed16, so node names match). Writes
<output>.json, .md and .png; exits with compare --trace's status.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.cli import main as deqflow
from export import export_onnx

ROOT = Path(__file__).resolve().parents[1]


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    if h % 8 or w % 8:
        raise argparse.ArgumentTypeError(f"--size {text}: height and width must be multiples of 8")
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / SHIPPED_CHECKPOINT))
    ap.add_argument("--size", type=parse_size, default=(504, 744),
                    help="padded size HxW of the pair (default: the motorcycle pair's full size)")
    ap.add_argument("--iters", type=int, default=None, help="fixed iterations (default: the export's own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(ROOT / "docs" / "trace_mixed16"), help="path stem of the reports")
    args = ap.parse_args(argv)
    h, w = args.size
    out = Path(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        models = {p: Path(tmp) / f"motorcycle-{p}.onnx" for p in ("fp32", "mixed16")}
        for precision, path in models.items():
            export_onnx(args.checkpoint, path, layout="split", height=h, width=w, precision=precision)
        cmd = ["compare", "--trace", "--checkpoint", args.checkpoint, "--candidate", f"onnxruntime={models['mixed16']}",
               "--node-reference", str(models["fp32"]), "--inputs", "real", "--size", f"{h}x{w}", "--tier", "float16",
               "--threads", str(args.threads), "--output", str(Path(tmp) / "report")]
        rc = deqflow(cmd + (["--iters", str(args.iters)] if args.iters else []))
        out.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md", ".png"):
            produced = Path(tmp) / "report" / f"trace{suffix}"
            if produced.is_file():
                text = produced.read_bytes() if suffix == ".png" else produced.read_text().replace(tmp, "<tmp>")
                target = out.with_suffix(suffix)
                target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
                print(f"wrote {target}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
