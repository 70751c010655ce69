#!/usr/bin/env python
"""Adaptive compute: accuracy against solver time of stop rules, against the official 60-step protocol.

With a trained checkpoint, on the real Middlebury motorcycle pair (full resolution, padded to a multiple of 8)
and a few held-out synthetic scenes (seeds never used in training), it measures:
- one plain fixed-point solve of --cap steps per pair, keeping every iterate (EPE at each step) and both residual
  traces, and its solver time per step. Every fixed-point stop rule (fixed counts, relative tolerances with and
  without the stagnation exit, last or lowest-residual iterate) is then applied to these traces by the same
  code the solvers use (deqflow.solver_spec.StallMonitor / stop_reason), which gives its step, its EPE and
  its solver time (steps x the measured time per step);
- run for real and timed, interleaved pair by pair: the reference, the chosen default, and plain iteration
  against Anderson acceleration at a few relative tolerances.
The reference is the official evaluation protocol: plain iteration, 60 steps, abs tolerance 1e-3, the
lowest-residual iterate. The default (see choose_default) is a relative-tolerance rule with the stagnation
exit, at least --goal times faster than the reference and no less accurate on the real pair and on the
synthetic scenes (else within --budget px).

    python scripts/bench_stop_rule.py --synthetic 5  # the shipped checkpoint by default

Writes docs/stop_rule.json and docs/stop_rule.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HELD_OUT_SEED = 10_000_000
FIXED_COUNTS = (4, 6, 8, 10, 12, 16, 20, 24, 30, 36, 45, 54, 60)
REL_TOLS = (2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3, 5e-4)
STALLS = ((0, 0.01), (4, 0.01), (6, 0.01), (6, 0.05), (10, 0.01))
ANDERSON_TOLS = (1e-2, 5e-3, 2e-3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / SHIPPED_CHECKPOINT))
    p.add_argument("--synthetic", type=int, default=4, help="held-out synthetic scenes")
    p.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"),
                   help="synthetic scene size")
    p.add_argument("--cap", type=int, default=60, help="iterations of the reference protocol")
    p.add_argument("--budget", type=float, default=0.02, help="allowed mean EPE increase over the reference (px)")
    p.add_argument("--goal", type=float, default=3.0, help="solver-time speedup the default should reach")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=str(DOCS / "stop_rule.json"))
    p.add_argument("--markdown", default=str(DOCS / "stop_rule.md"))
    p.add_argument("--markdown-only", action="store_true", help="rewrite the markdown from the JSON (no measuring)")
    return p.parse_args(argv)


def load_pairs(count: int, size: tuple[int, int]) -> list[dict]:
    """[{'set', 'name', 'image1', 'image2', 'flow', 'valid'}]: the real pair, then held-out synthetic scenes."""
    from deqflow.middlebury import motorcycle
    from training.data import SyntheticFlowDataset

    left, right, flow, valid = motorcycle()
    pairs = [{"set": "real", "name": "motorcycle", "image1": left, "image2": right, "flow": flow, "valid": valid}]
    data = SyntheticFlowDataset(size=tuple(size), length=count, seed=HELD_OUT_SEED)
    for i in range(count):
        s = data.sample(i)
        pairs.append({"set": "synthetic", "name": f"seed{HELD_OUT_SEED}-{i}", "image1": s.image1,
                      "image2": s.image2, "flow": s.flow, "valid": s.valid})
    return pairs


class Problem:
    """One pair's fixed-point problem on the padded input, and EPE of any state against the ground truth."""

    def __init__(self, model, pair: dict) -> None:
        import torch

        from deqflow.padding import InputPadder

        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()

        self.torch, self.model, self.pair = torch, model, pair
        self.padder = InputPadder(tensor(pair["image1"]).shape)
        i1, i2 = self.padder.pad(tensor(pair["image1"]), tensor(pair["image2"]))
        with torch.no_grad():
            t0 = time.perf_counter()
            self.ctx, self.packer, self.f, self.z0 = model.fixed_point_problem(i1, i2)
            self.encode_s = time.perf_counter() - t0

    def epe(self, z) -> float:
        from deqflow.metrics import flow_metrics

        with self.torch.no_grad():
            net, coords1 = self.packer.unpack(z)
            flow = self.model.decode(net, coords1 - self.ctx.coords0)
        pred = self.padder.unpad(flow)[0].permute(1, 2, 0).numpy()
        return float(flow_metrics(pred, self.pair["flow"], self.pair["valid"] > 0)["epe"])


