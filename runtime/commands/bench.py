"""`deqflow bench`: latency per backend (warm-up, median/p90/p99, throughput, memory), JSON, regression gate."""

from __future__ import annotations

HELP = ("time backends at given sizes / iterations / batch (median, p90, p99, throughput, peak memory); "
        "--baseline FILE exits 1 when a backend got slower than the baseline by more than --max-slowdown")


def add_arguments(p) -> None:
    from deqflow.cli_args import (
        add_batch_arg,
        add_size_arg,
        add_solver_group,
        count,
        count_or_zero,
        non_negative_number,
    )
    from runtime.commands.common import add_backend_options, add_candidate_arg, add_inputs_arg

    add_candidate_arg(p, "the backends to time", required=True, dest="backend")
    add_size_arg(p, "default: the first export's size", repeatable=True)
    add_batch_arg(p)
    add_solver_group(p, ("iters",), notes={"iters": "always all of them: no early stop (default: the first "
                                                    "export's; graphs have theirs baked)"})
    p.add_argument("--warmup", type=count_or_zero, default=2, help="untimed runs per case first")
    p.add_argument("--runs", type=count, default=10, help="timed runs per case, interleaved between the cases")
    add_inputs_arg(p)
    p.add_argument("--output", default="bench.json", help="JSON report")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown (default: no)")
    g = p.add_argument_group("regression gate")
    g.add_argument("--baseline", default=None, help="earlier bench JSON to compare with (default: no gate)")
    g.add_argument("--max-slowdown", type=non_negative_number, default=0.15,
                   help="allowed slowdown against the baseline, as a fraction (0.15 = 15 %%)")
    g.add_argument("--anchor", default=None, help="label of the backend the ratios are taken to (default: the "
                   "first)")
    g.add_argument("--gate-mode", choices=["auto", "ratio", "absolute"], default="auto",
                   help="ratio: compare latency ratios to the anchor measured in the same run (robust on a noisy, "
                        "shared machine); absolute: medians; auto: ratio when possible")
    g.add_argument("--allow-skip", action="store_true",
                   help="exit 0 even when a requested backend was skipped (not installed, a size its export lacks, "
                        "a bad model file) or nothing in the baseline is comparable; by default either fails the "
                        "run, so a CI gate never passes on nothing measured. A run that measured nothing fails always")
    add_backend_options(p)
    from deqflow.cli_args import add_memory_args

    add_memory_args(p.add_argument_group("memory"), "torch candidates are planned per --size")


def run(args) -> int:
    from deqflow.errors import InputError
    from deqflow.fileio import check_output_file
    from runtime.backends import parse_spec
    from runtime.bench import markdown_table, run_bench
    from runtime.commands.common import default_size, model_defaults
    from runtime.modelfile import open_model_file

    check_output_file(args.output, example="bench.json")
    if args.markdown:
        check_output_file(args.markdown, "--markdown", "bench.md")
    specs = [parse_spec(s) for s in args.backend]
    sizes = args.size or [default_size([p for _, _, p in specs])]
    baked = model_defaults([p for _, _, p in specs])
    iters = args.iters or (baked["max_iter"] if baked else None)
    if iters is None:
        for name, _, path in specs:  # an export that cannot be read says why, rather than lacking an iteration count
            if name != "torch":
                open_model_file(path)
        raise InputError("give --iters (no export among the backends to take the iteration count from)")
    baseline = read_baseline(args.baseline) if args.baseline else None
    cases = bench_cases(args, specs, sizes, iters)
    labels = sorted({c.label for c in cases})
    if args.anchor and args.anchor not in labels:
        raise InputError(f"--anchor {args.anchor!r} is not one of this run's backends: {', '.join(labels)}")
    print(f"bench: {len(cases)} case(s), {iters} iterations, batch {args.batch}, warm-up {args.warmup}, "
          f"{args.runs} interleaved runs")
    report = run_bench(cases, warmup=args.warmup, runs=args.runs, inputs=args.inputs, iterations=iters, log=print)
    if args.anchor:
        from runtime.bench import ratios

        report["ratios"] = ratios(report["results"], args.anchor)
    rc, verdict = skip_gate(report, args.allow_skip)
    if baseline is not None and any("latency_ms" in e for e in report["results"]):
        gate_rc, gate_verdict = apply_gate(report, baseline, args)
        rc, verdict = max(rc, gate_rc), "; ".join(v for v in (verdict, gate_verdict) if v)
    write_outputs(report, args.output, args.markdown and (args.markdown, markdown_table(report)))
    if verdict:
        print(f"bench: {verdict}")  # last, where a CI log is read
    return rc


