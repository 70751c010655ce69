"""`deqflow triton-repo`: write a model repository for NVIDIA's Triton Inference Server from an export."""

from __future__ import annotations

HELP = ("write a model repository (config.pbtxt checked against Triton's schema) for NVIDIA's Triton Inference "
        "Server: whole-graph exports as onnxruntime or TensorRT models, the split layout with a python-backend "
        "host solver (BLS)")


def add_arguments(p) -> None:
    from runtime.commands.common import add_batching_args, add_max_size_arg, add_solver_args

    p.add_argument("--model", required=True, help="ONNX export (a split export by its base name)")
    p.add_argument("--output", required=True, help="repository folder to write")
    p.add_argument("--plan", default=None, help="TensorRT engine of a whole-graph export (deqflow build): served "
                   "as tensorrt_plan instead of the ONNX file")
    p.add_argument("--instance-kind", dest="device", choices=["gpu", "cpu"], default="gpu",
                   help="Triton instance kind of the graph models")
    p.add_argument("--parts", choices=["onnxruntime", "python"], default="onnxruntime",
                   help="split layout: serve the three graphs with Triton's onnxruntime backend (NVIDIA's container) "
                        "or with ONNX Runtime inside the python backend (servers without it)")
    add_batching_args(p.add_argument_group("batching (as in deqflow serve)"))
    add_max_size_arg(p, "any; the split layout's host-solver models refuse larger frames with a one-line error")
    add_solver_args(p)


def run(args) -> int:
    from runtime.commands.common import settings_from_args
    from runtime.serving.triton_repo import RepoOptions, write_repository

    options = RepoOptions(max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                          instances=args.instances, device=args.device, parts=args.parts, plan=args.plan,
                          stream_idle_timeout_s=args.stream_idle_timeout, settings=settings_from_args(args),
                          max_pixels=args.max_size[0] * args.max_size[1] if args.max_size else 0)
    configs = write_repository(args.model, args.output, options)
    print(f"wrote {len(configs)} models into {args.output}: " + ", ".join(c.parent.name for c in configs))
    return 0
