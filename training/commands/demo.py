"""`deqflow demo`: the shipped checkpoint on the real Middlebury pair with its ground truth, followed by
OpenCV's classical methods on the same pair for comparison.

The pair and its ground truth are written into the output folder (inputs/), so `deqflow infer` can be run on
them; the demo solves the pair with training's own inference path and writes the same pair report as `infer`
(deqflow.pair_report), under the checkpoint's evaluation protocol (its own cap and tolerance, each sample's
lowest-residual iterate) on the CPU.
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
    from deqflow.pair_report import write_pair_report

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
    run = solve_pair(ckpt, left, right, args.iters)
    write_pair_report(args.output, run, gt=read_flow(inputs / "flow_gt.flo"))
    print_baselines(left, right, flow, valid, read_flo(Path(args.output) / "flow.flo"))
    return 0


def solve_pair(checkpoint, image1, image2, iters: int | None):
    """The checkpoint on one uint8 RGB pair (CPU) as a deqflow.pair_report.PairRun: the evaluation stop rule,
    `iters` (None: the checkpoint's cap), the lowest-residual iterate, the solver's statistics."""
    import time

    from deqflow.host_solver import SolverSettings
    from deqflow.pair_report import PairRun
    from deqflow.solver_spec import canonical_solver
    from training.checkpoint import load_model
    from training.inference import estimate_flow

    model, _ = load_model(checkpoint)
    deq = model.cfg.deq
    settings = SolverSettings(max_iter=iters, return_final=False).with_rule(deq.stop_rule(),
                                                                            canonical_solver(deq.f_solver))
    model.configure_deq(return_final=settings.return_final)
    start = time.perf_counter()
    result = estimate_flow(model, image1, image2, iters=settings.max_iter)
    seconds = time.perf_counter() - start
    abs_trace, rel_trace = (trace.double().cpu().numpy()[0] for trace in (result.stats.abs_trace,
                                                                           result.stats.rel_trace))
    return PairRun(image1=image1, flow=result.flow, iterations=int(result.stats.nstep), final_abs=float(abs_trace[-1]),
                   final_rel=float(rel_trace[-1]), seconds=seconds, abs_trace=abs_trace, rel_trace=rel_trace,
                   backend="torch:cpu", settings=settings.as_dict(), stop_rule=settings.stop_rule().describe(),
                   stop_reason=result.stats.reason)


def checkpoint_variant(path) -> str:
    """The DEQ-Flow variant of a checkpoint (its stored config, else recognised from the weights)."""
    from deqflow.checkpoint import read_checkpoint_file, split_checkpoint
    from training.checkpoint import infer_model_config

    state, config, _ = split_checkpoint(read_checkpoint_file(path), str(path))
    return (config or {}).get("variant") or infer_model_config(state, str(path))["variant"]


def print_baselines(left, right, flow, valid, model_flow) -> None:
    """The model's EPE next to the classical CPU yardsticks on the same pair (OpenCV)."""
    from deqflow.metrics import flow_metrics
    from training.baselines import opencv_flow

    parts = [f"DEQ-Flow {flow_metrics(model_flow, flow, valid)['epe']:.3f}"]
    for method in ("dis_medium", "farneback", "zero"):
        parts.append(f"{method} {flow_metrics(opencv_flow(method, left, right), flow, valid)['epe']:.3f}")
    print("  EPE on this pair: " + ", ".join(parts) + " px")
