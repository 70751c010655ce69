HELP = "run the shipped checkpoint on a real photographed pair with ground truth (Middlebury motorcycle)"

DEFAULT_CHECKPOINT = "checkpoints/deqflow-T-synthetic.pth"


def requires(args) -> tuple[str, ...]:
    return ("torch",)


def add_arguments(p) -> None:
    from deqflow.cli_args import add_solver_group

    p.add_argument("--checkpoint", default=None, help=f"checkpoint to run (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--output", default="outputs/demo", help="folder for the pictures, flow and summary")
    add_solver_group(p, ("iters",), unset="default: the checkpoint's evaluation cap")


def shipped_checkpoint():
    """Path of the checkpoint committed in the repository (or None if not there)."""
    from pathlib import Path

    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = base / DEFAULT_CHECKPOINT
        if path.is_file():
            return path
    return None


def real_stereo_pair():
    """Middlebury 2014 'motorcycle' pair shipped in scikit-image: real photographs, GT disparity.

    A rectified stereo pair is an optical-flow pair with flow (-d, 0); invalid where d is not finite.
    """
    import numpy as np
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    valid = np.isfinite(disp).astype(np.float32)
    flow = np.stack([-np.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0), np.zeros_like(disp)], axis=-1)
    return left, right, flow.astype(np.float32), valid


def run(args) -> int:
    from pathlib import Path

    from deqflow.errors import CheckpointError
    from training.checkpoint import load_model
    from training.reporting import report_pair

    ckpt = args.checkpoint or shipped_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} is not in this checkout (it is committed in the repository: "
                              "restore it with `git checkout -- checkpoints`), or pass --checkpoint PATH")
    model, meta = load_model(ckpt)
    left, right, flow, valid = real_stereo_pair()
    print(f"checkpoint {ckpt} (DEQ-Flow-{model.cfg.variant}); "
          f"pair: Middlebury motorcycle {left.shape[1]}x{left.shape[0]}")
    summary = report_pair(model, left, right, Path(args.output), gt=(flow, valid), iters=args.iters,
                          label="motorcycle")
    print_baselines(left, right, flow, valid, summary["metrics"]["epe"])
    return 0


def print_baselines(left, right, flow, valid, model_epe: float) -> None:
    """The classical CPU yardsticks on the same pair (OpenCV)."""
    from deqflow.metrics import flow_metrics
    from training.baselines import opencv_flow

    parts = [f"DEQ-Flow {model_epe:.3f}"]
    for method in ("dis_medium", "farneback", "zero"):
        parts.append(f"{method} {flow_metrics(opencv_flow(method, left, right), flow, valid)['epe']:.3f}")
    print("  EPE on this pair: " + ", ".join(parts) + " px")
