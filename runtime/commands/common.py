"""Argument groups and helpers shared by the runtime commands (the solver flags come from deqflow.cli_args)."""

from __future__ import annotations

import argparse
from typing import Any

from deqflow.cli_args import (
    add_batch_invariant_arg,
    add_device_arg,
    add_solver_group,
    count,
    count_or_zero,
    npz_file,
    positive_number,
)
from deqflow.errors import InputError
from deqflow.solver_spec import SolveOverrides
from runtime.backends import BACKENDS, BackendChoice, default_backend

INPUT_SOURCES = ("real", "random")
"""Generated inputs of compare and bench: crops of the real Middlebury motorcycle pair, or smooth noise."""

SPEC_HELP = ("BACKEND[:OPTION]=PATH, repeatable: onnxruntime=m.onnx, onnxruntime:cuda=m.onnx, "
             "onnxruntime:tensorrt=m.onnx, tensorrt=m.onnx, torch=ckpt.pth, torch:cuda=ckpt.pth")


def add_solver_args(p: argparse.ArgumentParser) -> None:
    """The shared solver group with the model's own settings as defaults, plus --lowest-residual."""
    g = add_solver_group(p, unset="default: the model's own",
                         notes={"tol": "split layout and torch backend (default: the model's own)",
                                "solver": "anderson runs on the host for the split layout; broyden: torch backend "
                                          "(default: the model's own)"})
    g.add_argument("--lowest-residual", action="store_true",
                   help="return each sample's lowest-residual iterate instead of the last (split / torch)")


def settings_from_args(args: argparse.Namespace) -> SolveOverrides:
    """The solver flags as the partial spec they ask for (unset flags keep the model's own values)."""
    return SolveOverrides(max_iter=args.iters, tol=args.tol, stop_mode=args.stop_mode, method=args.solver,
                          return_final=not getattr(args, "lowest_residual", False),
                          stall_window=getattr(args, "stall_window", None),
                          warm_flow_tol=getattr(args, "warm_flow_tol", None))


def add_backend_arg(p, note: str = "") -> argparse.Action:
    """--backend NAME: the backend that runs a --model / --checkpoint (infer, serve)."""
    return p.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                          help="default: torch with --checkpoint, onnxruntime with --model (tensorrt for .engine "
                               "files)" + (f"; {note}" if note else ""))


def add_candidate_arg(p, note: str = "", *, required: bool = False, dest: str = "candidate") -> argparse.Action:
    """--candidate SPEC: a backend with its model file, repeatable (compare's candidates, bench's cases)."""
    return p.add_argument("--candidate", action="append", default=[], metavar="SPEC", required=required, dest=dest,
                          help=SPEC_HELP + (f"; {note}" if note else ""))


def add_inputs_arg(p, note: str = "") -> argparse.Action:
    """--inputs real|random: what compare and bench generate their image pairs from."""
    return p.add_argument("--inputs", choices=INPUT_SOURCES, default="real",
                          help="real (Middlebury motorcycle crops) or random (smooth noise)"
                               + (f"; {note}" if note else ""))


def add_golden_inputs_arg(p) -> argparse.Action:
    """--golden-inputs FILE.npz: compare on the inputs of a golden file (its reference outputs are not used)."""
    return p.add_argument("--golden-inputs", dest="inputs", type=npz_file, metavar="FILE.npz",
                          help="use the inputs of this golden .npz instead of --inputs (default: none)")


