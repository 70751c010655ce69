"""`deqflow compare`: candidate backends against one float32 reference; JSON + Markdown report, golden files."""

from __future__ import annotations

HELP = ("compare backends (onnxruntime, tensorrt, ...) against one float32 reference on real image pairs: "
        "max abs error, EPE mean/p99, Fl-all disagreement, NaN/Inf, pass/fail per tolerance tier")


def add_arguments(p) -> None:
    from deqflow.cli_args import add_size_arg, count
    from runtime.commands.common import (
        add_backend_options,
        add_candidate_arg,
        add_golden_inputs_arg,
        add_inputs_arg,
        add_solver_args,
    )

    p.add_argument("--reference", default=None, help="BACKEND[:OPTION]=PATH (default: torch=<--checkpoint>)")
    p.add_argument("--checkpoint", default=None, help="checkpoint of the default torch reference (default: none)")
    add_candidate_arg(p, "the backends compared with the reference (default: none)")
    p.add_argument("--golden", default=None, help="use this golden .npz (inputs + reference outputs) as reference "
                   "(default: none)")
    p.add_argument("--save-golden", default=None, help="save the inputs and reference outputs to this .npz "
                   "(default: none)")
    add_inputs_arg(p)
    add_golden_inputs_arg(p)
    add_size_arg(p, "of the generated inputs (default: the first export's size)")
    p.add_argument("--pairs", type=count, default=2, help="number of generated pairs (real: 1-4)")
    p.add_argument("--tier", choices=["auto", "float32", "float16"], default="auto",
                   help="tolerance tier (auto: float16 for mixed16 exports / fp16 engines)")
    p.add_argument("--output", default="compare", help="folder for compare.json and compare.md")
    p.add_argument("--pad-mode", choices=["sintel", "kitti"], default="sintel", help="how inputs are padded")
    p.add_argument("--allow-skip", action="store_true",
                   help="exit 0 even when a candidate could not be loaded (not installed, a bad model file) as long "
                        "as another candidate was compared and passed; by default a skipped candidate fails the run")
    add_solver_args(p)
    add_backend_options(p)
    from deqflow.cli_args import add_memory_args

    add_memory_args(p.add_argument_group("memory"), "the reference and every candidate are planned at the pairs' size")
    from runtime.commands.compare_trace import add_trace_arguments

    add_trace_arguments(p)


def run(args) -> int:
    from pathlib import Path

    from deqflow.errors import DeqflowError, InputError
    from deqflow.fileio import check_output_dir, check_output_file, save_results
    from runtime.backends import parse_spec
    from runtime.commands.common import plan_run, spec_choice
    from runtime.compare import compare, load_golden

    check_output_dir(args.output)
    if args.trace:
        return trace(args)
    if args.save_golden:
        check_output_file(args.save_golden, "--save-golden", "golden.npz")
    specs = [parse_spec(s) for s in args.candidate]
    golden = load_golden(args.golden) if args.golden else None
    if golden is None and not (args.reference or args.checkpoint):
        raise InputError("give a reference: --checkpoint CKPT (torch float32), --reference SPEC or --golden FILE")
    if not specs and not args.save_golden:
        raise InputError("nothing to compare: add --candidate SPEC (or --save-golden FILE to only save the reference)")
    settings = resolved_settings(args, specs, golden)
    pairs, label = input_pairs(args, specs, golden)
    size = pairs[0][0].shape[:2]
    reference = None
    if golden is None:
        spec = parse_spec(args.reference) if args.reference else ("torch", {}, args.checkpoint)
        choice = spec_choice(spec, args, settings)
        plan_run(choice, size, args)
        reference = choice.open()
    candidates, skipped = [], []
    try:
        for spec in specs:
            choice = spec_choice(spec, args, settings)
            try:
                plan_run(choice, size, args)
                candidates.append(choice.open())
            except DeqflowError as exc:  # a candidate that cannot be loaded is reported, and fails the gate
                skipped.append({"label": choice.label, "spec": f"{choice.name}={choice.model}", "passed": False,
                                "skipped": str(exc), "error": f"skipped: {exc}"})
        golden = save_reference(args, reference, pairs, settings, label) or golden
        report = compare(reference, candidates, pairs, golden=golden, tier=args.tier, pad_mode=args.pad_mode,
                         settings=settings.as_dict(), inputs_label=label)
        if reference is not None:
            report.reference = {"label": reference.label, **reference.describe()}
    finally:
        for b in [reference, *candidates]:
            if b is not None:
                b.close()
    report.candidates += skipped
    report.allow_skip = args.allow_skip
    out = Path(args.output)
    save_results(out / "compare.json", report.to_json().encode())
    save_results(out / "compare.md", report.to_markdown().encode())
    print_verdicts(report)
    print(f"wrote {out / 'compare.json'} and {out / 'compare.md'}")
    print(f"compare: {report.verdict()}")  # last, where a CI log is read
    return 0 if report.passed else 1


