"""The report of `deqflow compare --trace`: JSON and Markdown like compare's, and a plot (deviation and
residual against iteration, both backends; matplotlib, optional)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from deqflow.extras import optional
from runtime.compare import TIERS
from runtime.trace import TraceComparison
from runtime.versions import version_info


def _fmt(x) -> str:
    if x is None:
        return "NaN/Inf"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _named(backend: dict) -> str:
    """'onnxruntime:cpu (split) mixed16': the label and, for an export, its precision."""
    precision = backend.get("precision")
    return f"{backend.get('label')}" + (f" {precision}" if precision else "")


@dataclass
class TraceReport:
    reference: dict
    candidate: dict
    inputs: dict
    iterations: int
    comparison: TraceComparison
    nodes: dict | None = None  # runtime.node_diff.locate's answer
    nodes_skipped: str = ""  # why no node comparison ran
    versions: dict = field(default_factory=version_info)

    @property
    def failure(self) -> str | None:
        return self.comparison.failure()

    @property
    def passed(self) -> bool:
        return self.failure is None

    def verdict(self) -> str:
        """One line: PASS, or FAIL and why, with the first iteration outside the tier and the node found."""
        c = self.comparison
        where = ""
        if self.nodes and self.nodes.get("location"):
            loc = self.nodes["location"]
            where = f"; first departing node: {loc['part']} (iteration {loc['iteration']}) {loc['node']} ({loc['op']})"
        first = c.first_outside
        head = "PASS" if self.passed else f"FAIL: {self.failure}"
        outside = f"; first outside the {c.tier} tier at iteration {first}" if first is not None else ""
        return f"{head}{outside}; fixed point: {c.fixed_point['verdict']}{where}"

    def as_dict(self) -> dict:
        c = self.comparison
        return {"passed": self.passed, "verdict": self.verdict(), "reference": self.reference,
                "candidate": self.candidate, "inputs": self.inputs, "iterations": self.iterations, "tier": c.tier,
                "tier_limits": TIERS[c.tier], "first_outside": c.first_outside, "fixed_point": c.fixed_point,
                "context": c.context, "per_iteration": c.rows, "nodes": self.nodes,
                "nodes_skipped": self.nodes_skipped or None, "versions": self.versions}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_markdown(self) -> str:
        c, fp = self.comparison, self.comparison.fixed_point
        lines = ["# deqflow compare --trace", "",
                 f"Reference **{_named(self.reference)}**, candidate **{_named(self.candidate)}**; "
                 f"inputs: {self.inputs.get('source')} ({self.inputs.get('size')}); {self.iterations} plain "
                 f"fixed-point iterations each, no early stop; tier {c.tier} ({json.dumps(TIERS[c.tier])}).", "",
                 f"**{self.verdict()}**", "",
                 f"Fixed point: **{fp['verdict']}** ({fp.get('why')}).", "",
                 "| iteration | within tier | flow max abs (px) | EPE mean | EPE p99 | flow_low max abs | "
                 "hidden rel | residual ref | residual cand |", "|---:|---|---|---|---|---|---|---|---|"]
        for r in c.rows:
            lines.append(f"| {r['iteration']} | {'yes' if r['within_tier'] else 'NO'} | {_fmt(r['flow_max_abs'])} | "
                         f"{_fmt(r['epe_mean'])} | {_fmt(r['epe_p99'])} | {_fmt(r['flow_low_max_abs'])} | "
                         f"{_fmt(r['hidden_rel'])} | {_fmt(r['residual_reference'])} | "
                         f"{_fmt(r['residual_candidate'])} |")
        if c.context:
            lines += ["", "Encoder outputs (iteration 0), relative deviation: " + ", ".join(
                f"{name} {_fmt(v['rel'])}" for name, v in c.context.items())]
        lines += ["", *nodes_markdown(self.nodes, self.nodes_skipped)]
        return "\n".join(lines) + "\n"


def nodes_markdown(nodes: dict | None, skipped: str) -> list[str]:
    """The node comparison's tables: per part, the first departing nodes and the largest errors."""
    if not nodes:
        return [f"Node comparison: not run ({skipped or 'no ONNX reference'})."]
    loc = nodes.get("location")
    lines = ["## Nodes", "", ("First departing node: " + (f"**{loc['part']}** at iteration {loc['iteration']}: "
                                                          f"`{loc['node']}` ({loc['op']})" if loc else
                                                          "none: no single node departs beyond its tolerance; the "
                                                          "deviation builds up over the iterations")), ""]
    for part, found in nodes["parts"].items():
        lines += [f"### {part} (iteration {found['iteration']}): {found['compared']} tensors compared, "
                  f"{found['departed']} departed, skipped {json.dumps(found['skipped'])}", "",
                  "| which | order | node | op | dtype | cand min / max | ref absmax | max abs error | "
                  "error / allowed | fp16 overflow |", "|---|---:|---|---|---|---|---|---|---|---|"]
        for which in ("first", "worst"):
            for r in found[which]:
                rng, overflow = r["candidate"], "yes" if r["fp16_overflow"] else ""
                lines.append(f"| {which} | {r['order']} | `{r['node']}` | {r['op']} | {r['dtype']} | "
                             f"{_fmt(rng['min'])} / {_fmt(rng['max'])} | {_fmt(r['reference']['absmax'])} | "
                             f"{_fmt(r['max_abs_error'])} | {_fmt(r['ratio'])} | {overflow} |")
        lines.append("")
    return lines


def plot_trace(report: TraceReport, path: Path) -> Path | None:
    """Deviation (flow max abs, EPE mean, hidden-state relative) and both residuals against iteration; None
    when matplotlib is not installed."""
    mpl = optional("matplotlib")
    if mpl is None:
        return None
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.comparison.rows
    its = [r["iteration"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("flow_max_abs", "flow max abs (px)"), ("epe_mean", "EPE mean (px)"),
                       ("hidden_rel", "hidden state, relative")):
        left.semilogy(its, [r[key] if r[key] else float("nan") for r in rows], marker=".", label=label)
    for key, label in (("residual_reference", report.reference.get("label")),
                       ("residual_candidate", report.candidate.get("label"))):
        right.semilogy(its, [r[key] if r[key] else float("nan") for r in rows], marker=".", label=label)
    first = report.comparison.first_outside
    if first is not None:
        left.axvline(first, color="red", linestyle="--", label=f"first outside {report.comparison.tier}")
    left.set(xlabel="iteration", title="candidate - reference")
    right.set(xlabel="iteration", title="residual ||f(z) - z||")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
