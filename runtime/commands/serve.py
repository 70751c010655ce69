"""`deqflow serve`: serve a model over KServe-v2 HTTP/gRPC with NVIDIA's Triton Inference Server (through
PyTriton): `deqflow_flow` for image pairs with dynamic batching, `deqflow_stream` for video streams with
Triton's sequence batching and per-stream warm start. Stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import sys

HELP = ("serve a model with NVIDIA's Triton Inference Server (PyTriton): image pairs with dynamic batching and "
        "video streams with per-stream warm start, over HTTP and gRPC (pip install deqflow[serve])")


def add_arguments(p) -> None:
    from deqflow.cli_args import count, count_or_zero, positive_number
    from runtime.commands.common import add_backend_options, add_solver_args

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="ONNX export (a split export by its base name) or TensorRT engine")
    g.add_argument("--checkpoint", default=None, help="checkpoint to serve with the torch backend")
    g.add_argument("--backend", choices=["onnxruntime", "tensorrt", "torch"], default=None,
                   help="default: torch with --checkpoint, onnxruntime with --model (tensorrt for .engine files)")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--http-port", type=count, default=8000, help="HTTP port")
    s.add_argument("--grpc-port", type=count, default=8001, help="gRPC port")
    s.add_argument("--metrics-port", type=count, default=8002, help="Prometheus metrics (/metrics)")
    s.add_argument("--max-batch", type=count, default=8, help="largest batch Triton forms (and accepts per request)")
    s.add_argument("--max-queue-delay-us", type=count_or_zero, default=2000,
                   help="how long Triton holds a request to batch it with others (microseconds)")
    s.add_argument("--instances", type=count, default=1, help="model instances (each with its own backend)")
    s.add_argument("--stream-idle-timeout", type=positive_number, default=60.0,
                   help="seconds after which an idle stream's state is freed")
    s.add_argument("--workspace", default=None, help="PyTriton workspace folder (default: a temporary one)")
    s.add_argument("--verbose", action="store_true", help="print Triton's own log")
    add_solver_args(p)
    add_backend_options(p)


def backend_choice(args):
    """--model / --checkpoint / --backend and the solver and backend flags -> BackendChoice."""
    from pathlib import Path

    from deqflow.errors import InputError
    from runtime.commands.common import backend_options, settings_from_args
    from runtime.serving.adapter import BackendChoice

    if bool(args.checkpoint) == bool(args.model):
        raise InputError("give exactly one of --model (ONNX export or engine) and --checkpoint (torch backend)")
    name = args.backend or ("torch" if args.checkpoint else
                            "tensorrt" if Path(args.model).suffix.lower() in (".engine", ".plan", ".trt")
                            else "onnxruntime")
    if (name == "torch") != bool(args.checkpoint):
        raise InputError("--backend torch serves a --checkpoint; onnxruntime and tensorrt serve a --model")
    return BackendChoice(name, args.checkpoint or args.model, backend_options(name, args), settings_from_args(args))


def run(args) -> int:
    from runtime.serving.server import ServeConfig, Server

    config = ServeConfig(backend_choice(args), host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
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
