"""`deqflow compare --trace`: the per-iteration trajectories of a split export and the reference, and the
first diverging node (runtime.trace, runtime.node_diff, runtime.trace_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deqflow.errors import InputError


def add_trace_arguments(p) -> None:
    from deqflow.cli_args import count_or_zero

    g = p.add_argument_group("trajectory comparison (--trace)")
    g.add_argument("--trace", action="store_true",
                   help="run the reference and one split-export candidate for the same fixed number of "
                        "iterations (--iters; no early stop) on the first pair and report per iteration the "
                        "candidate's deviation, the first iteration outside the tier, whether both reach the same "
                        "fixed point, and the first diverging node (trace.json, trace.md, trace.png in --output)")
    g.add_argument("--node-reference", default=None, metavar="ONNX",
                   help="--trace: the float32 split export of the reference checkpoint, run node by node against "
                        "the candidate's graphs (default: the reference when it is an ONNX split export)")
    g.add_argument("--nodes", type=count_or_zero, default=5,
                   help="--trace: departing / worst nodes listed per graph; 0 skips the node comparison")


def step_parts_of(backend) -> Any:
    """The StepParts the host solver drives for `backend`: a split export's, or the torch model's."""
    parts = getattr(backend, "parts", None)
    if parts is None and hasattr(backend, "step_parts"):
        parts = backend.step_parts()
    if parts is None:
        raise InputError(f"compare --trace steps split exports and the torch reference; {backend.label} is neither "
                         "(export with --layout split)")
    return parts


def onnx_split(backend) -> dict[str, Path] | None:
    file = getattr(backend, "file", None)
    return dict(file.parts) if file is not None and file.kind == "onnx" and file.is_split else None


def node_reference(args, reference) -> dict[str, Path] | None:
    """The float32 split ONNX graphs the candidate's are compared with node by node."""
    from runtime.modelfile import open_model_file

    if not args.node_reference:
        return onnx_split(reference)
    file = open_model_file(args.node_reference)
    if file.kind != "onnx" or not file.is_split:
        raise InputError(f"--node-reference must be a split ONNX export, got a {file.layout or file.kind} "
                         f"({args.node_reference})")
    return dict(file.parts)


def localise(args, reference, candidate, batch, trajectory, comparison) -> tuple[dict | None, str]:
    """runtime.node_diff.locate at the first iteration outside the tier (else the one whose hidden state
    deviates most), or None and why not."""
    from runtime.node_diff import locate

    if args.nodes == 0:
        return None, "--nodes 0"
    ref_parts = node_reference(args, reference)
    if ref_parts is None:
        return None, ("no float32 ONNX split export to run node by node: pass --node-reference (the float32 split "
                      "export of the reference checkpoint)")
    cand_parts = onnx_split(candidate)
    if cand_parts is None:
        return None, f"{candidate.label} has no ONNX graphs to mark (compare the ONNX export an engine was built from)"
    iteration = comparison.first_outside
    if iteration is None:
        rows = comparison.rows
        iteration = max(rows, key=lambda r: r["hidden_rel"] or 0.0)["iteration"]
    runner = "tensorrt" if candidate.name == "tensorrt" else "onnxruntime"
    found = locate(ref_parts, cand_parts, batch.image1, batch.image2, trajectory.states, iteration,
                   comparison.tier, runner=runner, top=args.nodes)
    return found, ""


def check_trace_args(args, specs: list) -> None:
    if len(specs) != 1:
        raise InputError("compare --trace compares one candidate: give exactly one --candidate (a split export)")
    if args.golden or args.save_golden:
        raise InputError("compare --trace runs both solves; it takes no --golden / --save-golden")
    if not (args.reference or args.checkpoint):
        raise InputError("give a reference: --checkpoint CKPT (torch float32) or --reference SPEC (a float32 split "
                         "export)")


def run_trace(args, spec: tuple, settings, pair: tuple, label: str) -> int:
    """Both trajectories on `pair`, the comparison, the node localisation, the reports; the exit status."""
    from deqflow.fileio import save_results
    from runtime.backends import parse_spec
    from runtime.commands.common import spec_choice
    from runtime.compare import auto_tier
    from runtime.preprocessing import prepare
    from runtime.trace import compare_trajectories, record
    from runtime.trace_report import TraceReport, plot_trace

    if not settings.max_iter:
        raise InputError("compare --trace needs an iteration count: pass --iters N")
    batch = prepare(*pair, args.pad_mode)
    ref_spec = parse_spec(args.reference) if args.reference else ("torch", {}, args.checkpoint)
    reference = spec_choice(ref_spec, args, settings).open()
    candidate = None
    try:
        candidate = spec_choice(spec, args, settings).open()
        tier = auto_tier(candidate) if args.tier == "auto" else args.tier
        ref_t = record(step_parts_of(reference), batch.image1, batch.image2, settings.max_iter, reference.label)
        cand_t = record(step_parts_of(candidate), batch.image1, batch.image2, settings.max_iter, candidate.label)
        comparison = compare_trajectories(ref_t, cand_t, tier)
        nodes, why = localise(args, reference, candidate, batch, ref_t, comparison)
        report = TraceReport(reference={"label": reference.label, **reference.describe()},
                             candidate={"label": candidate.label, **candidate.describe()},
                             inputs={"source": label, "size": list(batch.image1.shape[2:])},
                             iterations=int(settings.max_iter), comparison=comparison, nodes=nodes, nodes_skipped=why)
    finally:
        for b in (reference, candidate):
            if b is not None:
                b.close()
    out = Path(args.output)
    save_results(out / "trace.json", report.to_json().encode())
    save_results(out / "trace.md", report.to_markdown().encode())
    plot = plot_trace(report, out / "trace.png")
    print(f"wrote {out / 'trace.json'}, {out / 'trace.md'}" + (f" and {plot}" if plot else " (no plot: matplotlib "
                                                                                       "is not installed)"))
    print(f"compare --trace: {report.verdict()}")
    return 0 if report.passed else 1
