#!/usr/bin/env python
"""Load test of `deqflow serve` on 127.0.0.1: N concurrent clients (half HTTP, half gRPC) sending image pairs to
a batching server and to a batch-1 server, then concurrent video streams; bounded in requests and time.

Pairs run twice: with a fixed number of solver steps, and with the tolerance stop, under which every pair of a
batch stops by its own rule (issue 23) and reports its own iteration count. Every pair response is checked
against a local solve of its own pair with the iteration count the server reports (within 1e-5 px). Streams run
with the tolerance; their responses are checked against local warm-started inference (runtime.FlowEstimator with
warm_start) of the same frames.

    python scripts/load_test_serving.py                      # exports the shipped checkpoint at 128x160
    python scripts/load_test_serving.py --model m.onnx --clients 8 --requests 4

Writes docs/serving_load_test.json and docs/serving_load_test.md. Needs `pip install deqflow[serve]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / SHIPPED_CHECKPOINT
TOLERANCE_PX = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="split export (default: the shipped checkpoint exported here)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="pairs per client and server")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--frames", type=int, default=5, help="frames per stream")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue-delay-us", type=int, default=50000)
    p.add_argument("--pair-iters", type=int, default=12, help="pairs, fixed-step runs: solver steps")
    p.add_argument("--iters", type=int, default=40, help="streams and tolerance runs: step cap")
    p.add_argument("--tol", type=float, default=5e-3, help="streams and tolerance runs: residual tolerance")
    p.add_argument("--stop-mode", choices=["abs", "rel"], default="rel")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds; clients stop sending after it")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    return p.parse_args(argv)


def export_small(out_dir: Path) -> Path:
    """The shipped checkpoint as a split export at 128x160 with a dynamic batch axis (deqflow export)."""
    path = out_dir / "deqflow-T.onnx"
    subprocess.run([sys.executable, "-m", "deqflow", "export", "--checkpoint", str(CHECKPOINT), "--output", str(path),
                    "--layout", "split", "--height", "128", "--width", "160", "--dynamic", "--min-shape", "1x128x160",
                    "--opt-shape", "1x128x160", "--max-shape", "8x128x160", "--iters", "40"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    return path


def video(count: int) -> list[np.ndarray]:
    """A slow pan: crops of the real motorcycle photograph sliding right."""
    from runtime import real_pair

    return [real_pair((128, 160), zoom=1.6, offset=(0.5, 0.30 + 0.01 * t))[0] for t in range(count)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def triton_batches(metrics_url: str, model: str) -> dict:
    """Inferences and executions Triton counted for `model` (its Prometheus metrics)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out = {}
    for key in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
                "nv_inference_request_failure"):
        m = re.search(rf'^{key}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)', text, re.M)
        out[key] = float(m.group(1)) if m else None
    return out


def concurrently(work, n: int) -> float:
    """Run work(0) .. work(n-1) in n threads; returns the wall time."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def pair_load(server, args, pairs) -> dict:
    from runtime.serving.client import Client

    records, errors, t_end = [], [], time.monotonic() + args.time_limit

    def client(k: int) -> None:
        with Client(server.http if k % 2 else server.grpc, timeout_s=args.time_limit) as c:
            for r in range(args.requests):
                if time.monotonic() > t_end:
                    return
                idx = (k + r) % len(pairs)
                t0 = time.perf_counter()
                try:
                    served = c.pair(*pairs[idx])
                except Exception as exc:
                    errors.append(f"client {k}: {exc}")
                    continue
                records.append({"protocol": c.protocol, "pair": idx, "latency_s": time.perf_counter() - t0,
                                "iterations": int(served.iterations[0]), "batch": int(served.batch[0]),
                                "flow": served.flow})

    wall = concurrently(client, args.clients)
    lat = [r["latency_s"] for r in records]
    sizes = [r["batch"] for r in records]
    return {"records": records, "errors": errors, "wall_s": wall, "requests": len(records),
            "throughput_pairs_per_s": len(records) / wall, "p50_ms": 1e3 * percentile(lat, 50),
            "p99_ms": 1e3 * percentile(lat, 99), "mean_iterations": float(np.mean([r["iterations"] for r in records])),
            "sample_iterations": int(sum(r["iterations"] for r in records)),
            "batch_sizes": {str(b): sizes.count(b) for b in sorted(set(sizes))},
            "triton": triton_batches(server.metrics, "deqflow_flow")}


def check_pairs(run: dict, backend, pairs) -> dict:
    """Each response against a local solve of its pair with the server's iteration count."""
    from runtime import FlowEstimator, SolveOverrides

    cache, worst, wrong = {}, 0.0, 0
    for r in run.pop("records"):
        key = (r["pair"], r["iterations"])
        if key not in cache:
            backend.configure(SolveOverrides(max_iter=r["iterations"], tol=0.0, stop_mode="abs"))
            cache[key] = FlowEstimator(backend)(*pairs[r["pair"]]).flow
        diff = float(np.abs(r["flow"] - cache[key]).max())
        worst, wrong = max(worst, diff), wrong + (diff > TOLERANCE_PX)
    return {"checked": run["requests"], "wrong": wrong, "max_abs_diff_px": worst, "local_solves": len(cache)}