def add_batching_args(g) -> None:
    """The Triton batching and instance options, one definition for serve and triton-repo."""
    g.add_argument("--max-batch", type=count, default=8, help="largest batch Triton forms (and accepts per request)")
    g.add_argument("--max-queue-delay-us", type=count_or_zero, default=2000,
                   help="how long Triton holds a request to batch it with others (microseconds)")
    g.add_argument("--instances", type=count, default=1, help="model instances (each with its own backend)")
    g.add_argument("--stream-idle-timeout", type=positive_number, default=60.0,
                   help="seconds after which an idle stream's state is freed")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend options")
    g.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="onnxruntime execution provider")
    add_device_arg(g, "torch backend")
    g.add_argument("--device-id", type=count_or_zero, default=0,
                   help="GPU index (onnxruntime cuda/tensorrt, tensorrt)")
    g.add_argument("--threads", type=count_or_zero, default=0,
                   help="CPU threads (torch, onnxruntime CPU); 0: the library's automatic choice")
    g.add_argument("--cuda-graph", action="store_true", help="capture CUDA graphs (tensorrt, onnxruntime GPU)")
    add_batch_invariant_arg(g)
    g.add_argument("--cache-dir", default=None, help="TensorRT engine/timing cache folder (default: tensorrt "
                   "backend: $DEQFLOW_ENGINE_CACHE or ~/.cache/deqflow/engines; onnxruntime TensorRT provider: none)")
    g.add_argument("--fp16", action="store_true", help="onnxruntime TensorRT provider: trt_fp16_enable")
    g.add_argument("--low-memory", action="store_true",
                   help="onnxruntime CPU: no memory arena and no memory pattern (less host memory, slower; "
                        "measured in the README)")
    g.add_argument("--rebuild", action="store_true",
                   help="tensorrt: rebuild an engine made by another TensorRT version / GPU from its ONNX file")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="keep going when a model outputs NaN/Inf (for debugging a model); by default such an "
                        "output is an error and nothing is written for it")


def backend_options(name: str, args: argparse.Namespace, extra: dict | None = None) -> dict[str, Any]:
    """Constructor options of backend `name` from the parsed flags (spec options in `extra` win)."""
    extra = dict(extra or {})
    if name == "torch":
        opts = {"device": getattr(args, "device", "cpu"), "threads": getattr(args, "threads", 0) or None,
                "batch_invariant": getattr(args, "batch_invariant", False)}
    elif name == "onnxruntime":
        opts = {"provider": getattr(args, "provider", "cpu"), "device_id": getattr(args, "device_id", 0),
                "threads": getattr(args, "threads", 0) or None, "cuda_graph": getattr(args, "cuda_graph", False),
                "cache_dir": getattr(args, "cache_dir", None), "fp16": getattr(args, "fp16", False),
                "low_memory": getattr(args, "low_memory", False)}
    else:
        opts = {"device_id": getattr(args, "device_id", 0), "cuda_graph": getattr(args, "cuda_graph", False),
                "cache_dir": getattr(args, "cache_dir", None), "rebuild": getattr(args, "rebuild", False)}
    opts["allow_nonfinite"] = getattr(args, "allow_nonfinite", False)
    opts.update(extra)
    return opts


def choose_backend(args: argparse.Namespace, settings: SolveOverrides | None = None, *,
                   also: str = "") -> BackendChoice:
    """The backend infer and serve run: --checkpoint or --model, --backend (default: runtime.backends.
    default_backend), the backend flags and the solver flags (or `settings`). `also` names a further
    alternative to both for the message when neither or both are given."""
    if bool(args.checkpoint) == bool(args.model):
        raise InputError(f"give exactly one of --checkpoint (torch backend) and --model (ONNX export or engine){also}")
    name = args.backend or default_backend(args.checkpoint, args.model)
    if name == "torch" and not args.checkpoint:
        raise InputError("--backend torch needs --checkpoint")
    if name != "torch" and not args.model:
        raise InputError(f"--backend {name} needs --model (an ONNX export or engine); export the checkpoint with "
                         "deqflow export first")
    return BackendChoice(name, args.checkpoint or args.model, backend_options(name, args),
                         settings or settings_from_args(args))


def spec_choice(spec: tuple[str, dict, str], args: argparse.Namespace, settings: SolveOverrides) -> BackendChoice:
    """The backend of a BACKEND[:OPTION]=PATH spec (runtime.backends.parse_spec) as compare and bench run it:
    the backend flags, with the spec's own option winning."""
    name, extra, path = spec
    return BackendChoice(name, path, backend_options(name, args, extra), settings)


def default_size(paths: list[str], fallback: tuple[int, int] = (128, 160)) -> tuple[int, int]:
    """The static size of the first ONNX export / engine among `paths` (else `fallback`)."""
    from runtime.modelfile import open_model_file

    for p in paths:
        try:
            f = open_model_file(p)
        except Exception:
            continue
        if f.main is not None and f.main.height and f.main.width:
            return int(f.main.height), int(f.main.width)
    return fallback


