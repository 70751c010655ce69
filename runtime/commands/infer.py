"""`deqflow infer`: flow of an image pair, a folder of frames or a video, with any backend.

Pair: flow.flo, flow.png, panel.png, residual.png (when the solver runs on the host or in torch), error.png
and flow_gt.png with --gt, summary.json. Sequence (--folder / --video): one flow per consecutive pair, written
frame by frame (flow/NAME.flo, kitti/NAME.png, color/NAME.png as chosen with --format), a frames.jsonl line per
frame (iterations, warm or cold, residual, seconds), summary.json, and optionally a colour video assembled from
the colour frames at the end. A re-run skips frames whose outputs exist (resume after an interruption);
--warm-start starts each frame from the previous frame's fixed point (split layout or torch backend).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

HELP = ("estimate optical flow of an image pair, a folder of frames or a video with the torch, onnxruntime or "
        "tensorrt backend (warm start, resumable, .flo / KITTI .png / colour pictures or video)")

FORMATS = ("flo", "kitti", "color")


def add_arguments(p) -> None:
    from deqflow.cli_args import count, positive_number
    from runtime.commands.common import add_backend_options, add_solver_args

    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default=None,
                   help="default: torch with --checkpoint, onnxruntime with --model (tensorrt for .engine files)")
    g.add_argument("--checkpoint", default=None, help="official DEQ-Flow .pth or deqflow checkpoint (torch backend; "
                   "default: none)")
    g.add_argument("--model", default=None, help="ONNX export (any layout; a split export by its base name or "
                   "any of its three files) or TensorRT engine (default: none)")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--image1", default=None, help="first image of a pair (default: none)")
    src.add_argument("--image2", default=None, help="second image of a pair (default: none)")
    src.add_argument("--folder", default=None, help="folder of frames, natural order of file names (default: none)")
    src.add_argument("--video", default=None, help="video file, read with OpenCV (default: none)")
    o = p.add_argument_group("output")
    o.add_argument("--output", required=True, help="output folder")
    o.add_argument("--format", default="flo,color",
                   help=f"sequence outputs, comma-separated from {', '.join(FORMATS)}")
    o.add_argument("--video-out", default=None, help="also write a colour video (e.g. flow.mp4, .avi) from the colour "
                   "frames when the sequence is complete (default: no video)")
    o.add_argument("--fps", type=positive_number, default=None,
                   help="frame rate of --video-out (default: the input's, or 10)")
    o.add_argument("--max-flow", type=positive_number, default=None,
                   help="colour scale in px (default: each frame's largest flow; fix it for videos)")
    o.add_argument("--gt", default=None, help="pair only: ground-truth flow (.flo / KITTI .png / .pfm) for EPE "
                   "(default: none)")
    o.add_argument("--max-frames", type=count, default=None, help="process at most this many flow frames "
                   "(default: all)")
    o.add_argument("--no-resume", action="store_true", help="recompute frames whose outputs already exist")
    p.add_argument("--warm-start", action="store_true",
                   help="start each frame from the previous frame's fixed point (split layout or torch backend)")
    p.add_argument("--warm-start-mode", choices=["reuse", "forward"], default="reuse",
                   help="reuse: start from the previous fixed point unchanged (see docs/warm_start.md); forward: "
                        "move it along its own flow first")
    p.add_argument("--pad-mode", choices=["sintel", "kitti"], default="sintel", help="how images are padded")
    add_solver_args(p)
    add_backend_options(p)


def make_backend(args):
    """The backend chosen by --backend / --checkpoint / --model, with the solver flags."""
    from deqflow.model_metadata import ENGINE_SUFFIXES
    from runtime.backends import create_backend
    from runtime.commands.common import backend_options, settings_from_args
    from runtime.errors import InputError

    if bool(args.checkpoint) == bool(args.model):
        raise InputError("give exactly one of --checkpoint (torch backend) and --model (ONNX export or engine)")
    name = args.backend
    if name is None:
        if args.checkpoint:
            name = "torch"
        else:
            name = "tensorrt" if Path(args.model).suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"
    if name == "torch" and not args.checkpoint:
        raise InputError("--backend torch needs --checkpoint")
    if name != "torch" and not args.model:
        raise InputError(f"--backend {name} needs --model (an ONNX export or engine); export the checkpoint with "
                         "deqflow export first")
    return create_backend(name, args.checkpoint or args.model, settings=settings_from_args(args),
                          **backend_options(name, args))


def run(args) -> int:
    from runtime.errors import InputError

    sources = [x for x in (args.image1 or args.image2, args.folder, args.video) if x]
    if len(sources) != 1:
        raise InputError("give one input: --image1 and --image2, or --folder, or --video")
    if (args.image1 is None) != (args.image2 is None):
        raise InputError("a pair needs both --image1 and --image2")
    if args.gt and not args.image1:
        raise InputError("--gt works with a pair (--image1/--image2)")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {args.format!r}")
    if args.video_out and "color" not in formats:
        formats.append("color")
    if args.image1:
        return run_pair(args)
    return run_sequence(args, formats)


# --- pair ----------------------------------------------------------------------------------------------


def run_pair(args) -> int:
    from runtime.preprocessing import load_image

    img1, img2 = load_image(args.image1), load_image(args.image2)  # read before anything is created
    gt = None
    if args.gt:
        from deqflow.flow_io import read_flow

        gt = read_flow(args.gt)
    kitti = "kitti" in [f.strip() for f in args.format.split(",")]
    report_pair(make_backend(args), img1, img2, Path(args.output), gt=gt, pad_mode=args.pad_mode,
                max_flow=args.max_flow, kitti=kitti)
    return 0


def report_pair(backend, image1, image2, out_dir: Path, *, gt=None, label: str = "pair", pad_mode: str = "sintel",
                max_flow: float | None = None, kitti: bool = False) -> dict:
    """Run `backend` on one uint8 RGB pair (and close it), then write the pair report (deqflow.pair_report)."""
    import numpy as np

    from deqflow.pair_report import PairRun, write_pair_report
    from runtime.pipeline import FlowEstimator

    try:
        t0 = time.perf_counter()
        pair = FlowEstimator(backend, pad_mode=pad_mode)(image1, image2)
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    r = pair.result
    run = PairRun(image1=image1, flow=pair.flow, iterations=r.iterations, final_abs=float(np.max(r.residual)),
                  final_rel=None if r.residual_rel is None else float(np.max(r.residual_rel)), seconds=seconds,
                  abs_trace=None if r.abs_trace is None else r.abs_trace[0],
                  rel_trace=None if r.rel_trace is None else r.rel_trace[0], backend=backend.label,
                  settings=backend.resolved.as_dict())
    return write_pair_report(out_dir, run, gt=gt, label=label, max_flow=max_flow, kitti=kitti)


# --- sequences -------------------------------------------------------------------------------------------


def frame_outputs(out_dir: Path, name: str, formats: list[str]) -> dict[str, Path]:
    sub = {"flo": ("flow", ".flo"), "kitti": ("kitti", ".png"), "color": ("color", ".png")}
    return {f: out_dir / sub[f][0] / f"{name}{sub[f][1]}" for f in formats}


def run_sequence(args, formats: list[str]) -> int:
    from runtime.pipeline import FlowEstimator
    from runtime.preprocessing import frame_source

    source = frame_source(args.folder or args.video)
    backend = make_backend(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    estimator = FlowEstimator(backend, pad_mode=args.pad_mode, warm_start=args.warm_start,
                              forward_warp=args.warm_start_mode == "forward")
    t_start = time.perf_counter()
    try:
        records, skipped = run_frames(args, source, estimator, out_dir, formats)
    finally:
        backend.close()
    summary = sequence_summary(args, backend.label, formats, records, skipped, time.perf_counter() - t_start)
    if args.video_out:
        fps = args.fps or source.fps or 10.0
        video = write_color_video(out_dir / args.video_out, out_dir / "color", fps)
        summary["video"] = str(video)
        print(f"wrote {video}")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    msg = f"{len(records)} frame(s) computed, {skipped} already done (skipped)"
    if records:
        msg += f", mean {summary['mean_iterations']:.1f} iterations/frame"
        if summary["mean_iterations_warm"] is not None and summary["mean_iterations_cold"] is not None:
            msg += f" (cold {summary['mean_iterations_cold']:.1f}, warm {summary['mean_iterations_warm']:.1f})"
    print(msg + f"; wrote {out_dir}")
    return 0


def run_frames(args, source, estimator, out_dir: Path, formats: list[str]) -> tuple[list[dict], int]:
    """Flow of every consecutive pair of `source` (up to --max-frames), frame outputs and a frames.jsonl line
    written as each finishes; pairs whose outputs exist are skipped unless --no-resume. -> (records, skipped)."""
    limit = args.max_frames
    records: list[dict] = []
    skipped = 0
    total = len(source) - 1 if len(source) else None
    if limit is not None and total is not None:
        total = min(total, limit)
    prev = None
    for frame in source:
        if prev is None:
            prev = frame
            continue
        if limit is not None and len(records) + skipped >= limit:
            break
        outputs = frame_outputs(out_dir, prev.name, formats)
        if not args.no_resume and all(p.is_file() for p in outputs.values()):
            skipped += 1
            estimator.reset()  # the warm-start chain is broken: the next computed frame starts cold
            prev = frame
            continue
        pair = estimator(prev.rgb, frame.rgb)
        rec = write_frame(pair, prev, outputs, args.max_flow, out_dir / "frames.jsonl")
        records.append(rec)
        of = f"/{total}" if total else ""
        kind = "warm" if pair.warm else "cold"
        print(f"frame {len(records) + skipped}{of} {prev.name}: {rec['iterations']} iterations ({kind}), "
              f"residual {rec['final_abs_residual']:.3g}, {rec['seconds']:.2f} s", flush=True)
        prev = frame
    return records, skipped


def write_frame(pair, frame, outputs: dict[str, Path], max_flow: float | None, log_path: Path) -> dict:
    """One computed pair's outputs and its frames.jsonl line (appended at once: an interrupted run keeps it)."""
    import numpy as np

    from deqflow.flow_io import write_flow
    from deqflow.image_io import write_image
    from deqflow.viz import flow_to_color

    r = pair.result
    if "flo" in outputs:
        write_flow(outputs["flo"], pair.flow)
    if "kitti" in outputs:
        write_flow(outputs["kitti"], pair.flow)
    if "color" in outputs:
        write_image(outputs["color"], flow_to_color(pair.flow, max_flow=max_flow))
    rec = {"index": frame.index, "name": frame.name, "iterations": int(r.iterations), "warm": pair.warm,
           "final_abs_residual": float(np.max(r.residual)),
           "final_rel_residual": None if r.residual_rel is None else float(np.max(r.residual_rel)),
           "seconds": round(r.seconds, 4)}
    with open(log_path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    return rec


def sequence_summary(args, backend_label: str, formats: list[str], records: list[dict], skipped: int,
                     seconds: float) -> dict:
    import numpy as np

    summary = {"input": str(args.folder or args.video), "backend": backend_label, "warm_start": args.warm_start,
               "warm_start_mode": args.warm_start_mode if args.warm_start else None,
               "frames_computed": len(records), "frames_skipped": skipped, "formats": formats,
               "seconds": round(seconds, 3)}
    if records:
        its = [r["iterations"] for r in records]
        warm = [r["iterations"] for r in records if r["warm"]]
        cold = [r["iterations"] for r in records if not r["warm"]]
        summary.update(iterations_per_frame=its, mean_iterations=float(np.mean(its)),
                       mean_iterations_warm=float(np.mean(warm)) if warm else None,
                       mean_iterations_cold=float(np.mean(cold)) if cold else None,
                       mean_seconds=float(np.mean([r["seconds"] for r in records])))
    return summary


def write_color_video(path: Path, color_dir: Path, fps: float) -> Path:
    """Assemble the colour frames (natural order) into a video, atomically (deqflow.fileio)."""
    import cv2
    import numpy as np

    from deqflow.fileio import atomic_outputs
    from deqflow.image_io import read_image
    from runtime.errors import InputError
    from runtime.preprocessing import _natural_key

    files = sorted(color_dir.glob("*.png"), key=lambda p: _natural_key(p.name))
    if not files:
        raise InputError(f"no colour frames in {color_dir} to make a video from")
    codec = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}.get(path.suffix.lower())
    if codec is None:
        raise InputError(f"--video-out {path.name}: use .mp4 or .avi")
    first = read_image(files[0])
    h, w = first.shape[:2]
    with atomic_outputs(path) as (tmp,):
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), (w, h))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot write {path.suffix} video with codec {codec} here; try --video-out "
                             "flow.avi")
        try:
            for f in files:
                writer.write(np.ascontiguousarray(read_image(f)[:, :, ::-1]))
        finally:
            writer.release()
    return path