def trace_pair(problem: Problem, cap: int) -> dict:
    """Every iterate's EPE, both residual traces and the time per step of a --cap step plain solve."""
    from training.deq.solvers import fixed_point_iter

    t0 = time.perf_counter()
    result = fixed_point_iter(problem.f, problem.z0, max_iter=cap, tol=0.0, return_final=True,
                              indexing=range(1, cap + 1))
    solve_s = time.perf_counter() - t0
    return {"epe": [problem.epe(z) for z in result.trajectory],
            "abs": result.stats.abs_trace[0].double().numpy(), "rel": result.stats.rel_trace[0].double().numpy(),
            "step_s": solve_s / cap, "solve_s": solve_s, "encode_s": problem.encode_s}


def apply_rule(trace: dict, rule, return_final: bool) -> tuple[int, int, str]:
    """(steps, index of the returned iterate, stop reason) of `rule` on one pair's recorded traces: the solvers'
    own stop test replayed (one sample, plain iteration)."""
    from deqflow.solver_spec import StallMonitor, stop_reason

    stall = StallMonitor(1, rule.stall_window, rule.stall_margin)
    lowest, best = np.inf, 0
    for k in range(min(rule.max_iter, len(trace["abs"]))):
        current = trace[rule.stop_mode][k]
        if current < lowest:
            lowest, best = current, k
        crit = current if return_final else lowest
        converged = np.array([rule.tol > 0 and crit < rule.tol])
        stalled = stall.update(np.array([current])) if rule.stall_window > 0 else np.zeros(1, bool)
        reason = stop_reason(nonfinite=not np.isfinite(trace["abs"][k]), converged=converged, stalled=stalled,
                             at_cap=k + 1 >= rule.max_iter)
        if reason:
            break
    steps = k + 1
    return steps, k if return_final else best, reason or "cap"


def candidate_rules(cap: int) -> list[tuple[str, object, bool]]:
    """(label, StopRule, return_final) of every fixed-point rule scored from the traces."""
    from deqflow.solver_spec import StopRule

    rules = [("official 60-step protocol (abs < 0.001, lowest residual)",
              StopRule(tol=1e-3, stop_mode="abs", max_iter=cap), False)]
    rules += [(f"fixed {k}", StopRule(max_iter=k), True) for k in FIXED_COUNTS if k <= cap]
    for tol in REL_TOLS:
        for window, margin in STALLS:
            for final in (True, False):
                rule = StopRule(tol=tol, stop_mode="rel", max_iter=cap, stall_window=window, stall_margin=margin)
                rules.append((rule.describe() + ("" if final else ", lowest residual"), rule, final))
    return rules


def score_rules(traces: list[dict], sets: list[str], cap: int) -> list[dict]:
    """Per rule: mean EPE per set, mean steps, solver time (steps x each pair's step time) and stop reasons."""
    rows = []
    for label, rule, final in candidate_rules(cap):
        per = [apply_rule(t, rule, final) for t in traces]
        row = {"label": label, "rule": rule.as_dict(), "return_final": final,
               "steps": [p[0] for p in per], "reasons": [p[2] for p in per],
               "solver_s": float(sum(p[0] * t["step_s"] for p, t in zip(per, traces)))}
        for name in sorted(set(sets)):
            idx = [i for i, s in enumerate(sets) if s == name]
            row[f"epe_{name}"] = float(np.mean([traces[i]["epe"][per[i][1]] for i in idx]))
        rows.append(row)
    ref = rows[0]
    for row in rows:
        row["speedup"] = ref["solver_s"] / row["solver_s"]
        row["delta"] = {k[4:]: row[k] - ref[k] for k in row if k.startswith("epe_")}
    return rows


def choose_default(rows: list[dict], budget: float, goal: float) -> dict:
    """The default among the tolerance rules with the stagnation exit (so no solve runs away) and the last
    iterate (what every layout returns): the fastest one at least `goal` times faster than the reference
    that is no less accurate than it on every set; else the fastest within `budget` px; else the closest.
    The margin matters: with a handful of pairs, the sampling noise of a mean EPE is about `budget`."""
    adaptive = [r for r in rows[1:] if r["rule"]["tol"] > 0 and r["rule"]["stall_window"] > 0 and r["return_final"]]
    for limit in (0.0, budget):
        ok = [r for r in adaptive if max(r["delta"].values()) <= limit and r["speedup"] >= goal]
        if ok:
            return max(ok, key=lambda r: (r["speedup"], -max(r["delta"].values())))
    ok = [r for r in adaptive if max(r["delta"].values()) <= budget]
    if ok:
        return max(ok, key=lambda r: r["speedup"])
    return min(adaptive, key=lambda r: max(r["delta"].values()))