def model_defaults(paths: list[str]) -> dict[str, Any] | None:
    """Solver settings baked into the first ONNX export / engine among `paths` (iterations, tolerance)."""
    from runtime.modelfile import open_model_file

    for p in paths:
        try:
            f = open_model_file(p)
        except Exception:
            continue
        if f.main is not None:
            return {"max_iter": int(f.main.iterations), "tol": float(f.main.tolerance), "stop_mode": f.main.stop_mode,
                    "layout": f.layout}
    return None


# --- the memory plan -------------------------------------------------------------------------------------------


def plan_request(choice: BackendChoice, size: tuple[int, int], batch: int = 1):
    """(PlanRequest, fixed mode) of running `choice` on frames of `size` (padded here to multiples of 8), read
    from the model file's tensor shapes or metadata only (nothing heavy is loaded). The fixed mode is an export's
    (None for a checkpoint, whose mode the run chooses)."""
    from deqflow.memory_plan import LOOKUP_MODES, PlanRequest, dims_from_metadata

    height, width = (-(-int(s) // 8) * 8 for s in size)
    if choice.name == "torch":
        return PlanRequest(checkpoint_dims(choice.model), height, width, batch=batch, backend="torch"), None
    meta, files = export_metadata(choice.model)
    dims = dims_from_metadata(meta, parameters=sum(p.stat().st_size for p in files if p.is_file()) // 4)
    precision = "mixed16" if meta.precision != "fp32" else "fp32"
    request = PlanRequest(dims, height, width, batch=batch, precision=precision, backend=choice.name,
                          lookup=meta.lookup)
    return request, LOOKUP_MODES.get(meta.lookup, "all-pairs")


def checkpoint_dims(path: str):
    """deqflow.memory_plan.dims_from_checkpoint; a file it cannot read gets the checkpoint reader's own verdict
    (the same message as without the plan), and only when that reader accepts it, the shape reader's."""
    from deqflow.errors import CheckpointError
    from deqflow.memory_plan import dims_from_checkpoint

    try:
        return dims_from_checkpoint(path)
    except CheckpointError:
        from deqflow.checkpoint import read_checkpoint_file

        read_checkpoint_file(path)
        raise


def export_metadata(path: str):
    """(metadata, files) of an ONNX export (any layout, split by any name) or engine, without its weights."""
    from pathlib import Path

    from deqflow.model_metadata import ENGINE_SUFFIXES, read_metadata, split_paths

    p = Path(path)
    if p.suffix.lower() in ENGINE_SUFFIXES:
        from runtime.modelfile import open_engine

        found = open_engine(p)
        return found.exported(), list(found.parts.values())
    meta = read_metadata(p) if p.is_file() else None
    if meta is not None and meta.layout != "split":
        return meta, [p]
    parts = split_paths(p)
    return read_metadata(parts["step"]), list(parts.values())


def plan_run(choice: BackendChoice, size: tuple[int, int], args: argparse.Namespace, batch: int = 1,
             hint: str = ""):
    """The memory plan of a run (deqflow.memory_plan.choose_plan with --corr and --memory-limit), checked
    before the backend is opened: MemoryPlanError when no mode fits; None when the model file cannot be read
    (opening it then says why). A torch run that needs the on-demand correlation gets it (the model's `lookup`);
    an export keeps its own."""
    from deqflow.errors import DeqflowError
    from deqflow.memory_plan import MODE_LOOKUP, available_memory, choose_plan

    try:
        request, fixed = plan_request(choice, size, batch)
    except DeqflowError:
        return None  # a model file the plan cannot read: opening the backend reports it in the loader's words
    limit = available_memory(choice.name, getattr(args, "memory_limit", None))
    plan = choose_plan(request, limit, getattr(args, "corr", "auto"), fixed=fixed, hint=hint)
    if choice.name == "torch" and plan.request.corr != "all-pairs":
        choice.options["lookup"] = MODE_LOOKUP[plan.request.corr]
    return plan


def add_max_size_arg(group, default_text: str) -> None:
    """--max-size HxW of the serving verbs: the largest frame a server admits, in pixels (H*W)."""
    from deqflow.cli_args import image_size

    group.add_argument("--max-size", type=image_size, default=None, metavar="HxW",
                       help=f"largest frame admitted, in pixels (H*W) (default: {default_text})")
