#!/usr/bin/env python
"""Warm start on a smooth synthetic video: iterations, time and accuracy of cold vs warm-started solves.

Two runtime paths (--backend): the checkpoint exported as the split layout, run by ONNX Runtime CPU with the
host solver (deqflow.host_solver, through the runtime's backend), or the checkpoint itself with the torch
solvers (training.deq.solvers); both stop on the same rule (deqflow.solver_spec). Each pair t -> t+1 is solved
- cold: hidden state 0, flow 0 (what every graph layout does), residual stop rule;
- reuse: from the fixed point of pair t-1 -> t as it is (DEQ fixed-point reuse; the chain runs through the video);
- forward: from that fixed point moved along its own flow (runtime.warm_start.forward_warp_state);
the warm starts with the flow-step exit (StopRule.for_warm_start: also stop once the flow step is below the
flow tolerance; `deqflow infer --warm-flow-tol`) and under the residual rule alone (`*_residual`, the runtime's
default), each with plain fixed-point
iteration and with Anderson acceleration. Accuracy is measured two ways: EPE against the synthetic ground
truth, and the distance (mean EPE) to the pair's own fixed point (a cold solve of --ref-iters steps), i.e.
whether warm and cold solve the same equation equally well. Per-iteration EPE curves show how many steps each
start needs to reach a given accuracy.

    python scripts/warm_start_video.py --checkpoint tests/fixtures/official/official-T-seed2.pth --label fixture
    python scripts/warm_start_video.py --checkpoint checkpoints/deqflow-T-synthetic.pth \
        --label deqflow-T-synthetic --tol 0.005 [--max-displacement 24 --label deqflow-T-synthetic-24px] \
        [--backend torch]

Writes docs/warm_start_<label>.json and .png, and rebuilds docs/warm_start.md and docs/warm_start_summary.md
(the compact table) from every docs/warm_start_*.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CURVE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
STARTS = ("cold", "reuse", "forward")
METHODS = ("fixed_point", "anderson")
BACKENDS = ("onnxruntime", "torch")
WARM_RULES = ("flow", "residual")
"""Warm starts with the flow-step exit too (opt-in) and under the residual rule alone (the runtime's default)."""
VARIANTS = ("cold", "reuse", "forward", "reuse_residual", "forward_residual")
EQUAL_EPE_PX = 0.02
"""'Equal accuracy': a warm solve's mean EPE vs ground truth at most this much above the cold solve's."""


def parse_args(argv=None):
    from deqflow.solver_spec import STOP_MODES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "tests" / "fixtures" / "official" / "official-T-seed2.pth"))
    p.add_argument("--label", default="fixture")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="onnxruntime: the split export run by the host solver; torch: the checkpoint and the torch "
                        "solvers (the label gets a '-torch' suffix)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--size", default="192x256")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--max-displacement", type=float, default=8.0)
    p.add_argument("--stop-mode", choices=STOP_MODES, default="rel")
    p.add_argument("--tol", type=float, default=5e-3)
    p.add_argument("--max-iter", type=int, default=40)
    p.add_argument("--warm-flow-tol", type=float, default=None,
                   help="flow tolerance of the warm starts' 'flow' rule (default: "
                        "deqflow.solver_spec.WARM_FLOW_TOL)")
    p.add_argument("--ref-iters", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-curves", action="store_true")
    p.add_argument("--docs", default=str(DOCS))
    args = p.parse_args(argv)
    if args.backend == "torch" and not args.label.endswith("-torch"):
        args.label += "-torch"
    return args


def open_backend(args, tmp: Path, h: int, w: int):
    """The runtime backend under test: the split export (ONNX Runtime CPU + host solver) or the torch model."""
    from runtime import create_backend

    if args.backend == "torch":
        return create_backend("torch", args.checkpoint, threads=args.threads)
    from export import export_onnx

    model = tmp / "m.onnx"
    export_onnx(args.checkpoint, model, layout="split", height=h, width=w, iters=args.max_iter)
    return create_backend("onnxruntime", model, threads=args.threads)


def run_settings(args) -> dict:
    """(method, warm rule) -> settings. Cold solves follow the residual rule either way; warm starts follow it
    with the flow-step exit as well (`flow`: `deqflow infer --warm-flow-tol`) or alone (`residual`: the
    runtime's default)."""
    from deqflow.solver_spec import WARM_FLOW_TOL
    from runtime import SolveOverrides

    flow_tol = WARM_FLOW_TOL if args.warm_flow_tol is None else args.warm_flow_tol
    out = {}
    for method in METHODS:
        for rule, warm_tol in (("flow", flow_tol), ("residual", 0.0)):
            out[method, rule] = SolveOverrides(max_iter=args.max_iter, tol=args.tol, stop_mode=args.stop_mode,
                                               method=method, warm_flow_tol=warm_tol)
    return out


def solve_pair(be, batch, gt, ref, ref_state, settings, state) -> tuple[dict, object]:
    """One solve of a pair with `settings` from `state` (None: cold): its record and its fixed point."""
    from deqflow.metrics import flow_metrics

    be.configure(settings)
    r = be.infer(batch.image1, batch.image2, state=state)
    flow = batch.unpad(r.flow)[0]
    rec = {"iterations": r.iterations, "seconds": r.seconds, "warm": state is not None,
           "solve_seconds": r.timings.get("solve_s", r.seconds), "stop_reason": r.stop_reason,
           "epe_gt": flow_metrics(flow, gt)["epe"], "to_fixed_point": flow_metrics(flow, ref)["epe"],
           "final_residual": float(r.residual[0]), "final_rel_residual": float(r.residual_rel[0]),
           "start_to_fixed_point": start_distance(state, ref_state)}
    return rec, r.state


def curve(be, batch, gt, previous, args) -> dict:
    """EPE vs GT after each of CURVE_STEPS plain steps, per start (one trajectory per start: each solve
    continues from the previous k's state, so the curve costs max(CURVE_STEPS) steps, not their sum)."""
    from deqflow.metrics import flow_metrics
    from runtime import SolveOverrides

    out = {}
    for start in STARTS:
        state, done, epes = warm_state(previous, start), 0, []
        for k in CURVE_STEPS:
            be.configure(SolveOverrides(max_iter=k - done, tol=0.0, stop_mode=args.stop_mode, method="fixed_point",
                                        warm_flow_tol=0.0))
            r = be.infer(batch.image1, batch.image2, state=state)
            state, done = r.state, k
            epes.append(flow_metrics(batch.unpad(r.flow)[0], gt)["epe"])
        out[start] = epes
    return out


def run_pairs(be, pairs, args) -> list[dict]:
    """Every pair solved cold, and warm from each start under each warm rule, with each method."""
    from deqflow.metrics import flow_metrics
    from runtime import SolveOverrides, prepare

    settings, frames, states = run_settings(args), [], {}
    for i, (a, b, gt) in enumerate(pairs):
        batch = prepare(a, b)
        be.configure(SolveOverrides(max_iter=args.ref_iters, tol=0.0, stop_mode=args.stop_mode, method="fixed_point"))
        ref_result = be.infer(batch.image1, batch.image2)
        ref = batch.unpad(ref_result.flow)[0]
        rec = {"pair": i, "gt_magnitude": float(np.linalg.norm(gt, axis=-1).mean()),
               "reference_epe_gt": flow_metrics(ref, gt)["epe"]}
        order = STARTS[i % 3:] + STARTS[:i % 3]  # rotate, so no start always runs first (timing bias)
        for method in METHODS:
            for start in order:
                for rule in (("flow",) if start == "cold" else WARM_RULES):
                    key = variant_key(start, rule, method)
                    state = warm_state(states.get(key), start)
                    rec[key], states[key] = solve_pair(be, batch, gt, ref, ref_result.state,
                                                       settings[method, rule], state)
        if not args.no_curves and i > 0:
            rec["curve"] = curve(be, batch, gt, frames[-1]["_state"], args)
        rec["_state"] = states["cold_fixed_point"]  # curves start from the same (cold-solved) previous state
        frames.append(rec)
        print(f"pair {i}: iterations (fixed point/anderson) " + ", ".join(
            f"{v} {rec[f'{v}_fixed_point']['iterations']}/{rec[f'{v}_anderson']['iterations']}"
            for v in VARIANTS) + "; EPE gt " + ", ".join(
            f"{v} {rec[f'{v}_fixed_point']['epe_gt']:.3f}" for v in VARIANTS), flush=True)
    for rec in frames:
        rec.pop("_state")
    return frames


def summarise(frames: list[dict], no_curves: bool) -> dict:
    """Means over pairs 1.. (pair 0 has no previous fixed point: every start is cold)."""
    later = frames[1:]

    def mean(key, field):
        return float(np.mean([r[key][field] for r in later]))

    summary = {}
    for method in METHODS:
        c = f"cold_{method}"
        summary[method] = {"iterations_cold": mean(c, "iterations"), "seconds_cold": mean(c, "seconds"),
                           "epe_gt_cold": mean(c, "epe_gt"), "to_fixed_point_cold": mean(c, "to_fixed_point"),
                           "start_to_fixed_point_cold": start_mean(later, c)}
        for variant in VARIANTS[1:]:
            wm = f"{variant}_{method}"
            epe = mean(wm, "epe_gt")
            summary[method][variant] = {
                "iterations": mean(wm, "iterations"), "iteration_ratio": mean(wm, "iterations") / mean(c, "iterations"),
                "seconds": mean(wm, "seconds"), "time_ratio": mean(wm, "seconds") / mean(c, "seconds"),
                "solve_time_ratio": mean(wm, "solve_seconds") / mean(c, "solve_seconds"),
                "epe_gt": epe, "to_fixed_point": mean(wm, "to_fixed_point"),
                "equal_accuracy": bool(epe <= summary[method]["epe_gt_cold"] + EQUAL_EPE_PX),
                "start_to_fixed_point": start_mean(later, wm)}
    if not no_curves:
        curves = {s: np.mean([r["curve"][s] for r in later], axis=0).tolist() for s in STARTS}
        target = summary["fixed_point"]["epe_gt_cold"]
        reach = {s: next((k for k, e in zip(CURVE_STEPS, curves[s]) if e <= target + EQUAL_EPE_PX), None)
                 for s in curves}
        summary["curves"] = {"steps": list(CURVE_STEPS), **curves,
                             "steps_to_cold_rule_accuracy_plus_0.02px": reach}
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    from deqflow.shapes import parse_size
    from runtime.versions import version_info
    from training.data.synthetic import make_synthetic_video

    h, w = parse_size(args.size)
    video = make_synthetic_video(args.frames, (h, w), seed=args.seed, max_displacement=args.max_displacement)
    pairs = [(video.frames[i], video.frames[i + 1], video.flows[i]) for i in range(args.frames - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        be = open_backend(args, Path(tmp), h, w)
        be.configure(run_settings(args)["fixed_point", "flow"])
        warm_rule = be.resolved.for_start(warm=True).stop.describe()
        warm_flow_tol = float(be.resolved.stop.warm_flow_tol)
        cold_rule = be.resolved.for_start(warm=False).stop.describe()
        frames = run_pairs(be, pairs, args)
        backend = be.label + (" (split) + host solver" if args.backend == "onnxruntime" else " + torch solvers")
        be.close()
    summary = summarise(frames, args.no_curves)
    out = {"label": args.label, "checkpoint": Path(args.checkpoint).name, "script": "scripts/warm_start_video.py",
           "argv": sys.argv[1:], "backend": backend, "backend_name": args.backend, "size": [h, w],
           "frames": args.frames, "seed": args.seed, "max_displacement": args.max_displacement,
           "rule": {"stop_mode": args.stop_mode, "tol": args.tol, "max_iter": args.max_iter},
           "cold_rule": cold_rule, "warm_rule": warm_rule, "warm_flow_tol": warm_flow_tol,
           "equal_accuracy_px": EQUAL_EPE_PX,
           "ref_iters": args.ref_iters, "summary": summary, "pairs": frames, "versions": version_info()}
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"warm_start_{args.label}.json").write_text(json.dumps(out, indent=2))
    plot(out, docs / f"warm_start_{args.label}.png")
    paths = sorted(docs.glob("warm_start_*.json"))
    (docs / "warm_start.md").write_text(markdown(paths))
    (docs / "warm_start_summary.md").write_text(summary_table(paths))
    report(args.label, summary)
    return 0


def report(label: str, summary: dict) -> None:
    s = summary["fixed_point"]
    for variant in VARIANTS[1:]:
        w = s[variant]
        print(f"{label} ({variant}): warm/cold iterations {w['iterations']:.2f}/{s['iterations_cold']:.2f} = "
              f"{w['iteration_ratio']:.2f}x, time {w['solve_time_ratio']:.2f}x (solver loop) / {w['time_ratio']:.2f}x "
              f"(whole call), EPE gt {w['epe_gt']:.3f} vs {s['epe_gt_cold']:.3f}, distance to the fixed point "
              f"{w['to_fixed_point']:.3f} vs {s['to_fixed_point_cold']:.3f}")


def variant_key(start: str, rule: str, method: str) -> str:
    """Record key of a solve: '<start>_<method>' with the flow-step exit, '<start>_residual_<method>' for a warm
    start under the residual rule alone."""
    return f"{start}_{method}" if rule == "flow" else f"{start}_{rule}_{method}"


def solve_ratio(w: dict, d: dict) -> str:
    return f"{w['solve_time_ratio']:.2f}x" if d.get("backend_name", "onnxruntime") == "onnxruntime" else "-"


def start_mean(pairs, key) -> dict:
    return {k: float(np.mean([p[key]["start_to_fixed_point"][k] for p in pairs]))
            for k in ("hidden_rel", "flow_low_mean_abs")}


def start_distance(state, fixed_point) -> dict:
    """How far a starting state is from the pair's own fixed point: relative distance of the hidden state
    and mean |flow difference| on the 1/8 grid (in 1/8-grid pixels). A cold start is hidden 0, flow 0."""
    h_ref, f_ref = np.asarray(fixed_point.hidden, np.float64), np.asarray(fixed_point.flow_low, np.float64)
    if state is None:
        h0, f0 = np.zeros_like(h_ref), np.zeros_like(f_ref)
    else:
        h0, f0 = np.asarray(state.hidden, np.float64), np.asarray(state.flow_low, np.float64)
    return {"hidden_rel": float(np.linalg.norm(h0 - h_ref) / max(np.linalg.norm(h_ref), 1e-12)),
            "flow_low_mean_abs": float(np.abs(f0 - f_ref).mean())}


def warm_state(previous, start: str):
    """The initial state of a pair: none (cold), the previous pair's fixed point as it is (reuse, the
    runtime's default), or moved along its own flow (forward)."""
    from runtime.warm_start import forward_warp_state

    if start == "cold" or previous is None:
        return None
    return forward_warp_state(previous) if start == "forward" else previous


def plot(out: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = out["pairs"]
    has_curves = "curves" in out["summary"]
    fig = Figure(figsize=(11 if has_curves else 6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if has_curves else 1, 1)
    x = [p["pair"] for p in pairs]
    for method, marker in (("fixed_point", "o"), ("anderson", "s")):
        for variant, line in zip(("cold", "reuse", "forward", "reuse_residual"), ("-", "--", ":", "-.")):
            key = f"{variant}_{method}"
            ax.plot(x, [p[key]["iterations"] for p in pairs], marker + line, label=f"{variant}, {method}")
    r = out["rule"]
    ax.set_xlabel("frame pair")
    ax.set_ylabel("solver iterations")
    ax.set_title(f"{out['label']}\ncold: {r['stop_mode']} < {r['tol']:g}; warm: + flow step < "
                 f"{out['warm_flow_tol']:g} px (or residual rule only)", fontsize=8)
    ax.legend(fontsize=7)
    if has_curves:
        c = out["summary"]["curves"]
        ax2 = fig.add_subplot(1, 2, 2)
        for start, line in zip(STARTS, ("o-", "o--", "o:")):
            ax2.plot(c["steps"], c[start], line, label=f"{start} start")
        ax2.set_xlabel("fixed-point iterations")
        ax2.set_ylabel("EPE vs ground truth (px), mean over pairs 1..")
        ax2.set_title("accuracy per iteration")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def describe_variant(variant: str, d: dict) -> str:
    """'reuse, + flow step < 0.015 px' (with the flow-step exit) or 'reuse, residual rule only'."""
    start, _, rule = variant.partition("_")
    return f"{start}, residual rule only" if rule else f"{start}, + flow step < {d['warm_flow_tol']:g} px"


def markdown_intro() -> list[str]:
    """The page's title, how to read the table, and the table's header."""
    return ["# Warm start on a smooth synthetic video", "",
             "Generated by `scripts/warm_start_video.py` (see its docstring); means over pairs 1.. (pair 0 has no "
             "previous fixed point). Backends: ONNX Runtime CPU, split layout, host solver (`onnxruntime`), and the "
             "checkpoint with the torch solvers (`torch`, runs labelled `-torch`). Starts: `reuse` = the "
             "previous pair's fixed point as it is (the runtime's default), `forward` = moved along its own flow "
             "first (`runtime.warm_start.forward_warp_state`). Warm rules: the residual rule alone (the runtime's "
             "default, as for cold solves) and with the flow-step exit (`StopRule.for_warm_start`: also stop once "
             "the flow step -- mean |delta flow| of the last step on the 1/8 grid -- is below "
             "the tolerance in the row, px; `deqflow infer --warm-start --warm-flow-tol PX`). Cold "
             f"solves always follow the residual rule. Equal accuracy: warm EPE vs GT at most {EQUAL_EPE_PX} px "
             "above the cold solve's (marked yes/no). Time ratios: the host solver loop alone (onnxruntime only; "
             "'-' for torch, whose solver runs inside the model call) and the whole infer call (the encoder, which "
             "runs once per pair either way, dominates it at this size and makes it noisy; the machine was shared, "
             "so treat times as rough). 'to fixed point' = mean EPE between "
             "the result and the pair's own fixed point (cold solve of many steps).", "",
             "Reading it (runs of December 2026): the flow-step exit stops warm starts at 0.36-0.51x the cold "
             "iterations and costs at most 0.005 px over the residual rule for reuse starts (0.013 px for forward "
             "starts on the 24 px video) -- the residual of the stacked (hidden state, "
             "flow) vector kept those solves going after the flow had settled. What keeps most warm starts from the "
             "cold accuracy is not the stop rule: the trained model's fixed point is less accurate than the "
             "early-stopped cold iterate (the 'own fixed points' lines below), and a warm start begins next to it "
             "and stays there, whatever its rule (warm starts under the residual rule alone lose as much). The "
             "target (at most 0.5x the cold iterations within 0.02 px of the cold EPE) is met by the forward start "
             "with plain iteration on the 8 px video only (0.47x, +0.017 px), by both backends.", "",
             "| run | backend | checkpoint | size, frames | cold stop rule | method | start, warm rule "
             "| iterations cold -> warm (ratio) | time ratio: solver loop / whole call | EPE vs GT cold / warm (px) "
             "| equal accuracy | to fixed point cold / warm (px) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def markdown(paths) -> str:
    lines = markdown_intro()
    docs = [json.loads(Path(p).read_text()) for p in paths]
    for d in docs:
        for method in METHODS:
            s = d["summary"][method]
            for variant in VARIANTS[1:]:
                w = s[variant]
                lines.append(f"| {d['label']} | {d.get('backend_name', 'onnxruntime')} | {d['checkpoint']} | "
                             f"{d['size'][0]}x{d['size'][1]}, {d['frames']} | "
                             f"{d['cold_rule']} | {method} | "
                             f"{describe_variant(variant, d)} | "
                             f"{s['iterations_cold']:.1f} -> {w['iterations']:.1f} ({w['iteration_ratio']:.2f}x) | "
                             f"{solve_ratio(w, d)} / {w['time_ratio']:.2f}x | {s['epe_gt_cold']:.3f} / "
                             f"{w['epe_gt']:.3f} | {'yes' if w['equal_accuracy'] else 'no'} | "
                             f"{s['to_fixed_point_cold']:.3f} / {w['to_fixed_point']:.3f} |")
    for d in docs:
        ref = float(np.mean([p["reference_epe_gt"] for p in d["pairs"][1:]]))
        lines += ["", f"{d['label']}: EPE vs GT of the pairs' own fixed points ({d['ref_iters']} cold steps) "
                  f"{ref:.3f} px, of the cold rule's results {d['summary']['fixed_point']['epe_gt_cold']:.3f} px."]
    for d in docs:
        s = d["summary"]["fixed_point"]
        parts = [("cold", s["start_to_fixed_point_cold"])] + [(st, s[st]["start_to_fixed_point"]) for st in STARTS[1:]]
        lines += ["", f"{d['label']}: distance of the starting state from the pair's own fixed point (fixed "
                  "point solver; hidden state relative / mean |flow| difference on the 1/8 grid): " + "; ".join(
                      f"{st} {v['hidden_rel']:.2f} / {v['flow_low_mean_abs']:.2f}" for st, v in parts) + "."]
    for d in docs:
        if "curves" in d["summary"]:
            c = d["summary"]["curves"]
            parts = "; ".join(f"{start} " + ", ".join(f"{v:.2f}" for v in c[start]) for start in STARTS)
            lines += ["", f"{d['label']}: mean EPE vs GT after k iterations (k = {', '.join(map(str, c['steps']))}): "
                      f"{parts}. Steps to reach the cold rule's accuracy + {EQUAL_EPE_PX} px: "
                      f"{json.dumps(c['steps_to_cold_rule_accuracy_plus_0.02px'])}."]
    return "\n".join(lines) + "\n"


def summary_table(paths) -> str:
    """The compact table for the README: the trained checkpoint's runs; one row for both backends where they
    agree (the same iterations and EPE to the printed digits), one per backend otherwise."""
    rows: dict[tuple, dict[str, str]] = {}
    for d in (json.loads(Path(p).read_text()) for p in paths):
        if d["checkpoint"] != SHIPPED_CHECKPOINT.name:
            continue
        video = f"{d['size'][0]}x{d['size'][1]}, up to {d['max_displacement']:g} px"
        for method in METHODS:
            s = d["summary"][method]
            for variant in ("reuse", "forward", "reuse_residual"):
                w = s[variant]
                key = (d["max_displacement"], video, METHODS.index(method), method, VARIANTS.index(variant),
                       describe_variant(variant, d))
                rows.setdefault(key, {})[d.get("backend_name", "onnxruntime")] = (
                    f"{s['iterations_cold']:.1f} | {w['iterations']:.1f} | {w['iteration_ratio']:.2f}x | "
                    f"{s['epe_gt_cold']:.3f} / {w['epe_gt']:.3f} | {'yes' if w['equal_accuracy'] else 'no'}")
    lines = ["| video | backend | solver | start, warm rule | cold iterations | warm iterations | ratio "
             "| EPE cold / warm (px) | equal accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    names = {"onnxruntime": "split ONNX + host solver", "torch": "torch"}
    for key in sorted(rows):
        cells = rows[key]
        order = sorted(cells, key=list(names).index)
        groups = [(" and ".join(names[b] for b in order), cells[order[0]])] if len(
            set(cells.values())) == 1 else [(names[b], cells[b]) for b in order]
        lines += [f"| {key[1]} | {backend} | {key[3]} | {key[5]} | {v} |" for backend, v in groups]
    note = (f"Means over pairs 1-8 of 10-frame synthetic videos, {SHIPPED_CHECKPOINT} "
            "(scripts/warm_start_video.py; details in docs/warm_start.md). Cold starts: rel residual < 0.005 (or "
            "stalled over 6, cap 40). Warm starts: the previous pair's fixed point (`reuse`, the runtime's default) "
            "or that moved along its flow (`forward`), stopping on the same rule or also once the flow step is "
            "below the tolerance in the row on the 1/8 grid (`--warm-flow-tol PX`). Equal accuracy: warm EPE vs "
            f"ground truth within {EQUAL_EPE_PX} px of the cold solve's.")
    return "\n".join([note, "", *lines]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
