"""`deqflow export`: checkpoint -> ONNX (unrolled | loop | split), or `--check FILE...` on existing files."""

from __future__ import annotations

HELP = "export a checkpoint to ONNX (unrolled, Loop or split graphs) or check ONNX files (--check)"


def requires(args) -> tuple[str, ...]:
    return () if args.check else ("torch",)


def add_arguments(p) -> None:
    from deqflow.cli_args import add_batch_arg, add_solver_group, multiple_of_8
    from export.config import DEFAULT_OPSET, DEFAULT_SIZE, LAYOUTS, LOOKUPS, PRECISIONS
    from training.commands.model_args import add_variant_arg

    p.add_argument("--check", nargs="+", metavar="FILE",
                   help="only run the checks (onnx.checker, shape inference, TensorRT compatibility) on these "
                        "ONNX files; exit status 1 when any check fails (default: export)")
    p.add_argument("--checkpoint", help="official DEQ-Flow .pth or deqflow checkpoint (default: none, required "
                   "unless --check)")
    p.add_argument("--output", help="output .onnx (split: writes <stem>.encoder/.step/.decode.onnx; default: none, "
                   "required unless --check)")
    p.add_argument("--layout", choices=LAYOUTS, default="unrolled",
                   help="unrolled: N steps written out; loop: one ONNX Loop; split: encoder + step + decode "
                        "graphs driven by the host")
    p.add_argument("--height", type=multiple_of_8("--height"), default=DEFAULT_SIZE[0],
                   help="padded input height, a multiple of 8")
    p.add_argument("--width", type=multiple_of_8("--width"), default=DEFAULT_SIZE[1],
                   help="padded input width, a multiple of 8")
    add_batch_arg(p, help="images per run of a static export")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="mixed16: convolutions and GRU in float16 behind explicit Casts; coordinates, "
                        "correlation, lookups, upsampling softmax and residual in float32")
    p.add_argument("--lookup", choices=LOOKUPS, default="gather",
                   help="correlation lookup: gather (GatherElements) or grid_sample (GridSample, native in "
                        "TensorRT) in the all-pairs volume, or local (computed on demand: memory linear in the "
                        "pixel count, for large frames)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, 17-19")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width")
    p.add_argument("--min-shape", help="dynamic: smallest input, HxW or BxHxW or Bx3xHxW (default: the opt shape)")
    p.add_argument("--opt-shape", help="dynamic: typical input (default: batch x height x width)")
    p.add_argument("--max-shape", help="dynamic: largest input (default: the opt shape)")
    add_solver_group(p, ("iters", "tol", "stop_mode"), defaults={"tol": 0.0}, aliases={"tol": ("--tolerance",)},
                     notes={"iters": "loop: the cap; split: the recommended host cap; unrolled: the steps written "
                                     "out (default: the model's evaluation iterations)",
                            "tol": "loop: ends the Loop (TensorRT runs such while loops one iteration longer than "
                                   "ONNX Runtime, see the --check report); split: the host's stop rule"},
                     unset="default: the checkpoint's")
    p.add_argument("--no-flow-init", dest="flow_init", action="store_false",
                   help="leave out the flow_init (warm start) input")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim after export")
    add_variant_arg(p, "expected variant; a checkpoint of another variant is refused (default: any)")
    p.add_argument("--verify", action="store_true",
                   help="run the export on ONNX Runtime (CPU) and compare the flow with PyTorch")
    from deqflow.cli_args import add_memory_limit_arg

    add_memory_limit_arg(p)  # tracing runs the model at the export's size: planned before the model is loaded


def run(args) -> int:
    from deqflow.errors import InputError
    from deqflow.fileio import check_output_file

    if args.check:
        from export.checks import check_files

        reports = check_files(args.check)
        for r in reports:
            print(r.format())
        failed = [r for r in reports if not r.ok]
        if failed:
            nodes = sorted({n for r in failed for n in r.trt.offending_nodes})
            print(f"deqflow export: {len(failed)} of {len(reports)} file(s) failed the checks"
                  + (f"; offending nodes: {', '.join(nodes)}" if nodes else ""))
            return 1
        return 0
    if not args.checkpoint or not args.output:
        raise InputError("deqflow export needs --checkpoint and --output (or --check FILE)")
    check_output_file(args.output)
    if not args.output.endswith(".onnx"):
        raise InputError(f"--output {args.output} must end in .onnx (e.g. {args.output.rsplit('.', 1)[0]}.onnx)")
    from export.config import ExportConfig

    cfg = ExportConfig(layout=args.layout, iters=args.iters, height=args.height, width=args.width,
                       batch=args.batch, precision=args.precision, lookup=args.lookup, opset=args.opset,
                       dynamic=args.dynamic, min_shape=args.min_shape, opt_shape=args.opt_shape,
                       max_shape=args.max_shape, tolerance=args.tol, stop_mode=args.stop_mode,
                       flow_init=args.flow_init, simplify=args.simplify, variant=args.variant, verify=args.verify)
    plan_export(args.checkpoint, cfg, args.memory_limit)
    from export.exporter import export_onnx

    result = export_onnx(args.checkpoint, args.output, cfg)
    meta = next(iter(result.metadata.values()))
    print(f"exported DEQ-Flow-{meta.variant} ({cfg.layout}, {result.iterations} iterations, {cfg.precision}, "
          f"lookup {cfg.lookup}, opset {cfg.opset}) in {result.export_seconds:.1f} s:")
    for path, (part, n) in zip(result.paths, result.nodes.items()):
        print(f"  {path}  [{part}: {n} nodes, {path.stat().st_size / 1e6:.1f} MB]")
    if result.verify:
        v = result.verify
        print(f"  verified on ONNX Runtime CPU: max |flow diff| {v['max_abs_flow_diff']:.2e} px, "
              f"iterations {v['iterations_onnx']} (PyTorch {v['iterations_torch']})")
    for r in result.reports:
        if not r.ok:
            print(r.format())
    if not result.ok:
        print("deqflow export: the file was written but fails the TensorRT compatibility check (see above)")
        return 1
    return 0


def plan_export(checkpoint: str, cfg, memory_limit: int | None = None) -> None:
    """Refuse, before the model is loaded, an export whose trace cannot fit in memory: tracing runs the model
    at the example size (the opt shape) with the export's correlation (deqflow.memory_plan, torch backend)."""
    from deqflow.errors import DeqflowError
    from deqflow.memory_plan import LOOKUP_MODES, PlanRequest, available_memory, choose_plan, dims_from_checkpoint

    try:
        dims = dims_from_checkpoint(checkpoint)
    except DeqflowError:
        return  # the checkpoint loader reports an unreadable file in its own words
    hints = cfg.shape_hints()
    b, h, w = (hints.opt.batch, hints.opt.height, hints.opt.width) if hints else (cfg.batch, cfg.height, cfg.width)
    mode = LOOKUP_MODES[cfg.lookup]
    request = PlanRequest(dims, h, w, batch=b, corr=mode, lookup=cfg.lookup)
    choose_plan(request, available_memory("torch", memory_limit), mode, fixed=mode,
                hint=" (--height/--width or --opt-shape)")
