"""`deqflow demo`: `deqflow infer` on the shipped checkpoint and the real Middlebury pair, with its ground
truth, followed by OpenCV's classical methods on the same pair for comparison.

The pair and its ground truth are written into the output folder (inputs/) and handed to `infer` as files, so
the demo's report is exactly what `infer` writes for them; the solver settings are the checkpoint's
evaluation protocol (its own cap and tolerance, each sample's lowest-residual iterate).
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
    from deqflow.flow_io import read_flo, write_flow
    from deqflow.image_io import write_image

    check_output_dir(args.output)
    ckpt = args.checkpoint or shipped_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} is not in this checkout (it is committed in the repository: "
                              "restore it with `git checkout -- checkpoints`), or pass --checkpoint PATH")
    variant = checkpoint_variant(ckpt)  # a bad checkpoint fails here, before anything is written
    left, right, flow, valid = middlebury.motorcycle()
    inputs = Path(args.output) / "inputs"
    write_image(inputs / "image1.png", left)
    write_image(inputs / "image2.png", right)
    write_flow(inputs / "flow_gt.flo", flow, valid)
    print(f"checkpoint {ckpt} (DEQ-Flow-{variant}); pair: Middlebury motorcycle {left.shape[1]}x{left.shape[0]}")
    argv = ["--checkpoint", str(ckpt), "--image1", str(inputs / "image1.png"), "--image2",
            str(inputs / "image2.png"), "--gt", str(inputs / "flow_gt.flo"), "--output", str(args.output),
            "--lowest-residual"] + ([] if args.iters is None else ["--iters", str(args.iters)])
    status = run_command("infer", argv)
    print_baselines(left, right, flow, valid, read_flo(Path(args.output) / "flow.flo"))
    return status


def checkpoint_variant(path) -> str:
    """The DEQ-Flow variant of a checkpoint (its stored config, else recognised from the weights)."""
    from deqflow.checkpoint import read_checkpoint_file, split_checkpoint
    from training.checkpoint import infer_model_config

    state, config, _ = split_checkpoint(read_checkpoint_file(path), str(path))
    return (config or {}).get("variant") or infer_model_config(state, str(path))["variant"]


def run_command(name: str, argv: list[str]) -> int:
    """Run another `deqflow` verb in this process (its errors propagate to the caller)."""
    import argparse
    import importlib

    from deqflow.cli import COMMANDS

    module = importlib.import_module(COMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"deqflow {name}")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


def print_baselines(left, right, flow, valid, model_flow) -> None:
    """The model's EPE next to the classical CPU yardsticks on the same pair (OpenCV)."""
    from deqflow.metrics import flow_metrics
    from training.baselines import opencv_flow

    parts = [f"DEQ-Flow {flow_metrics(model_flow, flow, valid)['epe']:.3f}"]
    for method in ("dis_medium", "farneback", "zero"):
        parts.append(f"{method} {flow_metrics(opencv_flow(method, left, right), flow, valid)['epe']:.3f}")
    print("  EPE on this pair: " + ", ".join(parts) + " px")