def real_methods(cap: int, reference: dict, default) -> dict[str, tuple]:
    """label -> (StopRule, return_final, solver) of the solves run for real: the reference, the default, and
    plain iteration against Anderson at a few relative tolerances (with the default's stagnation exit)."""
    from deqflow.solver_spec import StopRule

    methods = {"reference: " + reference["label"]: (StopRule(**reference["rule"]), False, "fixed_point"),
               "default: " + default.describe(): (default, True, "fixed_point")}
    for tol in ANDERSON_TOLS:
        rule = StopRule(tol=tol, stop_mode="rel", max_iter=cap, stall_window=default.stall_window,
                        stall_margin=default.stall_margin)
        for solver in ("fixed_point", "anderson"):
            methods[f"{solver}, {rule.describe()}"] = (rule, True, solver)
    return methods


def run_methods(problems: list[Problem], methods: dict[str, tuple]) -> dict[str, list[dict]]:
    """Every method run for real by a torch solver on each pair, the methods interleaved pair by pair (the
    machine's load drifts): per run the steps, the stop reason, the EPE and the measured solver time."""
    from training.deq.solvers import anderson, fixed_point_iter

    runs: dict[str, list[dict]] = {label: [] for label in methods}
    for problem in problems:
        fixed_point_iter(problem.f, problem.z0, max_iter=2, tol=0.0)  # warm-up: the first solve pays allocations
        for label, (rule, final, solver) in methods.items():
            run = fixed_point_iter if solver == "fixed_point" else anderson
            t0 = time.perf_counter()
            result = run(problem.f, problem.z0, max_iter=rule.max_iter, tol=rule.tol, stop_mode=rule.stop_mode,
                         return_final=final, stall_window=rule.stall_window, stall_margin=rule.stall_margin)
            seconds = time.perf_counter() - t0
            runs[label].append({"pair": problem.pair["name"], "set": problem.pair["set"],
                                "steps": int(result.stats.iterations), "reason": result.stats.reason,
                                "epe": problem.epe(result.z), "solver_s": seconds})
    return runs


def summarize_real(runs: list[dict], reference_s: float, reference_epe: dict) -> dict:
    sets = sorted({r["set"] for r in runs})
    epe = {s: float(np.mean([r["epe"] for r in runs if r["set"] == s])) for s in sets}
    total = sum(r["solver_s"] for r in runs)
    return {"runs": runs, "epe": epe, "delta": {s: epe[s] - reference_epe[s] for s in sets},
            "solver_s": total, "speedup": reference_s / total}


def measure(args) -> dict:
    import torch

    from deqflow.solver_spec import StopRule
    from training.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    pairs = load_pairs(args.synthetic, tuple(args.size))
    problems = [Problem(model, p) for p in pairs]
    traces = [trace_pair(p, args.cap) for p in problems]
    rows = score_rules(traces, [p["set"] for p in pairs], args.cap)
    chosen = choose_default(rows, args.budget, args.goal)
    ref = rows[0]
    ref_epe = {k[4:]: ref[k] for k in ref if k.startswith("epe_")}
    runs = run_methods(problems, real_methods(args.cap, ref, StopRule(**chosen["rule"])))
    ref_s = sum(r["solver_s"] for r in next(iter(runs.values())))
    real = {label: summarize_real(r, ref_s, ref_epe) for label, r in runs.items()}
    return {"checkpoint": str(args.checkpoint), "sha256": meta.get("sha256"), "threads": args.threads,
            "torch": torch.__version__, "budget_px": args.budget, "goal_speedup": args.goal,
            "pairs": [{"set": p["set"], "name": p["name"], "size": list(p["image1"].shape[:2])} for p in pairs],
            "per_step_s": [t["step_s"] for t in traces], "encode_s": [t["encode_s"] for t in traces],
            "epe_per_step": {p["name"]: t["epe"] for p, t in zip(pairs, traces)},
            "reference": {"label": ref["label"], "rule": ref["rule"], "epe": ref_epe, "measured_solver_s": ref_s},
            "rules": rows, "default": {"label": chosen["label"], "rule": chosen["rule"],
                                       "return_final": chosen["return_final"], "replayed": chosen,
                                       "measured": real["default: " + StopRule(**chosen["rule"]).describe()]},
            "real": real}


