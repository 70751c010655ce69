"""Peak memory and time of one DEQ-Flow training step against the iteration count: DEQ gradients (1-step
phantom, phantom k=3, exact implicit) against plain backpropagation through the same unrolled update steps.

DEQ's claim is that its training memory does not grow with the number of solver iterations (the forward
solve runs without autograd), while backpropagation through time stores every step. Each configuration runs
in a fresh process: one warm-up-free step (forward, loss, backward, AdamW step) on random images and flow.
Peak memory is the resident-set high-water mark above the process baseline on CPU (the kernel's peak is
reset just before the step), `torch.cuda.max_memory_allocated` above the baseline on a GPU.

    python scripts/bench_train_memory.py                       # T and B, 8/16/24/32 iterations
    python scripts/bench_train_memory.py --variants T --iters 8 16 --output /tmp/mem.json
    python scripts/bench_train_memory.py --saving --repeats 3  # plain vs memory saving, 40 iterations, 1-step

--saving compares the plain training step against the same step with the model's memory saving (activation
checkpointing of the encoders) on, alternating the two, each repeat in a fresh process; it reports the median
peak with its range, the ratio of the medians and the largest gradient difference between the two paths of
the same repeat (same seed, so same weights and inputs), in docs/bench_train_memory_saving.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
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


@contextmanager
def kept_for_backward(model):
    """Bytes of the tensors autograd keeps for backward while the block runs (distinct storages), by the
    top-level module that saved them: the profile of what a training step holds when backward starts."""
    import torch

    owner, sizes, kept = ["other"], {}, Counter()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in sizes:
            sizes[storage.data_ptr()] = storage.nbytes()
            kept[owner[-1]] += storage.nbytes()
        return t

    def leave(module, args, out) -> None:
        owner.pop()

    handles = []
    for name in ("fnet", "cnet", "update_block", "mask"):
        module = getattr(model, name)
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: owner.append(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield kept
    finally:
        for handle in handles:
            handle.remove()


def _inputs(spec: dict, device):
    import torch

    b, (h, w) = spec["batch"], spec["size"]
    image1 = torch.rand(b, 3, h, w, device=device) * 255
    image2 = torch.rand(b, 3, h, w, device=device) * 255
    return image1, image2, torch.randn(b, 2, h, w, device=device) * 4, torch.ones(b, h, w, device=device)


def _peak_probe(device):
    """Resets the peak; returns a function giving the peak since then, MiB above the memory at the reset."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        return lambda: (torch.cuda.synchronize(), (torch.cuda.max_memory_allocated() - base) / 2**20)[1]
    base = _rss_kib("VmRSS")
    _reset_peak()
    return lambda: (_rss_kib("VmHWM") - base) / 1024


def forward_loss(model, spec: dict, image1, image2, flow_gt, valid):
    """Forward (DEQ, or backpropagation through the unrolled steps) and the fixed-point-correction loss."""
    from training.loss import fixed_point_correction_loss

    if spec["method"] == "bptt":
        preds = bptt_predictions(model, image1, image2, spec["iters"])
    else:
        preds = model(image1, image2).flow_predictions
    return fixed_point_correction_loss(preds, flow_gt, valid)[0]


