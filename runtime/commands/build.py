"""`deqflow build`: a TensorRT engine (or the three engines of a split export) from a deqflow ONNX export."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command modules import their dependencies when run
    from deqflow.model_metadata import ModelMetadata
    from deqflow.shapes import ShapeProfiles
    from runtime.modelfile import ModelFile
    from runtime.tensorrt.build import BuildSettings

MAX_OPTIMIZATION_LEVEL = 5
"""TensorRT's builder optimization levels are 0..5."""

HELP = ("build a TensorRT engine from a deqflow ONNX export (profiles, precision, TF32, timing cache); split "
        "exports give <stem>.encoder/.step/.decode engines")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deqflow.cli_args import count, count_or_zero

    p.add_argument("--onnx", required=True, help="ONNX export (a split export by its base name or any part)")
    p.add_argument("--output", required=True, help="engine file, e.g. model.engine (+ model.engine.json)")
    p.add_argument("--shape", default=None, help="static image shape HxW or BxHxW (default: the export's)")
    p.add_argument("--min-shape", default=None, help="dynamic exports: profile minimum (HxW / BxHxW)")
    p.add_argument("--opt-shape", default=None, help="dynamic exports: profile optimum")
    p.add_argument("--max-shape", default=None, help="dynamic exports: profile maximum")
    p.add_argument("--engine-precision", dest="precision", choices=["fp32", "fp16", "graph"], default="fp32",
                   help="fp32; fp16 = TensorRT 10 builder flag (weak typing); graph = strongly typed, precision from "
                        "the ONNX (a `deqflow export --precision mixed16` graph; the only way on TensorRT 11)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 (off by default: float32 engines stay float32)")
    p.add_argument("--timing-cache", default=None, help="timing cache file, read before and updated after the build")
    p.add_argument("--workspace-mb", type=count, default=None,
                   help="builder workspace limit in MiB (default: TensorRT's)")
    p.add_argument("--optimization-level", type=optimization_level, default=None,
                   help="builder optimization level 0..5 (default: TensorRT's)")
    p.add_argument("--cache-dir", default=None, help="also keep the engine in this engine cache")
    p.add_argument("--device-id", type=count_or_zero, default=0, help="GPU index")
    p.add_argument("--verbose", action="store_true")


def optimization_level(text: str) -> int:
    """--optimization-level: TensorRT's builder levels, 0 to 5."""
    from deqflow.cli_args import count_or_zero

    value = count_or_zero(text)
    if value > MAX_OPTIMIZATION_LEVEL:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_OPTIMIZATION_LEVEL}, got {value}")
    return value


def _dynamic_profiles(args: argparse.Namespace, file: ModelFile, meta: ModelMetadata) -> ShapeProfiles:
    """Profiles of a dynamic export: the --min/--opt/--max-shape arguments over the export's shape hints."""
    from deqflow.errors import InputError
    from deqflow.shapes import ImageShape, ShapeHints

    if file.is_split:
        raise InputError("build TensorRT engines of the split layout from a static export (one engine per "
                         "resolution): re-export without --dynamic")
    opt_arg = args.opt_shape or args.shape
    given = {"min": args.min_shape, "opt": opt_arg, "max": args.max_shape}
    shapes = {k: ImageShape.parse(v).check_padded() if v else ImageShape.parse(meta.shape_hints[k]["image1"])
              for k, v in given.items()}
    return ShapeHints(**shapes).per_input(flow_init=bool(meta.flow_init))


def build_settings_from_args(args: argparse.Namespace, file: ModelFile) -> BuildSettings:
    """BuildSettings (validated without TensorRT) for the export `file`."""
    from deqflow.errors import InputError
    from deqflow.shapes import ImageShape, parse_shape_arg
    from runtime.tensorrt.build import BuildSettings

    meta = file.exported()
    profiles: ShapeProfiles = {}
    if meta.dynamic:
        profiles = _dynamic_profiles(args, file, meta)
    else:
        static = ImageShape(meta.batch, meta.height, meta.width)
        if any([args.min_shape, args.opt_shape, args.max_shape]):
            raise InputError(f"{file.path} is a static export ({static}); --min/--opt/--max-shape need a "
                             "--dynamic export")
        if args.shape and parse_shape_arg(args.shape, meta.batch) != static.as_list():
            raise InputError(f"{file.path} was exported for {static}, not "
                             f"{ImageShape.parse(args.shape, meta.batch)}: export at that size (or with --dynamic)")
    settings = BuildSettings(profiles=profiles, precision=args.precision, tf32=args.tf32,
                             workspace_mb=args.workspace_mb, optimization_level=args.optimization_level,
                             timing_cache=args.timing_cache)
    settings.validate(None, meta.precision)
    return settings


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from pathlib import Path

    from deqflow.errors import InputError
    from deqflow.fileio import check_output_file
    from deqflow.model_metadata import ENGINE_SUFFIXES, IMAGE_PARTS
    from runtime.modelfile import open_model_file
    from runtime.tensorrt import import_tensorrt
    from runtime.tensorrt.build import build_engine
    from runtime.tensorrt.cache import EngineCache, split_engine_paths, write_engine

    check_output_file(args.output, example="model.engine")
    file = open_model_file(args.onnx)
    if file.kind != "onnx":
        raise InputError(f"--onnx must be a deqflow ONNX export, got a {file.kind}: {args.onnx}")
    out = Path(args.output)
    if out.suffix.lower() not in ENGINE_SUFFIXES:
        raise InputError(f"--output {out} should end in {' or '.join(ENGINE_SUFFIXES)}")
    settings = build_settings_from_args(args, file)
    trt = import_tensorrt()  # the one clear error on machines without TensorRT
    settings.validate(trt.__version__, file.exported().precision)
    targets = split_engine_paths(out) if file.is_split else {"model": out}
    cache = EngineCache(args.cache_dir) if args.cache_dir else None
    for part, onnx_path in file.parts.items():
        t0 = time.perf_counter()
        part_settings = settings if part in IMAGE_PARTS else dataclasses.replace(settings, profiles={})
        plan, info = build_engine(onnx_path, part_settings, cache=cache, device_id=args.device_id,
                                  verbose=args.verbose)
        info["build_seconds"] = round(time.perf_counter() - t0, 2)
        write_engine(targets[part], plan, info)
        print(f"built {targets[part]} ({len(plan) / 2**20:.1f} MiB, TensorRT {info['tensorrt']}, {info['gpu']}, "
              f"{settings.precision}, TF32 {'on' if settings.tf32 else 'off'}, {info['build_seconds']} s)")
    return 0
