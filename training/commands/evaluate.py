HELP = ("evaluate a checkpoint with the official protocol on synthetic, chairs, things, sintel, kitti, "
        "a folder of pairs with ground truth, or a rectified stereo pair")


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", nargs="*", default=[], help="synthetic chairs things sintel kitti")
    p.add_argument("--data-root", default="datasets")
    p.add_argument("--folder", default=None, help="folder of frames; flows in <folder>/flow (see FolderPairs)")
    p.add_argument("--flow-dir", default=None)
    p.add_argument("--stereo", nargs=3, default=None, metavar=("LEFT", "RIGHT", "DISPARITY"),
                   help="rectified stereo pair with ground-truth disparity (flow = (-d, 0))")
    p.add_argument("--pad-mode", choices=["sintel", "kitti"], default="sintel", help="for --folder/--stereo")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="default: f_thres x eval_factor of the checkpoint")
    p.add_argument("--f_solver", default="fixed_point", help="evaluation solver (official protocol: fixed point)")
    p.add_argument("--f_eps", type=float, default=None, help="stop tolerance (default: the checkpoint's)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    import json
    from pathlib import Path

    from deqflow.errors import InputError
    from training.checkpoint import load_model
    from training.evaluate import EvalSet, format_table, run_sets, standard_sets

    model, meta = load_model(args.checkpoint, device=args.device)
    changes = {"f_solver": args.f_solver}
    if args.f_eps is not None:
        changes["f_tol"] = args.f_eps
    model.configure_deq(**changes)
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
    results = run_sets(model, sets, iters=args.iters, device=args.device, max_samples=args.max_samples)
    print(format_table(results))
    print("EPE per-pixel = mean over all valid pixels (Sintel/Chairs/Things); per-image = mean of image means "
          "(KITTI); Fl-all = % of valid pixels with EPE > 3 px and > 5% of |gt|")
    if args.output:
        payload = {"checkpoint": str(args.checkpoint), "sha256": meta.get("sha256"),
                   "solver": model.cfg.deq.f_solver, "iterations_cap": args.iters or model.cfg.deq.eval_max_iter,
                   "results": results}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2))
    return 0
