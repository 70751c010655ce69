"""`deqflow infer`: flow of an image pair, a folder of frames or a video, with any backend.

Pair: flow.flo, flow.png, panel.png, residual.png (when the solver runs on the host or in torch), error.png
and flow_gt.png with --gt, summary.json. Sequence (--folder / --video): one flow per consecutive pair, written
frame by frame (flow/NAME.flo, kitti/NAME.png, color/NAME.png as chosen with --format), a frames.jsonl line per
frame (iterations, warm or cold, residual, seconds), summary.json, and optionally a colour video assembled from
the colour frames at the end. The sequence's manifest.json (runtime.manifest) records the model, backend,
settings and input: a re-run into the same folder reuses the finished frames only when all of them match,
and is refused otherwise (--overwrite recomputes). --warm-start starts each frame from the previous frame's
fixed point (split layout or torch backend).

Paths: every path on the command line, --video-out included, is relative to the current directory.
Everything is checked (output paths, ground truth, a damaged video, a stale output folder) before any
frame is computed; if a late write fails, the results computed so far are kept or printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

HELP = ("estimate optical flow of an image pair, a folder of frames or a video with the torch, onnxruntime or "
        "tensorrt backend (warm start, resumable, .flo / KITTI .png / colour pictures or video)")

FORMATS = ("flo", "kitti", "color")


def add_arguments(p) -> None:
    from deqflow.cli_args import count, non_negative_number, positive_number
    from deqflow.solver_spec import WARM_FLOW_TOL
    from runtime.commands.common import add_backend_options, add_solver_args

    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default=None,
                   help="default: torch with --checkpoint, onnxruntime with --model (tensorrt for .engine files)")
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
    add_solver_args(p)
    add_backend_options(p)


def make_backend(args):
    """The backend chosen by --backend / --checkpoint / --model, with the solver flags."""
    from deqflow.errors import InputError
    from deqflow.model_metadata import ENGINE_SUFFIXES
    from runtime.backends import create_backend
    from runtime.commands.common import backend_options, settings_from_args

    if args.server:
        return server_backend(args)
    if bool(args.checkpoint) == bool(args.model):
        raise InputError("give exactly one of --checkpoint (torch backend), --model (ONNX export or engine) and "
                         "--server (a running deqflow serve)")
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
    settings = replace(settings_from_args(args), warm_flow_tol=args.warm_flow_tol)
    return create_backend(name, args.checkpoint or args.model, settings=settings, **backend_options(name, args))


def server_backend(args):
    """The solves of this run on a `deqflow serve` server: its own model and solver settings apply."""
    from deqflow.errors import InputError
    from runtime.serving.remote import ServerBackend

    if args.checkpoint or args.model or args.backend:
        raise InputError("--server runs the server's model: leave out --checkpoint, --model and --backend")
    if args.warm_start:
        raise InputError("--warm-start is not available with --server (the server's deqflow_stream model keeps "
                         "each stream's fixed point itself; runtime.serving.client.Client.stream uses it)")
    return ServerBackend(args.server)


VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def run(args) -> int:
    from deqflow.errors import InputError
    from deqflow.fileio import check_output_dir

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


def check_video_out(path: Path, video: str | None = None) -> Path:
    """--video-out checked before any frame is computed: a known container, a writable file path that is not
    the input video."""
    from deqflow.errors import InputError
    from deqflow.fileio import check_output_file

    if video and path.resolve() == Path(video).resolve():
        raise InputError(f"--video-out {path} is the input video: give another file name")
    if path.suffix.lower() not in VIDEO_CODECS:
        raise InputError(f"--video-out {path}: unknown video type {path.suffix or '(no extension)'!r}; use one of "
                         f"{', '.join(VIDEO_CODECS)} (e.g. --video-out flow.mp4)")
    return check_output_file(path, "--video-out")


# --- pair ----------------------------------------------------------------------------------------------


def run_pair(args) -> int:
    from deqflow.image_io import read_image as load_image

    img1, img2 = load_image(args.image1), load_image(args.image2)  # read before anything is created
    gt = read_ground_truth(args.gt, img1.shape[:2]) if args.gt else None
    kitti = "kitti" in [f.strip() for f in args.format.split(",")]
    report_pair(make_backend(args), img1, img2, Path(args.output), gt=gt, pad_mode=args.pad_mode,
                max_flow=args.max_flow, kitti=kitti)
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
                  settings=backend.resolved.as_dict(), stop_rule=stop_rule_text(backend),
                  stop_reason=getattr(r, "stop_reason", None))
    return write_pair_report(out_dir, run, gt=gt, label=label, max_flow=max_flow, kitti=kitti)


def stop_rule_text(backend) -> str:
    """The stop rule the backend's solves follow, in one line ('' for a server: its rule is the server's)."""
    if backend.name == "server" or backend.resolved.max_iter is None:
        return ""
    return backend.resolved.stop_rule().describe()


# --- sequences -------------------------------------------------------------------------------------------


def frame_outputs(out_dir: Path, name: str, formats: list[str]) -> dict[str, Path]:
    sub = {"flo": ("flow", ".flo"), "kitti": ("kitti", ".png"), "color": ("color", ".png")}
    return {f: out_dir / sub[f][0] / f"{name}{sub[f][1]}" for f in formats}


def sequence_manifest(args, backend, source):
    """What this run's outputs depend on (runtime.manifest): compared with the folder's before any work."""
    from runtime.manifest import SequenceManifest, model_identity

    model_path = args.checkpoint or args.model or args.server
    processing = {"pad_mode": args.pad_mode, "warm_start": args.warm_start,
                  "warm_start_mode": args.warm_start_mode if args.warm_start else None, "max_flow": args.max_flow}
    return SequenceManifest(model=model_identity(backend, model_path), backend=backend.label,
                            settings=backend.resolved.as_dict(), processing=processing, input=source.identity(),
                            model_path=str(model_path))


def prepare_output(out_dir: Path, manifest, overwrite: bool) -> bool:
    """Check the folder against `manifest` (refused if it holds another run's results), clear it with
    --overwrite, remove killed writers' temporary files, record the manifest. -> whether results are reused."""
    from deqflow.fileio import remove_stale_temps
    from runtime.manifest import RESULT_DIRS, check_resumable, clear_results, write_manifest

    resumed = False if overwrite else check_resumable(out_dir, manifest)
    if overwrite:
        clear_results(out_dir)
    for folder in (out_dir, *(out_dir / n for n in RESULT_DIRS)):
        remove_stale_temps(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "summary.json").is_file():
        (out_dir / "summary.json").unlink()  # it describes the last completed run only
    write_manifest(out_dir, manifest)
    return resumed


def finished_frames(out_dir: Path, names: list[str], formats: list[str]) -> dict[str, dict]:
    """Frames (of the sequence's `names`) that an earlier matching run completed: every output file and a
    frames.jsonl line. frames.jsonl is rewritten with exactly those lines, once each (a killed run may have
    left a partial last line, or outputs of a frame whose line was never written: it is computed again)."""
    from deqflow.fileio import atomic_write_bytes

    log = out_dir / "frames.jsonl"
    wanted = set(names)
    records: dict[str, dict] = {}
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("name") in wanted:
                records[rec["name"]] = rec
    done = {n: r for n, r in records.items()
            if all(p.is_file() for p in frame_outputs(out_dir, n, formats).values())}
    if log.is_file() or done:
        kept = [done[n] for n in names if n in done]
        atomic_write_bytes(log, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return done


def run_sequence(args, formats: list[str]) -> int:
    from runtime.pipeline import FlowEstimator
    from runtime.preprocessing import frame_source

    source = frame_source(args.folder or args.video)  # a damaged video is refused here
    out_dir = Path(args.output)
    backend = make_backend(args)
    t_start = time.perf_counter()
    try:
        estimator = FlowEstimator(backend, pad_mode=args.pad_mode, warm_start=args.warm_start,
                                  forward_warp=args.warm_start_mode == "forward")
        manifest = sequence_manifest(args, backend, source)
        resumed = prepare_output(out_dir, manifest, args.overwrite)
        every = source.names()[:-1]  # the outputs of the pair (t, t+1) are named after frame t
        names = every if args.max_frames is None else every[: args.max_frames]
        done = finished_frames(out_dir, every, formats) if resumed else {}
        records, reused = run_frames(source, estimator, out_dir, formats, names, done, args.max_flow)
    finally:
        backend.close()
    summary = sequence_summary(args, manifest, formats, records, reused, time.perf_counter() - t_start)
    summary["resumed"] = resumed
    color = [frame_outputs(out_dir, n, ["color"])["color"] for n in names] if args.video_out else []
    finish_sequence(args, out_dir, summary, color, args.fps or source.fps or 10.0)
    msg = f"{len(records)} frame(s) computed, {len(reused)} already done (skipped)"
    if records:
        msg += f", mean {summary['mean_iterations']:.1f} iterations/frame"
        if summary["mean_iterations_warm"] is not None and summary["mean_iterations_cold"] is not None:
            msg += f" (cold {summary['mean_iterations_cold']:.1f}, warm {summary['mean_iterations_warm']:.1f})"
    print(msg + f"; wrote {out_dir}")
    return 0


def run_frames(source, estimator, out_dir: Path, formats: list[str], names: list[str], done: dict[str, dict],
               max_flow: float | None) -> tuple[list[dict], list[str]]:
    """Flow of the pairs named `names` (frame t -> t+1, named after t); the `done` ones are reused. Each
    computed frame's outputs and frames.jsonl line are written as it finishes. -> (records, reused names)."""
    from deqflow.errors import DeqflowError

    records: list[dict] = []
    reused: list[str] = []
    wanted = set(names)
    prev = None
    for frame in source:
        if prev is not None and prev.name in wanted:
            if prev.name in done:
                reused.append(prev.name)
                estimator.reset()  # the warm-start chain is broken: the next computed frame starts cold
            else:
                pair = estimator(prev.rgb, frame.rgb)
                try:
                    rec = write_frame(pair, prev, frame_outputs(out_dir, prev.name, formats), max_flow,
                                      out_dir / "frames.jsonl")
                except OSError as exc:
                    raise DeqflowError(f"cannot write the outputs of frame {prev.name} in {out_dir} ({exc}); the "
                                       f"{len(records) + len(reused)} frame(s) before it are kept there, and a "
                                       "rerun resumes after them") from None
                records.append(rec)
                kind = "warm" if pair.warm else "cold"
                print(f"frame {len(records) + len(reused)}/{len(names)} {prev.name}: {rec['iterations']} "
                      f"iterations ({kind}), residual {rec['final_abs_residual']:.3g}, {rec['seconds']:.2f} s",
                      flush=True)
            if len(records) + len(reused) >= len(names):
                break
        prev = frame
    return records, reused


def write_frame(pair, frame, outputs: dict[str, Path], max_flow: float | None, log_path: Path) -> dict:
    """One computed pair's outputs (each atomic) and then its frames.jsonl line: a frame counts as finished
    on resume only when its line is there, so a run killed between the two computes it again."""
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
        fh.write(json.dumps(rec) + "\n")  # one short write: a kill leaves the whole line or a partial one
    return rec


def sequence_summary(args, manifest, formats: list[str], records: list[dict], reused: list[str],
                     seconds: float) -> dict:
    """What this run did: the frames it computed (and their statistics) apart from those it reused."""
    import numpy as np

    summary = {"input": str(args.folder or args.video), "backend": manifest.backend, "model": manifest.model_path,
               "model_digest": manifest.model, "settings": manifest.settings, "warm_start": args.warm_start,
               "warm_start_mode": args.warm_start_mode if args.warm_start else None,
               "frames_computed": len(records), "frames_reused": len(reused), "frames_skipped": len(reused),
               "computed": [r["name"] for r in records], "reused": reused, "formats": formats,
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


def finish_sequence(args, out_dir: Path, summary: dict, color_files: list[Path], fps: float) -> None:
    """The video (if asked) and summary.json. The frames are on disk already: when the video cannot be
    written the summary still is, and when summary.json cannot be written it is printed."""
    from deqflow.errors import DeqflowError

    failure = None
    if args.video_out:
        try:
            video = write_color_video(Path(args.video_out), color_files, fps)
            summary["video"] = str(video)
            print(f"wrote {video}")
        except (DeqflowError, OSError) as exc:
            failure = exc
    save_summary(out_dir / "summary.json", summary, f"the frames are in {out_dir}")
    if failure is not None:
        raise DeqflowError(f"{failure}; the {len(color_files)} frame(s) and summary.json are kept in {out_dir}")


def save_summary(path: Path, summary: dict, kept: str) -> None:
    """summary.json, atomically; printed to stdout (and a one-line error) when it cannot be written."""
    from deqflow.errors import DeqflowError
    from deqflow.fileio import atomic_write_bytes

    text = json.dumps(summary, indent=2)
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as exc:
        print(text)
        raise DeqflowError(f"cannot write {path} ({exc.strerror or exc}); the summary is printed above and {kept}") \
            from None


def write_color_video(path: Path, files: list[Path], fps: float) -> Path:
    """Assemble the colour frames `files` (in order) into a video, atomically (deqflow.fileio)."""
    import cv2
    import numpy as np

    from deqflow.errors import InputError
    from deqflow.fileio import atomic_outputs, check_output_file
    from deqflow.image_io import read_image

    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError("no colour frames to make the --video-out video from")
    codec = VIDEO_CODECS[path.suffix.lower()]
    first = read_image(files[0])
    h, w = first.shape[:2]
    check_output_file(path, "--video-out")  # still writable? (then a failure below is the codec's)
    with atomic_outputs(path) as (tmp,):
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), (w, h))
        if not writer.isOpened():
            raise InputError(f"--video-out {path}: OpenCV cannot encode {path.suffix} video with codec {codec} "
                             "here; try --video-out flow.avi")
        try:
            for f in files:
                writer.write(np.ascontiguousarray(read_image(f)[:, :, ::-1]))
        finally:
            writer.release()
    return path