def stream_load(server, args, frames) -> dict:
    from runtime.serving.client import Client

    results, errors = {}, []

    def stream(k: int) -> None:
        with Client(server.grpc if k % 2 else server.http, timeout_s=args.time_limit) as c:
            s = c.stream()
            try:
                s.send(frames[0])
                results[k] = [s.send(f, last=i == len(frames) - 2) for i, f in enumerate(frames[1:])]
            except Exception as exc:
                errors.append(f"stream {k}: {exc}")

    return {"results": results, "errors": errors, "wall_s": concurrently(stream, args.streams)}


def check_streams(run: dict, backend, frames, settings) -> dict:
    from runtime import FlowEstimator

    backend.configure(settings)
    estimator = FlowEstimator(backend, warm_start=True)
    local = [estimator(a, b) for a, b in zip(frames, frames[1:])]
    results = run.pop("results")
    worst = max((float(np.abs(s.flow - ref.flow).max()) for served in results.values()
                 for s, ref in zip(served, local)), default=float("nan"))
    cold = [int(served[0].iterations[0]) for served in results.values()]
    warm = [int(s.iterations[0]) for served in results.values() for s in served[1:]]
    return {"streams": len(results), "frames_per_stream": len(frames), "errors": run["errors"],
            "wall_s": run["wall_s"], "cold_iterations_mean": float(np.mean(cold)) if cold else None,
            "warm_iterations_mean": float(np.mean(warm)) if warm else None,
            "local_cold_iterations": local[0].iterations,
            "local_warm_iterations_mean": float(np.mean([p.iterations for p in local[1:]])),
            "max_abs_diff_px": worst, "wrong": sum(1 for served in results.values() for s, ref in zip(served, local)
                                                    if np.abs(s.flow - ref.flow).max() > TOLERANCE_PX)}


def serve_and_load(model: Path, args, batch: int, delay_us: int, pairs=None, frames=None,
                   fixed: bool = False) -> dict:
    from runtime.serving.process import ServerProcess

    solver = ["--iters", str(args.pair_iters), "--tol", "0"] if fixed else \
        ["--iters", str(args.iters), "--tol", str(args.tol), "--stop-mode", args.stop_mode]
    server = ServerProcess(["--model", str(model), "--max-batch", str(batch), "--max-queue-delay-us",
                            str(delay_us), "--threads", str(args.threads), *solver], root=ROOT,
                           env={"OMP_NUM_THREADS": str(args.threads)})
    t0 = time.perf_counter()
    with server:
        ready_s = time.perf_counter() - t0
        out = {"max_batch": batch, "max_queue_delay_us": delay_us, "ready_s": ready_s}
        if pairs is not None:
            out["pairs"] = pair_load(server, args, pairs)
        if frames is not None:
            out["streams"] = stream_load(server, args, frames)
    out.update(stop_s=server.stop_seconds, leftovers=server.leftovers())
    return out


PAIR_RUNS = {"fixed": "batched", "fixed-1": "batch1", "tolerance": "batched", "tolerance-1": "batch1"}
"""Pair runs: the stop (fixed steps or the tolerance) and the server (batched or batch-1)."""


