"""`deqflow serve`: serve a model over KServe-v2 HTTP/gRPC with NVIDIA's Triton Inference Server (through
PyTriton): `deqflow_flow` for image pairs with dynamic batching, `deqflow_stream` for video streams with
Triton's sequence batching and per-stream warm start. Stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import sys

HELP = ("serve a model with NVIDIA's Triton Inference Server (PyTriton): image pairs with dynamic batching and "
        "video streams with per-stream warm start, over HTTP and gRPC (pip install deqflow[serve])")


def add_arguments(p) -> None:
    from deqflow.cli_args import add_memory_args, count
    from runtime.commands.common import (
        add_backend_arg,
        add_backend_options,
        add_batching_args,
        add_max_size_arg,
        add_solver_args,
    )

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="ONNX export (a split export by its base name) or TensorRT engine")
    g.add_argument("--checkpoint", default=None, help="checkpoint to serve with the torch backend")
    add_backend_arg(g)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--http-port", type=count, default=8000, help="HTTP port")
    s.add_argument("--grpc-port", type=count, default=8001, help="gRPC port")
    s.add_argument("--metrics-port", type=count, default=8002, help="Prometheus metrics (/metrics)")
    add_batching_args(s)
    s.add_argument("--workspace", default=None, help="PyTriton workspace folder (default: a temporary one)")
    s.add_argument("--verbose", action="store_true", help="print Triton's own log")
    m = p.add_argument_group("memory (per model instance: the limit is shared by --instances)")
    add_max_size_arg(m, "any whose memory plan fits one instance's share of the memory limit")
    add_memory_args(m, "torch backend: auto serves all-pairs")
    add_solver_args(p)
    add_backend_options(p)


def run(args) -> int:
    from runtime.commands.common import choose_backend
    from runtime.serving.server import ServeConfig, Server

    choice = choose_backend(args)
    config = ServeConfig(choice, admission=admission(choice, args), host=args.host, http_port=args.http_port,
                         grpc_port=args.grpc_port,
                         metrics_port=args.metrics_port, max_batch=args.max_batch,
                         max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                         stream_idle_timeout_s=args.stream_idle_timeout, workspace=args.workspace,
                         verbose=args.verbose)
    server = Server(config)
    server.start()
    print(f"deqflow serve: ready: http://{args.host}:{args.http_port} grpc {args.host}:{args.grpc_port} "
          f"metrics http://{args.host}:{args.metrics_port}/metrics (models deqflow_flow, deqflow_stream)", flush=True)
    server.wait(lambda signum: print(f"deqflow serve: signal {signum}: stopping", file=sys.stderr, flush=True))
    print("deqflow serve: stopped", flush=True)
    return 0


def admission(choice, args):
    """What each model instance admits: --max-size, and requests whose memory plan fits its share of the
    limit (the machine's available memory or --memory-limit, divided by --instances). Checked before the
    backends are opened: a --max-size frame that cannot fit is refused now, not at its first request."""
    from deqflow.memory_plan import MODE_LOOKUP, MemoryLimit, available_memory, choose_plan
    from runtime.commands.common import plan_request
    from runtime.serving.models import Admission

    size = args.max_size or (128, 128)
    request, fixed = plan_request(choice, size, batch=1)
    total = available_memory(choice.name, args.memory_limit)
    limit = MemoryLimit(total.bytes // args.instances, f"{total.source}, shared by {args.instances} instance(s)")
    corr = "all-pairs" if args.corr == "auto" and fixed is None else args.corr
    plan = choose_plan(request, limit, corr, fixed=fixed)
    if choice.name == "torch" and plan.request.corr != "all-pairs":
        choice.options["lookup"] = MODE_LOOKUP[plan.request.corr]
    max_pixels = args.max_size[0] * args.max_size[1] if args.max_size else 0
    return Admission(plan.request, limit, max_pixels)