def worker(spec: dict) -> dict:
    """One training step for `spec`; returns peak memory (MiB above baseline), seconds and what autograd kept."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    model = build(spec["variant"], spec["method"], spec["iters"], tuple(spec["encoder_dims"])).to(device)
    model.memory_saving = bool(spec.get("saving", False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = _inputs(spec, device)
    peak = _peak_probe(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = forward_loss(model, spec, *inputs)
    loss.backward()
    opt.step()
    peak_mib = peak()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    grads = {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}
    grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
    if spec.get("grad_file"):
        torch.save(grads, spec["grad_file"])
    # A separate forward after the measured step: saved-tensor hooks change the allocation pattern (they
    # lowered the plain path's peak by ~100 MiB when they ran inside the measured step).
    with kept_for_backward(model) as kept:
        forward_loss(model, spec, *inputs)
    return {**spec, "peak_mib": round(peak_mib, 1), "seconds": round(seconds, 3), "loss": float(loss.detach()),
            "cpu_seconds": round(cpu_seconds, 3), "grad_norm": grad_norm,
            "kept_for_backward_mib": {k: round(v / 2**20, 1) for k, v in kept.most_common()},
            "recomputed_segments": model.fnet.recomputed_segments + model.cnet.recomputed_segments}


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


def saving_rows(specs: list[dict], repeats: int) -> list[dict]:
    """Plain and memory-saving step of every spec, alternating, `repeats` times, each in a fresh process;
    each saving row carries the largest gradient difference to the plain row of the same repeat."""
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=2 * repeats * len(specs), unit="run") as bar:
        for rep in range(repeats):
            for spec in specs:
                pair = {}
                for saving in (False, True):
                    grad_file = str(Path(tmp) / f"grads_{saving}.pt")
                    pair[saving] = run_one({**spec, "saving": saving, "repeat": rep, "grad_file": grad_file})
                    bar.update()
                plain, saved = (torch.load(str(Path(tmp) / f"grads_{k}.pt")) for k in (False, True))
                if plain.keys() != saved.keys():
                    raise SystemExit(f"{spec}: the two paths give gradients to different parameters")
                pair[True]["max_grad_diff"] = max(float((plain[k] - saved[k]).abs().max()) for k in plain)
                pair[False]["max_grad_diff"] = 0.0
                rows += [{k: v for k, v in r.items() if k != "grad_file"} for r in pair.values()]
    return rows


def summarise_saving(rows: list[dict]) -> list[dict]:
    """Median peak [min, max], median seconds and the ratio of medians to the plain path, per configuration."""
    out = []
    keys = sorted({(r["variant"], r["method"], r["iters"]) for r in rows})
    for key in keys:
        mine = [r for r in rows if (r["variant"], r["method"], r["iters"]) == key]
        stats = {}
        for saving in (False, True):
            sel = [r for r in mine if r["saving"] == saving]
            peaks = [r["peak_mib"] for r in sel]
            stats[saving] = {"variant": key[0], "method": key[1], "iters": key[2], "saving": saving,
                             "runs": len(sel), "peak_mib_median": statistics.median(peaks),
                             "peak_mib_min": min(peaks), "peak_mib_max": max(peaks),
                             "seconds_median": statistics.median(r["seconds"] for r in sel),
                             "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in sel),
                             "max_grad_diff": max(r["max_grad_diff"] for r in sel),
                             "kept_encoders_mib": statistics.median(_kept(r, ("fnet", "cnet")) for r in sel),
                             "kept_rest_mib": statistics.median(_kept(r, REST) for r in sel),
                             "recomputed_segments": max(r["recomputed_segments"] for r in sel)}
        for saving in (False, True):
            stats[saving]["peak_ratio"] = round(stats[saving]["peak_mib_median"] / stats[False]["peak_mib_median"], 3)
            stats[saving]["time_ratio"] = round(stats[saving]["cpu_seconds_median"]
                                                / stats[False]["cpu_seconds_median"], 3)
            out.append(stats[saving])
    return out


REST = ("update_block", "mask", "other")


def _kept(row: dict, modules: tuple[str, ...]) -> float:
    return round(sum(row["kept_for_backward_mib"].get(m, 0.0) for m in modules), 1)


SAVING_NOTES = """
Peak: resident-set high-water mark of one training step (forward, loss, backward, AdamW step) above the
process's memory just before it, each run in a fresh process, one thread; median over the repeats with the
range. Kept for backward: the tensors autograd holds when backward starts (distinct storages, recorded with
torch.autograd.graph.saved_tensors_hooks in a second forward after the measured step, since the hooks change
the allocation pattern), split into the two encoders and the rest (update step, upsampling mask, correlation
pyramid, loss). Memory saving checkpoints the encoders' stem and six residual blocks
(training/model/extractor.py): their activations are recomputed, one block at a time, during backward. The
gradient difference compares every parameter's gradient with the plain run of the same repeat (same seed,
weights and inputs). CPU seconds (process time) are the time measure: wall time moves by up to 2x on the
shared machine.

Where the peak comes from (a one-off profile of the plain B step, with its numbers):
`docs/train_memory_profile.md`.

