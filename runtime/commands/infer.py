"""`deqflow infer`: flow of an image pair, a folder of frames or a video, with any backend.

Pair: flow.flo, flow.png, panel.png, residual.png (when the solver runs on the host or in torch), error.png
and flow_gt.png with --gt, summary.json. Sequence (--folder / --video): one flow per consecutive pair, written
frame by frame (flow/NAME.flo, kitti/NAME.png, color/NAME.png as chosen with --format), a frames.jsonl line per
frame (iterations, warm or cold, residual, seconds), summary.json, and optionally a colour video assembled from
the colour frames at the end (runtime.sequence, runtime.video_writer). The sequence's manifest.json
(runtime.manifest) records the model, backend, settings and input: a re-run into the same folder reuses the
finished frames only when all of them match, and is refused otherwise (--overwrite recomputes). --warm-start
starts each frame from the previous frame's fixed point (split layout or torch backend).

This module is the command: its flags, the backend choice (runtime.commands.common.choose_backend), the
input checks and the pair report.

Paths: every path on the command line, --video-out included, is relative to the current directory.
Everything is checked (output paths, ground truth, a damaged video, a stale output folder) before any
frame is computed; if a late write fails, the results computed so far are kept or printed.
"""

from __future__ import annotations

import time
from pathlib import Path

from runtime.manifest import FRAME_OUTPUTS

HELP = ("estimate optical flow of an image pair, a folder of frames or a video with the torch, onnxruntime or "
        "tensorrt backend (warm start, resumable, .flo / KITTI .png / colour pictures or video)")

FORMATS = tuple(FRAME_OUTPUTS)
PLAN_HINT = " (e.g. infer at a reduced size with --max-side)"
"""Where the memory plan's refusal points for a smaller frame."""


def add_arguments(p) -> None:
    from deqflow.cli_args import add_memory_args, add_resolution_args, count, non_negative_number, positive_number
    from deqflow.solver_spec import WARM_FLOW_TOL
    from runtime.commands.common import add_backend_arg, add_backend_options, add_solver_args

    g = p.add_argument_group("model")
    add_backend_arg(g)
    g.add_argument("--checkpoint", default=None, help="official DEQ-Flow .pth or deqflow checkpoint (torch backend; "
                   "default: none)")
    g.add_argument("--model", default=None, help="ONNX export (any layout; a split export by its base name, e.g. "
                   "model.onnx for model.encoder/step/decode.onnx, or any of its three files) or TensorRT engine "
                   "(default: none)")
    g.add_argument("--server", default=None, metavar="URL",
                   help="send the solves to a running `deqflow serve` instead (http://HOST:8000 or grpc://HOST:8001; "
                        "its model and solver settings apply; default: none)")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--image1", default=None, help="first image of a pair (default: none)")
    src.add_argument("--image2", default=None, help="second image of a pair (default: none)")
    src.add_argument("--folder", default=None, help="folder of frames, natural order of file names (default: none)")
    src.add_argument("--video", default=None, help="video file, read with OpenCV; decoded once up front, and "
                     "refused if any frame fails to decode (default: none)")
    o = p.add_argument_group("output")
    o.add_argument("--output", required=True, help="output folder")
    o.add_argument("--format", default="flo,color",
                   help=f"sequence outputs, comma-separated from {', '.join(FORMATS)}")
    o.add_argument("--video-out", default=None, help="also write a colour video (.mp4, .m4v, .mov, .avi, .mkv) of "
                   "the colour frames at the end; a relative path is relative to the current directory, like "
                   "every other path (e.g. out/flow.mp4 to put it in --output out) (default: no video)")
    o.add_argument("--fps", type=positive_number, default=None,
                   help="frame rate of --video-out (default: the input's, or 10)")
    o.add_argument("--max-flow", type=positive_number, default=None,
                   help="colour scale in px (default: each frame's largest flow; fix it for videos)")
    o.add_argument("--gt", default=None, help="pair only: ground-truth flow (.flo / KITTI .png / .pfm) for EPE "
                   "(default: none)")
    o.add_argument("--max-frames", type=count, default=None, help="process at most this many flow frames "
                   "(default: all)")
    o.add_argument("--overwrite", "--no-resume", dest="overwrite", action="store_true",
                   help="discard the sequence results already in --output (frames, frames.jsonl, summary, manifest) "
                        "and recompute; without it a rerun reuses the finished frames when the model, backend, "
                        "settings and input are the same as recorded in OUTPUT/manifest.json, and stops otherwise")
    p.add_argument("--warm-start", action="store_true",
                   help="start each frame from the previous frame's fixed point (split layout or torch backend)")
    p.add_argument("--warm-start-mode", choices=["reuse", "forward"], default="reuse",
                   help="reuse: start from the previous fixed point unchanged (see docs/warm_start.md); forward: "
                        "move it along its own flow first")
    p.add_argument("--warm-flow-tol", type=non_negative_number, default=None, metavar="PX",
                   help="with --warm-start: a warm-started frame also stops once its flow step (mean |delta flow| "
                        f"on the 1/8 grid, px) is below PX; {WARM_FLOW_TOL:g} is the shipped model's recommendation, "
                        "see docs/warm_start.md; 0: off (default: the model's own rule, as for cold frames)")
    p.add_argument("--pad-mode", choices=["sintel", "kitti"], default="sintel", help="how images are padded")
    add_resolution_args(p)
    add_solver_args(p)
    add_backend_options(p)
    add_memory_args(p.add_argument_group("memory"))


