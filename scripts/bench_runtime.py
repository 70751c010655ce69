#!/usr/bin/env python
"""Runtime latency on this machine: ONNX Runtime CPU (unrolled graph, split graphs + host solver) against the
PyTorch eager reference, through the runtime's backends (`Backend.infer`, inputs already padded), at several
sizes and thread counts, no early stop. Timed runs interleave the backends (runtime.bench), so the background
load of a shared machine hits all alike; the ratios to torch are taken within each run.

    python scripts/bench_runtime.py                                   # 128x160 + 256x320 + 440x1024, 1 and 2 threads
    python scripts/bench_runtime.py --sizes 128x160 --threads 1 --runs 5 --out /tmp/b.json --markdown /tmp/b.md

Writes JSON (--out), a Markdown table (--markdown) and a bar chart (--png).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / SHIPPED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--sizes", nargs="+", default=["128x160", "256x320", "440x1024"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--lookup", default="gather", choices=["gather", "grid_sample"], help="export lookup")
    p.add_argument("--out", default=str(ROOT / "docs" / "runtime_bench.json"))
    p.add_argument("--markdown", default=str(ROOT / "docs" / "runtime_bench.md"))
    p.add_argument("--png", default=str(ROOT / "docs" / "runtime_bench.png"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from deqflow.shapes import parse_size
    from export import export_onnx
    from runtime import SolveOverrides, create_backend
    from runtime.bench import BenchCase, run_bench, write_report

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            h, w = parse_size(size_text)
            models = {}
            for layout in ("unrolled", "split"):
                models[layout] = Path(tmp) / f"{layout}_{h}x{w}.onnx"
                export_onnx(args.checkpoint, models[layout], layout=layout, height=h, width=w, iters=args.iters,
                            lookup=args.lookup)
            for threads in args.threads:
                torch.set_num_threads(threads)
                fixed = SolveOverrides(max_iter=args.iters, tol=0.0)
                cases = [
                    BenchCase("torch:cpu", lambda s=fixed, t=threads: create_backend(
                        "torch", args.checkpoint, settings=s, threads=t), (h, w), 1, {"threads": threads}),
                    BenchCase("onnxruntime:cpu (unrolled)", lambda t=threads, m=models["unrolled"]: create_backend(
                        "onnxruntime", m, threads=t), (h, w), 1, {"threads": threads}),
                    BenchCase("onnxruntime:cpu (split)", lambda s=fixed, t=threads, m=models["split"]: create_backend(
                        "onnxruntime", m, settings=s, threads=t), (h, w), 1, {"threads": threads}),
                ]
                print(f"{h}x{w}, {threads} thread(s), {args.iters} iterations:")
                rep = run_bench(cases, warmup=args.warmup, runs=args.runs, iterations=args.iters, log=print)
                for e in rep["results"]:
                    e["threads"] = threads
                    e.pop("describe", None)
                reports.append(rep)
    results = [e for r in reports for e in r["results"]]
    for e in results:
        if "latency_ms" in e:
            base = next(x for x in results if x["label"] == "torch:cpu" and x["size"] == e["size"]
                        and x["threads"] == e["threads"])
            e["ratio_to_torch"] = e["latency_ms"]["median"] / base["latency_ms"]["median"]
    out = {"script": "scripts/bench_runtime.py", "argv": sys.argv[1:], "checkpoint": Path(args.checkpoint).name,
           "iterations": args.iters, "lookup": args.lookup, "versions": reports[0]["versions"], "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_report(out, args.out)
    Path(args.markdown).write_text(markdown(args, out))
    if args.png:
        plot(results, args.png)
    print(f"wrote {args.out}, {args.markdown}" + (f", {args.png}" if args.png else ""))
    return 0


def markdown(args, out: dict) -> str:
    """The report's table with threads and the ratio to torch, below a line on the settings and machine."""
    from runtime.bench import markdown_table

    results = out["results"]
    table = markdown_table({"results": results}).splitlines()
    table[0] = table[0].replace("| backend |", "| backend | threads | ratio to torch |")
    table[1] = "|---|---|---|" + table[1][len("|---|"):]
    for i, e in enumerate(results):
        ratio = f"{e['ratio_to_torch']:.2f}" if "ratio_to_torch" in e else "-"
        table[2 + i] = table[2 + i].replace(f"| {e['label']} |", f"| {e['label']} | {e['threads']} | {ratio} |", 1)
    v = out["versions"]
    md = [f"Runtime latency, {out['checkpoint']} (DEQ-Flow-T), {args.iters} fixed-point iterations, no early stop, "
          f"batch 1, real image pair; median of {args.runs} interleaved runs after {args.warmup} warm-up "
          f"({v['cpu']}, {v['cpu_count']} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"torch {v['torch']}, onnxruntime "
          f"{v['onnxruntime']}). Command: `python scripts/bench_runtime.py {' '.join(sys.argv[1:])}`.", "", *table]
    return "\n".join(md) + "\n"


def plot(results, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = sorted({(tuple(e["size"]), e["threads"]) for e in results}, key=lambda g: (g[0][0] * g[0][1], g[1]))
    labels = ["torch:cpu", "onnxruntime:cpu (unrolled)", "onnxruntime:cpu (split)"]
    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        vals = []
        for size, threads in groups:
            e = next((x for x in results if x["label"] == label and tuple(x["size"]) == size
                      and x["threads"] == threads and "latency_ms" in x), None)
            vals.append(e["ratio_to_torch"] if e else float("nan"))
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + width for i in range(len(groups))])
    ax.set_xticklabels([f"{s[0]}x{s[1]}\n{t} thr" for s, t in groups])
    ax.set_ylabel("median latency / torch")
    ax.set_title("ONNX Runtime CPU vs PyTorch eager (lower is faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
