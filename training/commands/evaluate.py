HELP = ("evaluate a checkpoint with the official protocol on synthetic, chairs, things, sintel, kitti, "
        "a folder of pairs with ground truth, or a rectified stereo pair")


def requires(args) -> tuple[str, ...]:
    return ("torch",)


def add_arguments(p) -> None:
    from deqflow.cli_args import add_batch_arg, add_batch_invariant_arg, add_device_arg, add_solver_group, count
    from training.deq.config import DEQConfig

    p.add_argument("--checkpoint", required=True, help="official DEQ-Flow .pth or deqflow checkpoint")
    p.add_argument("--dataset", nargs="*", default=[],
                   help="standard sets: synthetic chairs things sintel kitti (default: none)")
    p.add_argument("--data-root", default="datasets", help="folder holding the standard dataset layouts")
    p.add_argument("--folder", default=None, help="folder of frames; flows in <folder>/flow (see FolderPairs; "
                   "default: none)")
    p.add_argument("--flow-dir", default=None, help="ground-truth flows of --folder (default: <folder>/flow)")
    p.add_argument("--stereo", nargs=3, default=None, metavar=("LEFT", "RIGHT", "DISPARITY"),
                   help="rectified stereo pair with ground-truth disparity, flow = (-d, 0) (default: none)")
    p.add_argument("--pad-mode", choices=["sintel", "kitti"], default="sintel", help="padding for --folder/--stereo")
    p.add_argument("--max-samples", type=count, default=None, help="samples per set (default: all)")
    p.add_argument("--output", default=None, help="write the results as JSON here (default: only print them)")
    add_device_arg(p)
    add_batch_arg(p, help="pairs solved together (runs of one image size); each stops by its own rule, so the "
                          "metrics are those of batch 1")
    add_batch_invariant_arg(p)
    official = DEQConfig()  # the official evaluation protocol's defaults
    add_solver_group(p, ("iters", "tol", "stop_mode", "solver", "stall_window"), defaults={"solver": "fixed_point"},
                     notes={"iters": "default: the checkpoint's evaluation cap, eval_f_thres or f_thres x "
                                     "eval_factor",
                            "solver": "fixed_point is the official evaluation protocol (with "
                                      f"--iters {official.eval_max_iter} --tol {official.f_tol:g} --stop-mode "
                                      f"{official.f_stop_mode} --stall-window {official.stall_window})"},
                     unset="default: the checkpoint's")


def run(args) -> int:
    import json

    from deqflow.fileio import check_output_file, save_results
    from training.checkpoint import load_model
    from training.evaluate import format_table, run_sets

    if args.output:
        check_output_file(args.output, example="results.json")
    model, meta = load_model(args.checkpoint, device=args.device)
    changes = {"f_solver": args.solver}
    if args.tol is not None:
        changes["f_tol"] = args.tol
    if args.stop_mode is not None:
        changes["f_stop_mode"] = args.stop_mode
    if args.stall_window is not None:
        changes["stall_window"] = args.stall_window
    model.configure_deq(**changes)
    model.batch_invariant = args.batch_invariant
    sets = evaluation_sets(args)
    cap = args.iters or model.cfg.deq.eval_max_iter
    sizes = [len(s.dataset) if args.max_samples is None else min(args.max_samples, len(s.dataset)) for s in sets]
    print(f"evaluate: {sum(sizes)} sample(s) in {len(sets)} set(s) "
          f"({', '.join(f'{s.name} {n}' for s, n in zip(sets, sizes))}); stop: "
          f"{model.cfg.deq.stop_rule(cap).describe()}")
    results = run_sets(model, sets, iters=args.iters, device=args.device, max_samples=args.max_samples,
                       batch=args.batch)
    print(format_table(results))
    print("EPE per-pixel = mean over all valid pixels (Sintel/Chairs/Things); per-image = mean of image means "
          "(KITTI); Fl-all = % of valid pixels with EPE > 3 px and > 5% of |gt|")
    if args.output:
        payload = {"checkpoint": str(args.checkpoint), "sha256": meta.get("sha256"),
                   "solver": model.cfg.deq.f_solver, "iterations_cap": cap, "results": results}
        save_results(args.output, json.dumps(payload, indent=2).encode())
        print(f"wrote {args.output}")
    return 0


def evaluation_sets(args) -> list:
    """The EvalSets named by --dataset, --folder and --stereo (InputError when none is)."""
    from deqflow.errors import InputError
    from training.evaluate import EvalSet, standard_sets

    sets = []
    for name in args.dataset:
        sets += standard_sets(name, args.data_root, args.max_samples)
    if args.folder:
        from training.data import FolderPairs

        sets.append(EvalSet("folder", FolderPairs(args.folder, args.flow_dir), args.pad_mode, "epe_per_pixel"))
    if args.stereo:
        from training.data import StereoPairDataset

        sets.append(EvalSet("stereo", StereoPairDataset(*args.stereo), args.pad_mode, "epe_per_pixel"))
    if not sets:
        raise InputError("nothing to evaluate: give --dataset, --folder or --stereo")
    return sets