def markdown(out: dict) -> str:
    rows = ["| pairs stop | server | clients x pairs | throughput (pairs/s) | p50 (ms) | p99 (ms) | mean iterations | "
            "sample-iterations | batch sizes formed (pairs: count) | errors | wrong responses (max diff px) |",
            "|" + "---|" * 11]
    for key, name in PAIR_RUNS.items():
        run = out[key]
        p = run["pairs"]
        stop = out["pair_solver"] if key.startswith("fixed") else out["solver"]
        rows.append(f"| {stop} | {name} (max batch {run['max_batch']}, delay {run['max_queue_delay_us']} us) | "
                    f"{out['clients']} x {out['requests']} | {p['throughput_pairs_per_s']:.2f} | {p['p50_ms']:.0f} | "
                    f"{p['p99_ms']:.0f} | {p['mean_iterations']:.1f} | {p['sample_iterations']} | "
                    f"{', '.join(f'{k}: {v}' for k, v in p['batch_sizes'].items())} | {len(p['errors'])} | "
                    f"{p['check']['wrong']} ({p['check']['max_abs_diff_px']:.1e}) |")
    s = out["streams"]["streams"]
    gains = "; ".join(f"{stop}: x{gain:.2f}" for stop, gain in out["throughput_gain"].items())
    lines = [f"# deqflow serve load test ({out['date']})", "", f"`{out['command']}`", "",
             f"{out['machine']}; model: {out['model']}; streams: {out['solver']}.", "",
             *rows, "",
             f"Batched vs batch-1 throughput ({gains}); batched p99 "
             f"{'within' if out['within_budget'] else 'above'} the batch-1 p99 ({out['latency_budget_ms']:.0f} ms, "
             "tolerance runs).",
             "", "| streams | frames each | cold iterations (first pair) | warm iterations (later pairs) | local "
             "cold / warm | wrong (max diff px) | errors |", "|---|---|---|---|---|---|---|",
             f"| {s['streams']} | {s['frames_per_stream']} | {s['cold_iterations_mean']:.1f} | "
             f"{s['warm_iterations_mean']:.1f} | {s['local_cold_iterations']} / {s['local_warm_iterations_mean']:.1f} "
             f"| {s['wrong']} ({s['max_abs_diff_px']:.1e}) | {len(s['errors'])} |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from runtime import SolveOverrides, create_backend, real_pairs

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else export_small(Path(tmp))
        pairs, frames = real_pairs((128, 160), 4), video(args.frames)
        runs = {key: serve_and_load(model, args, *((args.max_batch, args.max_queue_delay_us) if name == "batched"
                                                   else (1, 0)), pairs, fixed=key.startswith("fixed"))
                for key, name in PAIR_RUNS.items()}
        streams = serve_and_load(model, args, args.max_batch, args.max_queue_delay_us, frames=frames)
        backend = create_backend("onnxruntime", model, threads=args.threads)
        settings = SolveOverrides(max_iter=args.iters, tol=args.tol, stop_mode=args.stop_mode)
        for run in runs.values():
            run["pairs"]["check"] = check_pairs(run["pairs"], backend, pairs)
        streams["streams"] = check_streams(streams["streams"], backend, frames, settings)
        backend.close()
    out = summary(args, argv, runs, streams)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "serving_load_test.json").write_text(json.dumps(out, indent=2, default=float))
    (docs / "serving_load_test.md").write_text(markdown(out))
    print(markdown(out))
    bad = sum(run["pairs"]["check"]["wrong"] + len(run["pairs"]["errors"]) for run in runs.values())
    bad += streams["streams"]["wrong"] + len(streams["streams"]["errors"])
    return 1 if bad or any(run["leftovers"] for run in (*runs.values(), streams)) else 0


def summary(args, argv, runs: dict, streams: dict) -> dict:
    """The load test's record: every run, the batched/batch-1 throughput ratio per pair stop, the p99 budget."""
    def rate(key: str) -> float:
        return runs[key]["pairs"]["throughput_pairs_per_s"]

    budget = runs["tolerance-1"]["pairs"]["p99_ms"]
    return {"date": time.strftime("%Y-%m-%d"), "command": " ".join(
        ["python scripts/load_test_serving.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "model": "shipped deqflow-T-synthetic, split layout, 128x160" if not args.model else str(args.model),
        "solver": f"{args.stop_mode} tolerance {args.tol:g}, cap {args.iters}", "clients": args.clients,
        "pair_solver": f"{args.pair_iters} fixed steps", "requests": args.requests, **runs, "streams": streams,
        "throughput_gain": {"fixed steps": rate("fixed") / rate("fixed-1"),
                            "tolerance": rate("tolerance") / rate("tolerance-1")},
        "latency_budget_ms": budget, "within_budget": runs["tolerance"]["pairs"]["p99_ms"] <= budget}


if __name__ == "__main__":
    sys.exit(main())
