"""Peak memory and time of one DEQ-Flow training step against the iteration count: DEQ gradients (1-step
phantom, phantom k=3, exact implicit) against plain backpropagation through the same unrolled update steps.

DEQ's claim is that its training memory does not grow with the number of solver iterations (the forward
solve runs without autograd), while backpropagation through time stores every step. Each configuration runs
in a fresh process: one warm-up-free step (forward, loss, backward, AdamW step) on random images and flow.
Peak memory is the resident-set high-water mark above the process baseline on CPU (the kernel's peak is
reset just before the step), `torch.cuda.max_memory_allocated` above the baseline on a GPU.

    python scripts/bench_train_memory.py                       # T and B, 8/16/24/32 iterations
    python scripts/bench_train_memory.py --variants T --iters 8 16 --output /tmp/mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("phantom1", "phantom3", "ift", "bptt")
LABELS = {"phantom1": "DEQ, 1-step phantom gradient", "phantom3": "DEQ, phantom gradient k=3",
          "ift": "DEQ, exact implicit gradient", "bptt": "backprop through the unrolled steps"}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def build(variant: str, method: str, iters: int, encoder_dims: tuple[int, int, int]):
    """The model in training mode, configured for `method` at `iters` solver steps."""
    from training.config import ModelConfig
    from training.deq.config import DEQConfig
    from training.model.deq_flow import DEQFlow

    deq = DEQConfig(f_solver="fixed_point", f_max_iter=iters, f_tol=0.0, n_states=1,
                    phantom_grad=(3 if method == "phantom3" else 1,), ift=method == "ift",
                    b_solver="fixed_point", b_max_iter=iters, b_tol=0.0)
    model = DEQFlow(ModelConfig(variant=variant, encoder_dims=encoder_dims, deq=deq))
    model.train()
    model.freeze_bn()
    return model


def bptt_predictions(model, image1, image2, iters: int):
    """Flow of the last of `iters` update steps, with autograd through every step (RAFT-style training)."""
    ctx, packer, f, z = model.fixed_point_problem(image1, image2)
    for _ in range(iters):
        z = f(z)
    net, coords = packer.unpack(z)
    return [model.decode(net, coords - ctx.coords0)]


def worker(spec: dict) -> dict:
    """One training step for `spec`; returns peak memory (MiB above baseline) and seconds."""
    import torch

    from training.loss import fixed_point_correction_loss

    torch.manual_seed(0)
    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    model = build(spec["variant"], spec["method"], spec["iters"], tuple(spec["encoder_dims"])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, (h, w) = spec["batch"], spec["size"]
    image1 = torch.rand(b, 3, h, w, device=device) * 255
    image2 = torch.rand(b, 3, h, w, device=device) * 255
    flow_gt = torch.randn(b, 2, h, w, device=device) * 4
    valid = torch.ones(b, h, w, device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS")
        _reset_peak()
    start = time.perf_counter()
    if spec["method"] == "bptt":
        preds = bptt_predictions(model, image1, image2, spec["iters"])
    else:
        preds = model(image1, image2).flow_predictions
    loss, _ = fixed_point_correction_loss(preds, flow_gt, valid)
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()
                                     if p.grad is not None)))
    return {**spec, "peak_mib": round(peak_mib, 1), "seconds": round(time.perf_counter() - start, 3),
            "loss": float(loss), "grad_norm": grad_norm}


def run_one(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"configuration {spec} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], ref_iters: int) -> dict:
    """Per variant and method: peak at the smallest/largest iteration count, growth, DEQ/BPTT ratios."""
    out: dict = {}
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        peak = {(r["method"], r["iters"]): r["peak_mib"] for r in mine}
        iters = sorted({r["iters"] for r in mine})
        entry = {}
        for method in METHODS:
            if (method, iters[0]) not in peak:
                continue
            lo, hi = peak[(method, iters[0])], peak[(method, iters[-1])]
            entry[method] = {"growth": round(hi / lo - 1, 3) if lo > 0 else None}
            if (method, ref_iters) in peak and ("bptt", ref_iters) in peak and method != "bptt":
                entry[method][f"vs_bptt_at_{ref_iters}"] = round(peak[(method, ref_iters)]
                                                                 / peak[("bptt", ref_iters)], 3)
        out[variant] = entry
    return out


def markdown(rows: list[dict], summary: dict, ref_iters: int) -> str:
    iters = sorted({r["iters"] for r in rows})
    lines = ["| variant | gradient | " + " | ".join(f"{i} it: MiB / s" for i in iters)
             + f" | growth {iters[0]}->{iters[-1]} | vs BPTT at {ref_iters} |",
             "|---|---|" + "---:|" * (len(iters) + 2)]
    for variant, entry in summary.items():
        for method, stats in entry.items():
            cells = []
            for i in iters:
                r = next((r for r in rows if (r["variant"], r["method"], r["iters"]) == (variant, method, i)), None)
                cells.append(f"{r['peak_mib']:.0f} / {r['seconds']:.1f}" if r else "-")
            ratio = stats.get(f"vs_bptt_at_{ref_iters}")
            growth = stats["growth"]
            lines.append(f"| {variant} | {LABELS[method]} | " + " | ".join(cells)
                         + f" | {'-' if growth is None else f'{growth:+.1%}'} | "
                         + ("-" if ratio is None else f"{ratio:.2f}x") + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = sorted({r["variant"] for r in rows})
    fig = Figure(figsize=(5 * len(variants), 3.6))
    FigureCanvasAgg(fig)
    for k, variant in enumerate(variants):
        ax = fig.add_subplot(1, len(variants), k + 1)
        for method in METHODS:
            pts = sorted((r["iters"], r["peak_mib"]) for r in rows if (r["variant"], r["method"]) == (variant, method))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=LABELS[method])
        ax.set_title(f"DEQ-Flow-{variant}: peak training memory")
        ax.set_xlabel("solver / unrolled iterations")
        ax.set_ylabel("MiB above baseline")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--variants", nargs="+", default=["T", "B"], choices=["T", "B", "L", "H", "G"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--iters", nargs="+", type=int, default=[8, 16, 24, 32])
    ap.add_argument("--ref-iters", type=int, default=24, help="iteration count of the DEQ/BPTT ratio")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", nargs=2, type=int, default=[256, 320], metavar=("H", "W"))
    ap.add_argument("--encoder-dims", nargs=3, type=int, default=[64, 96, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "bench_train_memory.json")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if min(args.iters) < 1 or args.batch < 1 or args.threads < 1 or any(s % 8 or s < 128 for s in args.size):
        ap.error("iterations, batch and threads must be >= 1; sizes multiples of 8 and at least 128")
    specs = [{"variant": v, "method": m, "iters": i, "batch": args.batch, "size": args.size,
              "encoder_dims": args.encoder_dims, "threads": args.threads, "device": args.device}
             for v in args.variants for i in args.iters for m in args.methods]
    print(f"{len(specs)} configurations, each one training step in a fresh process")
    rows = [run_one(s) for s in tqdm(specs, unit="config")]
    summary = summarise(rows, args.ref_iters)
    import torch

    report = {"rows": rows, "summary": summary, "ref_iters": args.ref_iters, "torch": torch.__version__,
              "measure": "CUDA max_memory_allocated" if args.device.startswith("cuda") else "CPU VmHWM - VmRSS"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, summary, args.ref_iters)
    args.output.with_suffix(".md").write_text(table)
    plot(rows, args.output.with_suffix(".png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