Default: off in `deqflow train` (`--memory-saving` turns it on). Gradients are equal bit for bit, but the
recomputation costs more CPU time per step (the CPU time ratio above), and CPU runs are bound by time, not
memory. Turn it on where memory limits the batch or the crop.
"""


def markdown_saving(summary: list[dict], batch: int, size: list[int]) -> str:
    lines = ["## Plain against memory saving", "",
             "| variant | configuration | path | peak MiB median [min-max] | ratio to plain | kept for backward MiB "
             "(encoders + rest) | CPU s (median) | wall s (median) | CPU time ratio | max abs gradient difference |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        config = f"batch {batch}, {size[0]}x{size[1]}, {LABELS[s['method']]}, {s['iters']} solver steps"
        path = "memory saving" if s["saving"] else "plain"
        diff = f"{s['max_grad_diff']:.1e}" if s["saving"] else "-"
        lines.append(f"| {s['variant']} | {config} | {path} | {s['peak_mib_median']:.0f} [{s['peak_mib_min']:.0f}-"
                     f"{s['peak_mib_max']:.0f}] | {s['peak_ratio']:.2f}x | {s['kept_encoders_mib']:.0f} + "
                     f"{s['kept_rest_mib']:.0f} | {s['cpu_seconds_median']:.1f} | "
                     f"{s['seconds_median']:.1f} | "
                     f"{s['time_ratio']:.2f}x | {diff} |")
    return "\n".join(lines) + "\n\n## Notes\n" + SAVING_NOTES


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--variants", nargs="+", default=["T", "B"], choices=["T", "B", "L", "H", "G"])
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                    help="gradients to measure (default: all; with --saving: phantom1)")
    ap.add_argument("--iters", nargs="+", type=int, default=None,
                    help="solver iterations (default: 8 16 24 32; with --saving: 40)")
    ap.add_argument("--ref-iters", type=int, default=24, help="iteration count of the DEQ/BPTT ratio")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", nargs=2, type=int, default=[256, 320], metavar=("H", "W"))
    ap.add_argument("--encoder-dims", nargs=3, type=int, default=[64, 96, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--saving", action="store_true", help="compare the plain step with the memory-saving one")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each path per configuration (--saving)")
    ap.add_argument("--output", type=Path, default=None, help="JSON report (default: docs/bench_train_memory"
                    ".json, with --saving docs/bench_train_memory_saving.json); the table goes next to it")
    args = ap.parse_args(argv)
    if args.worker:
        return args
    args.methods = args.methods or (["phantom1"] if args.saving else list(METHODS))
    args.iters = args.iters or ([40] if args.saving else [8, 16, 24, 32])
    name = "bench_train_memory_saving.json" if args.saving else "bench_train_memory.json"
    args.output = args.output or ROOT / "docs" / name
    if min(args.iters) < 1 or min(args.batch, args.threads, args.repeats) < 1 or any(s % 8 or s < 128
                                                                                   for s in args.size):
        ap.error("iterations, batch, threads and repeats must be >= 1; sizes multiples of 8 and at least 128")
    return args


def write_report(args: argparse.Namespace, report: dict, table: str) -> None:
    import torch

    report.update(torch=torch.__version__, measure="CUDA max_memory_allocated" if args.device.startswith("cuda")
                  else "CPU VmHWM - VmRSS")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(table)
    print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    specs = [{"variant": v, "method": m, "iters": i, "batch": args.batch, "size": args.size,
              "encoder_dims": args.encoder_dims, "threads": args.threads, "device": args.device}
             for v in args.variants for i in args.iters for m in args.methods]
    if args.saving:
        print(f"{len(specs)} configurations x 2 paths x {args.repeats} repeats, each in a fresh process")
        rows = saving_rows(specs, args.repeats)
        summary = summarise_saving(rows)
        write_report(args, {"rows": rows, "summary": summary}, markdown_saving(summary, args.batch, args.size))
        return 0
    print(f"{len(specs)} configurations, each one training step in a fresh process")
    rows = [run_one(s) for s in tqdm(specs, unit="config")]
    summary = summarise(rows, args.ref_iters)
    write_report(args, {"rows": rows, "summary": summary, "ref_iters": args.ref_iters},
                 markdown(rows, summary, args.ref_iters))
    plot(rows, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