def make_backend(args, size: tuple[int, int]):
    """The backend chosen by --server, or --backend / --checkpoint / --model with the solver flags, once the
    memory plan for frames of `size` fits (runtime.commands.common.plan_run; a server plans its own). With
    --scale / --max-side the plan is made at the size the model runs at."""
    from deqflow.cli_args import resolution_from_args
    from runtime.commands.common import choose_backend, plan_run, settings_from_args

    if args.server:
        return server_backend(args)
    choice = choose_backend(args, settings_from_args(args), also=" (or --server, a running deqflow serve)")
    plan_run(choice, resolution_from_args(args).model_size(size), args, hint=PLAN_HINT)
    return choice.open()


def server_backend(args):
    """The solves of this run on a `deqflow serve` server: its own model and solver settings apply."""
    from deqflow.errors import InputError
    from runtime.serving.remote import ServerBackend

    if args.checkpoint or args.model or args.backend:
        raise InputError("--server runs the server's model: leave out --checkpoint, --model and --backend")
    return ServerBackend(args.server)


def run(args) -> int:
    from deqflow.errors import InputError
    from deqflow.fileio import check_output_dir
    from runtime.video_writer import check_video_out

    sources = [x for x in (args.image1 or args.image2, args.folder, args.video) if x]
    if len(sources) != 1:
        raise InputError("give one input: --image1 and --image2, or --folder, or --video")
    if (args.image1 is None) != (args.image2 is None):
        raise InputError("a pair needs both --image1 and --image2")
    if args.gt and not args.image1:
        raise InputError("--gt works with a pair (--image1/--image2)")
    if args.video_out and args.image1:
        raise InputError("--video-out works with a sequence (--folder or --video)")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {args.format!r}")
    check_output_dir(args.output)
    if args.video_out:
        check_video_out(Path(args.video_out), args.video)
        if "color" not in formats:
            formats.append("color")
    if args.image1:
        return run_pair(args)
    return run_sequence(args, formats)


# --- pair ----------------------------------------------------------------------------------------------


def run_pair(args) -> int:
    from deqflow.cli_args import resolution_from_args
    from deqflow.image_io import read_image as load_image

    img1, img2 = load_image(args.image1), load_image(args.image2)  # read before anything is created
    gt = read_ground_truth(args.gt, img1.shape[:2]) if args.gt else None
    kitti = "kitti" in [f.strip() for f in args.format.split(",")]
    report_pair(make_backend(args, img1.shape[:2]), img1, img2, Path(args.output), gt=gt, pad_mode=args.pad_mode,
                max_flow=args.max_flow, kitti=kitti, resolution=resolution_from_args(args))
    return 0


