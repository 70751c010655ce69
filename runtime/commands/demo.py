"""`deqflow demo`: the shipped checkpoint on the real Middlebury pair with its ground truth, followed by
OpenCV's classical methods on the same pair for comparison.

The pair and its ground truth are written into the output folder (inputs/), so `deqflow infer` can be run on
them; the demo runs the torch backend and writes the same pair report as `infer` (its `report_pair`), under the
checkpoint's evaluation protocol (its own cap and tolerance, each sample's lowest-residual iterate) on the CPU.
"""

from deqflow.checkpoint import SHIPPED_CHECKPOINT

HELP = "run the shipped checkpoint on a real photographed pair with ground truth (Middlebury motorcycle)"

DEFAULT_CHECKPOINT = str(SHIPPED_CHECKPOINT)


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


def run(args) -> int:
    from pathlib import Path

    from deqflow import middlebury
    from deqflow.errors import CheckpointError
    from deqflow.fileio import check_output_dir
    from deqflow.flow_io import read_flo, read_flow, write_flow
    from deqflow.image_io import write_image
    from deqflow.solver_spec import SolveOverrides
    from runtime.backends import create_backend
    from runtime.commands.infer import report_pair

    check_output_dir(args.output)
    ckpt = args.checkpoint or shipped_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} is not in this checkout (it is committed in the repository: "
                              "restore it with `git checkout -- checkpoints`), or pass --checkpoint PATH")
    # the checkpoint's evaluation protocol: its own rule (or --iters), each sample's lowest-residual iterate
    backend = create_backend("torch", ckpt, settings=SolveOverrides(max_iter=args.iters, return_final=False))
    left, right, flow, valid = middlebury.motorcycle()  # a bad checkpoint has failed above, before any write
    inputs = Path(args.output) / "inputs"
    write_image(inputs / "image1.png", left)
    write_image(inputs / "image2.png", right)
    write_flow(inputs / "flow_gt.flo", flow, valid)
    print(f"checkpoint {ckpt} (DEQ-Flow-{backend.model.cfg.variant}); pair: Middlebury motorcycle "
          f"{left.shape[1]}x{left.shape[0]}")
    report_pair(backend, left, right, Path(args.output), gt=read_flow(inputs / "flow_gt.flo"))
    print_baselines(left, right, flow, valid, read_flo(Path(args.output) / "flow.flo"))
    return 0


def print_baselines(left, right, flow, valid, model_flow) -> None:
    """The model's EPE next to the classical CPU yardsticks on the same pair (OpenCV)."""
    from deqflow.baselines import opencv_flow
    from deqflow.metrics import flow_metrics

    parts = [f"DEQ-Flow {flow_metrics(model_flow, flow, valid)['epe']:.3f}"]
    for method in ("dis_medium", "farneback", "zero"):
        parts.append(f"{method} {flow_metrics(opencv_flow(method, left, right), flow, valid)['epe']:.3f}")
    print("  EPE on this pair: " + ", ".join(parts) + " px")