def _row(label: str, steps: list[int], sets: list[str], epe: dict, delta: dict, seconds: float, speedup: float) -> str:
    real = [s for s, name in zip(steps, sets) if name == "real"]
    synth = [s for s, name in zip(steps, sets) if name == "synthetic"]
    return (f"| {label} | {'/'.join(map(str, real))} | {np.mean(synth):.1f} | {seconds:.2f} | {speedup:.2f}x | "
            f"{epe['real']:.3f} ({delta['real']:+.3f}) | {epe['synthetic']:.3f} ({delta['synthetic']:+.3f}) |")


def _stalls(runs: list[dict]) -> str:
    """' (stalled on k of n pairs)' when the stagnation exit ended some of the solves."""
    k = sum(r["reason"] == "stalled" for r in runs)
    return f" (stalled on {k} of {len(runs)} pairs)" if k else ""


def _shown(row: dict) -> bool:
    rule = row["rule"]
    return row["return_final"] and (rule["tol"] == 0 or rule["stall_window"] in (0, 6)) and rule["stall_margin"] == 0.01


def write_markdown(result: dict, path: str) -> None:
    sets = [p["set"] for p in result["pairs"]]
    head = ["| rule | steps (real) | mean steps (synthetic) | solver s (all pairs) | speedup | EPE real px (delta) "
            "| EPE synthetic px (delta) |", "|---|---:|---:|---:|---:|---:|---:|"]
    replay = [_row(r["label"], r["steps"], sets, {k[4:]: r[k] for k in r if k.startswith("epe_")}, r["delta"],
                   r["solver_s"], r["speedup"]) for r in result["rules"] if r is result["rules"][0] or _shown(r)]
    d = result["default"]
    real = [_row(label + _stalls(a["runs"]), [r["steps"] for r in a["runs"]], sets, a["epe"], a["delta"],
                 a["solver_s"], a["speedup"]) for label, a in result["real"].items()]
    ok = max(d["measured"]["delta"].values()) <= result["budget_px"] and d["measured"]["speedup"] >= 3
    verdict = ("meets" if ok else "does not meet") + (f" the goal (within {result['budget_px']} px of the reference "
                                                      "on both sets in at least 3x less solver time)")
    lines = ["# Stop rule: accuracy against solver time", "",
             "Generated by `python scripts/bench_stop_rule.py` (see its docstring); "
             f"checkpoint `{Path(result['checkpoint']).name}`, torch {result['torch']}, {result['threads']} thread(s). "
             f"Pairs: the Middlebury motorcycle pair at full resolution and {sets.count('synthetic')} held-out "
             f"synthetic scenes (seed {HELD_OUT_SEED}).", "",
             f"Reference: {result['reference']['label']}. Default chosen: **{d['label']}**, which {verdict}.", "",
             "## Fixed-point rules, replayed on the recorded traces", "",
             "Solver time = steps x the measured time per step of each pair.", "", *head, *replay, "",
             "## Run for real (torch solvers, timed)", "", *head, *real, "", *usage_lines(d["rule"])]
    Path(path).write_text("\n".join(lines))


def usage_lines(rule: dict) -> list[str]:
    """How a model file gets the rule, and how to run the official protocol instead."""
    args = ", ".join(f"{k}={v!r}" for k, v in rule.items())
    return ["## Using the rule", "",
            "A deqflow checkpoint carries its rule in its metadata (`stop_rule`); `training.checkpoint.load_model` "
            "makes it the model's evaluation default, the torch backend and the split layout's host solver follow "
            "it, and a split export records it (`stall_window`, `stall_margin`). An ONNX Loop exits on its "
            "tolerance and trip count only (metadata `stop_exits`). To stamp a checkpoint (weights unchanged; "
            "its sha256 changes, so golden files made from it need regenerating):", "",
            "    PYTHONPATH=. python -c \"from deqflow.solver_spec import StopRule; "
            "from training.checkpoint import stamp_stop_rule; "
            f"stamp_stop_rule('{SHIPPED_CHECKPOINT}', '{SHIPPED_CHECKPOINT}', "
            f"StopRule({args}))\"", "",
            "The official protocol stays available: `--iters 60 --tol 0.001 --stop-mode abs --stall-window 0 "
            "--lowest-residual`, or `load_model(path, stop_rule=StopRule(tol=1e-3, stop_mode='abs', max_iter=60))` "
            "(the lowest-residual iterate is the model's `return_final=False` default).", ""]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown_only:
        result = json.loads(Path(args.output).read_text())
        write_markdown(result, args.markdown)
        return 0
    result = measure(args)
    Path(args.output).write_text(json.dumps(result, indent=1, default=float))
    write_markdown(result, args.markdown)
    d = result["default"]
    print(f"default: {d['label']}: speedup {d['measured']['speedup']:.2f}x, EPE delta {d['measured']['delta']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