def read_ground_truth(path: str, size: tuple[int, int]):
    """(flow, valid) of --gt, refused before inference unless it has the images' size."""
    from deqflow.errors import InputError
    from deqflow.flow_io import read_flow

    gt = read_flow(path)
    shape = tuple(gt[0].shape[:2])
    if shape != tuple(size):
        raise InputError(f"--gt {path} is {shape[0]}x{shape[1]} but the images are {size[0]}x{size[1]}: give the "
                         "ground truth of this pair (same height and width)")
    return gt


def report_pair(backend, image1, image2, out_dir: Path, *, gt=None, label: str = "pair", pad_mode: str = "sintel",
                max_flow: float | None = None, kitti: bool = False, resolution=None) -> dict:
    """Run `backend` on one uint8 RGB pair (and close it), then write the pair report (deqflow.pair_report).
    `resolution` (deqflow.resolution.Resolution): run the model on a shrunk copy, report the flow at full size."""
    import numpy as np

    from deqflow.pair_report import PairRun, write_pair_report
    from runtime.pipeline import FlowEstimator

    try:
        t0 = time.perf_counter()
        pair = FlowEstimator(backend, pad_mode=pad_mode, resolution=resolution)(image1, image2)
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    r = pair.result
    run = PairRun(image1=image1, flow=pair.flow, iterations=r.iterations, final_abs=float(np.max(r.residual)),
                  final_rel=None if r.residual_rel is None else float(np.max(r.residual_rel)), seconds=seconds,
                  abs_trace=None if r.abs_trace is None else r.abs_trace[0],
                  rel_trace=None if r.rel_trace is None else r.rel_trace[0], backend=backend.label,
                  settings=backend.solve_dict(), stop_rule=stop_rule_text(backend),
                  stop_reason=getattr(r, "stop_reason", None), model_size=pair.model_size,
                  resolution=None if resolution is None else resolution.describe())
    return write_pair_report(out_dir, run, gt=gt, label=label, max_flow=max_flow, kitti=kitti)


def stop_rule_text(backend) -> str:
    """The stop rule the backend's solves follow, in one line ('' for a server: its rule is the server's)."""
    return "" if backend.resolved is None else backend.resolved.stop.describe()


# --- sequences -------------------------------------------------------------------------------------------


def run_sequence(args, formats: list[str]) -> int:
    """The sequence of --folder / --video through runtime.sequence (resume, frames, summary, video)."""
    from deqflow.cli_args import resolution_from_args
    from runtime.preprocessing import frame_source
    from runtime.sequence import SequenceOptions, process_sequence, summary_line

    source = frame_source(args.folder or args.video)  # a damaged video is refused here
    options = SequenceOptions(formats=formats, pad_mode=args.pad_mode, warm_start=args.warm_start,
                              warm_start_mode=args.warm_start_mode, max_flow=args.max_flow,
                              max_frames=args.max_frames, overwrite=args.overwrite,
                              video_out=Path(args.video_out) if args.video_out else None, fps=args.fps,
                              resolution=resolution_from_args(args))
    out_dir = Path(args.output)
    summary = process_sequence(source, make_backend(args, first_frame_size(source)), out_dir, options,
                               model_path=args.checkpoint or args.model or args.server,
                               input_name=str(args.folder or args.video))
    print(summary_line(summary, out_dir))
    return 0


def first_frame_size(source) -> tuple[int, int]:
    """(H, W) of a sequence's first frame (every frame of a sequence has one size)."""
    frames = iter(source)
    try:
        return tuple(next(frames).rgb.shape[:2])
    finally:
        close = getattr(frames, "close", None)
        if close:
            close()