def read_baseline(path: str) -> dict:
    """The baseline report, read before anything is measured."""
    import json
    from pathlib import Path

    from deqflow.errors import FileFormatError

    try:
        baseline = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"cannot read baseline {path}: {exc}") from None
    if not isinstance(baseline, dict) or not isinstance(baseline.get("results", []), list):
        raise FileFormatError(f"cannot read baseline {path}: not a deqflow bench report (no 'results' list)")
    return baseline


def skip_gate(report: dict, allow_skip: bool) -> tuple[int, str]:
    """(1, why) when a requested backend was skipped (unless allow_skip) or when nothing at all was measured."""
    skipped = [e for e in report["results"] if "skipped" in e]
    measured = [e for e in report["results"] if "latency_ms" in e]
    report["skipped"] = len(skipped)
    if not measured:
        return 1, "FAILED: nothing was measured: every requested backend was skipped (reasons above)"
    if not skipped:
        return 0, ""
    names = ", ".join(f"{e['label']} {e['size'][0]}x{e['size'][1]}" for e in skipped)
    if allow_skip:
        return 0, f"{len(skipped)} case(s) skipped, allowed by --allow-skip: {names}"
    return 1, (f"FAILED: {len(skipped)} requested case(s) skipped: {names} (reasons above); fix them, or pass "
               "--allow-skip to accept a run without them")


def write_outputs(report: dict, output: str, markdown: tuple[str, str] | None) -> None:
    """The JSON report (and Markdown table); a failed write keeps the results (deqflow.fileio.save_results)."""
    import json

    from deqflow.fileio import save_results

    save_results(output, json.dumps(report, indent=2, default=str).encode())
    if markdown:
        save_results(markdown[0], markdown[1].encode(), "--markdown")
    print(f"wrote {output}" + (f" and {markdown[0]}" if markdown else ""))


def bench_cases(args, specs: list, sizes: list, iters: int) -> list:
    """One BenchCase per backend spec and size; backends are created by the bench, one at a time."""
    from pathlib import Path

    from deqflow.solver_spec import SolveOverrides
    from runtime.bench import BenchCase
    from runtime.commands.common import plan_run, spec_choice
    from runtime.modelfile import open_model_file

    cases, seen = [], set()
    for spec in specs:
        name, _, path = spec
        full_graph = name != "torch" and open_model_file(path).layout in ("unrolled", "loop")
        settings = SolveOverrides(max_iter=iters) if full_graph else SolveOverrides(max_iter=iters, tol=0.0)
        label = spec_choice(spec, args, settings).label
        if label in seen:
            label = f"{label} {Path(path).stem}"
        seen.add(label)
        for size in sizes:  # each size planned before anything is timed; a torch run may take local correlation
            choice = spec_choice(spec, args, settings)
            plan = plan_run(choice, size, args, batch=args.batch)
            corr = {"corr": plan.request.corr} if plan is not None else {}
            cases.append(BenchCase(label, choice.open, size, args.batch, {"spec": f"{name}={path}", **corr}))
    return cases


def apply_gate(report: dict, baseline: dict, args) -> tuple[int, str]:
    """Compare with the baseline (report['gate']), print each check; (1, why) when a backend regressed or nothing
    in the baseline is comparable (unless --allow-skip)."""
    from runtime.bench import gate

    report["gate"] = g = gate(report, baseline, tolerance=args.max_slowdown, anchor=args.anchor, mode=args.gate_mode)
    for c in g["checks"]:
        print(f"  gate {c['label']} {c['size']}: {c['measure']} {c['current']:.3g} vs baseline {c['baseline']:.3g} "
              f"({100 * c['slower_by']:+.1f} %, allowed {100 * c['tolerance']:.0f} %): "
              f"{'ok' if c['passed'] else 'REGRESSION'}")
    if not g["compared"]:
        what = "nothing comparable in the baseline (labels / sizes / batch differ)"
        if args.allow_skip:
            return 0, f"{what}: allowed by --allow-skip"
        return 1, f"FAILED: {what}; pass --allow-skip to accept"
    regressed = [c["label"] for c in g["checks"] if not c["passed"]]
    if regressed:
        return 1, f"FAILED: slower than the baseline: {', '.join(regressed)}"
    return 0, f"gate passed ({g['compared']} check(s))"
