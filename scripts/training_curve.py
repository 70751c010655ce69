"""Held-out real-photograph accuracy against training CPU hours: scores every weight snapshot of a run
(`<run>/snapshots/step_*.pth`, written by `deqflow train --snapshot-every`; `--snapshots snapshots_ema` for the
weight average of `--ema-decay`) and optionally the starting
weights, after a few iteration counts, on the held-out set of training/data/heldout_real.py. Resumable: steps
already in the JSON are skipped, so it can be rerun while the run goes on. Writes JSON and a picture next to it.

    python scripts/training_curve.py --run /work/runs/realistic-T-ft \\
        --start checkpoints/deqflow-T-synthetic.pth --output docs/training_curve.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.checkpoint import load_model
from training.heldout_eval import baseline_scores, heldout_sets, score_set


def _cpu_hours(meta: dict, step: int, seconds_per_step: float | None) -> float | None:
    """The run's CPU hours at this snapshot: 0 for the starting weights, recorded by the trainer, else
    estimated from the step."""
    if step == 0:
        return 0.0
    if meta.get("cpu_hours") is not None:
        return float(meta["cpu_hours"])
    return None if seconds_per_step is None else step * seconds_per_step / 3600.0


def score_checkpoint(path: Path, step: int, sets: dict, steps: tuple[int, ...],
                     seconds_per_step: float | None) -> dict:
    model, meta = load_model(path)
    model.configure_deq(f_solver="fixed_point")
    row = {"step": step, "checkpoint": str(path), "cpu_hours": _cpu_hours(meta, step, seconds_per_step)}
    for name, pairs in sets.items():
        scored = score_set(model, pairs, steps, f"step {step} {name}", baselines=())
        row[name] = dict(zip(map(str, steps), scored["deqflow"]["epe_per_pixel"]))
    return row


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["points"], key=lambda r: r["step"])
    use_cpu = all(r["cpu_hours"] is not None for r in rows)
    xs = [r["cpu_hours"] if use_cpu else r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(results["sets"]), figsize=(5 * len(results["sets"]), 3.6))
    for ax, name in zip(axes, results["sets"]):
        for k in results["steps"]:
            ax.plot(xs, [r[name][str(k)] for r in rows], marker="o", label=f"DEQ-Flow, {k} iterations")
        dis = results["baselines"].get(name, {}).get("dis_medium")
        if dis is not None:  # the yardstick; Farneback and zero flow (far above) are in the JSON
            ax.axhline(dis, linestyle="--", color="red", label="DIS medium")
        ax.set_ylim(bottom=0)
        ax.set(xlabel="training CPU hours" if use_cpu else "training step", ylabel="EPE (px)", title=name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder holding snapshots/")
    ap.add_argument("--snapshots", default="snapshots",
                    help="the snapshot folder inside the run: snapshots (raw weights) or snapshots_ema (the weight "
                         "average of deqflow train --ema-decay)")
    ap.add_argument("--start", default=None, help="the weights the run started from (scored as step 0)")
    ap.add_argument("--iterations", type=int, nargs="+", default=[16, 60])
    ap.add_argument("--cpu-seconds-per-step", type=float, default=None,
                    help="estimate CPU hours from the step for snapshots that do not record them")
    ap.add_argument("--output", default="docs/training_curve.json", help="JSON; the picture goes next to it (.png)")
    args = ap.parse_args()
    out = Path(args.output)
    steps = tuple(sorted(set(args.iterations)))
    sets = heldout_sets()
    results = json.loads(out.read_text()) if out.is_file() else {"run": args.run, "steps": list(steps),
                                                                  "sets": list(sets), "points": []}
    results.setdefault("baselines", baseline_scores(sets))
    done = {r["step"] for r in results["points"]}
    todo = [(0, Path(args.start))] if args.start else []
    todo += [(int(p.stem.split("_")[1]), p) for p in sorted(Path(args.run, args.snapshots).glob("step_*.pth"))]
    for step, path in todo:
        if step in done:
            continue
        results["points"].append(score_checkpoint(path, step, sets, steps, args.cpu_seconds_per_step))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))  # after every point: an interrupted run loses one point
        print(json.dumps(results["points"][-1]))
    if results["points"]:
        plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