def trace(args) -> int:
    """--trace: the candidate's trajectory against the reference's on the first pair (compare_trace)."""
    from runtime.backends import parse_spec
    from runtime.commands.compare_trace import check_trace_args, run_trace

    specs = [parse_spec(s) for s in args.candidate]
    check_trace_args(args, specs)
    settings = resolved_settings(args, specs, None)
    pairs, label = input_pairs(args, specs, None)
    return run_trace(args, specs[0], settings, pairs[0], label)


def save_reference(args, reference, pairs, settings, label: str):
    """--save-golden: the reference's outputs on `pairs` saved as a golden file, returned as the reference."""
    from runtime.compare import Golden, run_outputs, save_golden

    if not args.save_golden or reference is None:
        return None
    outs, _ = run_outputs(reference, pairs, args.pad_mode)
    meta = {"label": reference.label, "reference": reference.describe(),
            "settings": reference.solve_dict(), "pad_mode": args.pad_mode, "inputs": label}
    save_golden(args.save_golden, pairs, outs, meta)
    print(f"saved golden inputs/outputs to {args.save_golden}")
    return Golden(pairs, outs, {**meta, "label": reference.label})


def resolved_settings(args, specs: list, golden):
    """The solver flags, with what they leave unset taken from the golden file or the first candidate's export."""
    from dataclasses import replace

    from runtime.commands.common import model_defaults, settings_from_args

    settings = settings_from_args(args)
    baked = model_defaults([path for _, _, path in specs])
    if golden is not None and golden.meta.get("settings"):
        gs = golden.meta["settings"]
        baked = {"max_iter": gs.get("max_iter"), "tol": gs.get("tol"), "stop_mode": gs.get("stop_mode")}
    if baked:
        settings = replace(settings, max_iter=baked["max_iter"] if settings.max_iter is None else settings.max_iter,
                           tol=baked["tol"] if settings.tol is None else settings.tol,
                           stop_mode=settings.stop_mode or baked["stop_mode"] or "abs",
                           method=settings.method or "fixed_point")
    return settings


def input_pairs(args, specs: list, golden) -> tuple[list, str]:
    """The image pairs to compare on and their description: the golden file's, a .npz's, or generated."""
    from runtime.commands.common import default_size
    from runtime.compare import load_golden
    from runtime.preprocessing import random_pair, real_pairs

    if golden is not None:
        return golden.pairs, f"golden {args.golden}"
    if args.inputs.endswith(".npz"):
        return load_golden(args.inputs).pairs, f"inputs of {args.inputs}"
    size = args.size or default_size([path for _, _, path in specs])
    if args.inputs == "real":
        return real_pairs(size, args.pairs), "real (Middlebury 2014 motorcycle, resized/cropped)"
    return [random_pair(size, seed=i) for i in range(args.pairs)], "random (smooth noise, shifted)"


def print_verdicts(report) -> None:
    import json

    for c in report.candidates:
        if c.get("skipped"):
            print(f"{c['label']}: SKIPPED ({c['skipped']})")
            continue
        if c.get("error"):
            print(f"{c['label']}: ERROR {c['error']}")
            continue
        f = c["metrics"]["flow"]
        verdict = "PASS" if c["passed"] else "FAIL"
        print(f"{c['label']} vs {report.reference['label']}: {verdict} ({c['tier']}): flow max "
              f"abs {_f(f.get('max_abs'))} px, EPE mean {_f(f.get('epe_mean'))} / p99 {_f(f.get('epe_p99'))}, Fl-all "
              f"diff {_f(f.get('fl_all_pct'))} %, iterations {c['iterations_reference']} / "
              f"{c['iterations_candidate']}, "
              f"NaN/Inf {c['nonfinite']}; smallest passing tolerance {json.dumps(c['min_tolerance'])}")


def _f(x) -> str:
    return "NaN/Inf" if x is None else f"{x:.3g}"
