"""`deqflow plan`: the memory plan of a model at given frame sizes (deqflow.memory_plan): the estimated peak by
part for each correlation mode, the limit it is checked against, the mode `--corr auto` picks and the largest
frame of the same aspect ratio each mode fits. Reads only the model file's shapes or metadata: it answers in
a moment whatever the size, and without PyTorch or ONNX Runtime."""

from __future__ import annotations

import json

HELP = ("memory plan of a model at given frame sizes: estimated peak memory by part for all-pairs and local "
        "correlation, the limit, which mode --corr auto picks, the largest frame each mode fits")


def add_arguments(p) -> None:
    from deqflow.cli_args import add_batch_arg, add_memory_args, add_size_arg
    from runtime.commands.common import add_backend_arg

    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None, help="official DEQ-Flow .pth or deqflow checkpoint (default: none)")
    g.add_argument("--model", default=None, help="ONNX export or TensorRT engine (default: none)")
    add_backend_arg(g)
    add_size_arg(p, "padded up to multiples of 8 (required)", repeatable=True)
    add_batch_arg(p, help="pairs solved together")
    add_memory_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from deqflow.errors import InputError
    from deqflow.memory_plan import available_memory
    from deqflow.solver_spec import SolveOverrides
    from runtime.commands.common import choose_backend

    if not args.size:
        raise InputError("give at least one --size HxW")
    choice = choose_backend(args, SolveOverrides())
    limit = available_memory(choice.name, args.memory_limit)
    reports = [size_report(choice, size, args.batch, limit, args.corr) for size in args.size]
    if args.json:
        print(json.dumps({"model": str(choice.model), "backend": choice.name, "limit": reports[0]["limit"],
                          "sizes": reports}, indent=2))
    else:
        print("\n".join(line for report in reports for line in table(report)))
    return 0


def size_report(choice, size: tuple[int, int], batch: int, limit, corr: str) -> dict:
    """The plans of both modes at `size`, the run's choice (or its refusal) and each mode's largest frame."""
    from dataclasses import replace

    from deqflow.errors import MemoryPlanError
    from deqflow.memory_plan import CORR_MODES, choose_plan, estimate, largest_fitting
    from runtime.commands.common import plan_request

    request, fixed = plan_request(choice, size, batch)
    modes = [fixed] if fixed else list(CORR_MODES)
    plans = {mode: estimate(replace(request, corr=mode), limit) for mode in modes}
    try:
        chosen, refusal = choose_plan(request, limit, corr, fixed=fixed).request.corr, None
    except MemoryPlanError as exc:
        chosen, refusal = None, str(exc)
    largest = {mode: largest_fitting(request, limit, mode) for mode in modes}
    return {"size": [request.height, request.width], "batch": batch, "limit": plans[modes[0]].to_dict()["limit"],
            "fixed_mode": fixed, "plans": {m: p.to_dict() for m, p in plans.items()}, "corr": corr,
            "chosen": chosen, "refusal": refusal,
            "largest_fitting": {m: list(s) if s else None for m, s in largest.items()}}


def table(report: dict) -> list[str]:
    """A report as readable lines: one row per mode, the parts in columns."""
    from deqflow.memory_plan import human

    h, w = report["size"]
    limit = report["limit"]
    lines = [f"{h}x{w} batch {report['batch']}: limit {human(limit['bytes'])} ({limit['source']})"]
    parts = list(next(iter(report["plans"].values()))["parts"])
    lines.append("  " + f"{'mode':<10}" + "".join(f"{p:>14}" for p in parts) + f"{'peak':>12}  fits  largest frame")
    for mode, plan in report["plans"].items():
        big = report["largest_fitting"][mode]
        lines.append("  " + f"{mode:<10}" + "".join(f"{human(plan['parts'][p]):>14}" for p in parts)
                     + f"{human(plan['total']):>12}  {'yes ' if plan['fits'] else 'no  '}  "
                     + (f"{big[0]}x{big[1]}" if big else "none"))
    chosen = report["chosen"]
    outcome = f"runs with {chosen}" if chosen else f"refused: {report['refusal']}"
    lines.append(f"  --corr {report['corr']}: {outcome}")
    return lines
