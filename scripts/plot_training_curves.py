"""Chain the held-out curves of consecutive training phases (JSON files written by scripts/training_curve.py)
into one picture of validation EPE against cumulative training CPU hours. Each phase's step 0 is the weights
the previous phase ended with, so a phase's CPU hours are shifted by the CPU hours of the phases before it.

    python scripts/plot_training_curves.py docs/training_curve_lowlr.json docs/training_curve_phase4.json \\
        --labels "phase 3" "phase 4" --output docs/training_curve_all.png

`--parallel` draws runs that share a start instead (the arms of a comparison, e.g. two model widths trained
from the same weights), each its own line on one CPU-hour axis from 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def chain(curves: list[dict], parallel: bool = False) -> tuple[list[float], list[list[tuple[float, dict]]]]:
    """Per phase, its start in cumulative CPU hours and its points as (cumulative CPU hours, point), sorted by
    step; a later phase's step 0 (the same weights as the previous phase's last point) is dropped. `parallel`:
    every curve starts at 0 and keeps its step 0."""
    offset, starts, out = 0.0, [], []
    for k, curve in enumerate(curves):
        rows = sorted(curve["points"], key=lambda r: r["step"])
        if any(r["cpu_hours"] is None for r in rows):
            raise SystemExit(f"error: curve {k + 1} has points without CPU hours; rerun training_curve.py "
                             "with --cpu-seconds-per-step")
        starts.append(offset)
        out.append([(offset + r["cpu_hours"], r) for r in rows if parallel or not (k and r["step"] == 0)])
        offset += 0.0 if parallel else rows[-1]["cpu_hours"]
    return starts, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", help="curve JSON files, in training order")
    ap.add_argument("--labels", nargs="+", default=None, help="one name per curve (default: phase 1, 2, ...)")
    ap.add_argument("--output", default="docs/training_curve_all.png")
    ap.add_argument("--parallel", action="store_true", help="runs from one start (arms), not consecutive phases")
    args = ap.parse_args()
    labels = args.labels or [f"phase {k + 1}" for k in range(len(args.curves))]
    if len(labels) != len(args.curves):
        raise SystemExit(f"error: {len(args.curves)} curves but {len(labels)} labels")
    curves = []
    for path in args.curves:
        try:
            curves.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: cannot read curve {path}: {exc}") from None
    sets, steps = curves[0]["sets"], curves[0]["steps"]
    starts, phases = chain(curves, args.parallel)
    lines = list(zip(labels, phases)) if args.parallel else [("DEQ-Flow", [p for phase in phases for p in phase])]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(sets), 3.8))
    FigureCanvasAgg(fig)
    for i, name in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), i + 1)
        for line, points in lines:
            for k in steps:
                ax.plot([x for x, _ in points], [r[name][str(k)] for _, r in points], marker="o", markersize=3,
                        label=f"{line}, {k} iterations")
        for label, start in zip(labels, starts) if not args.parallel else ():  # where each phase starts
            ax.axvline(start, color="grey", linewidth=0.6)
            ax.text(start, 0.02, f" {label}", fontsize=7, color="grey", transform=ax.get_xaxis_transform())
        dis = curves[0].get("baselines", {}).get(name, {}).get("dis_medium")
        if dis is not None:
            ax.axhline(dis, linestyle="--", color="red", label="DIS medium")
        ax.set_ylim(bottom=0)
        ax.set(xlabel="training CPU hours (from the first curve's start)", ylabel="EPE (px)",
               title=f"held-out {name}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
