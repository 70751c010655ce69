"""A sequence run (`deqflow infer --folder/--video`): one flow per consecutive pair, written frame by frame
into the output folder (runtime.manifest.FRAME_OUTPUTS), a frames-log line per finished frame, the summary,
and the colour video at the end (runtime.video_writer).

The folder's manifest (runtime.manifest) is checked before any work: a rerun reuses the finished frames only
when the model, backend, settings, options and input all match, and is refused otherwise (`overwrite`
recomputes). A frame counts as finished only once its frames-log line is written, after its outputs, so a
killed run resumes exactly after its last finished frame. When a late write fails, what was computed is kept
(or the summary printed) and the error says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from deqflow.errors import DeqflowError
from deqflow.resolution import Resolution
from runtime.manifest import FRAMES_LOG, SUMMARY_NAME, SequenceManifest, frame_outputs
from runtime.video_writer import write_color_video

DEFAULT_FPS = 10.0
"""Frame rate of the colour video when neither the user nor the input gives one (a folder of frames)."""


@dataclass
class SequenceOptions:
    """What a sequence run is asked for, besides its input and backend."""

    formats: list[str]  # output formats (runtime.manifest.FRAME_OUTPUTS keys)
    pad_mode: str = "sintel"
    warm_start: bool = False
    warm_start_mode: str = "reuse"  # 'reuse' | 'forward' (runtime.pipeline.FlowEstimator)
    max_flow: float | None = None  # colour scale, px (None: each frame's largest flow)
    max_frames: int | None = None
    overwrite: bool = False  # discard the folder's results instead of resuming them
    video_out: Path | None = None
    fps: float | None = None  # of the video (None: the input's, else DEFAULT_FPS)
    resolution: Resolution = field(default_factory=Resolution)  # run the model on shrunk frames

    def processing(self) -> dict:
        """The options that change the written frames: recorded in the manifest, compared on resume (the
        resolution only when set, so manifests written before it existed still match a full-size rerun)."""
        out = {"pad_mode": self.pad_mode, "warm_start": self.warm_start,
               "warm_start_mode": self.warm_start_mode if self.warm_start else None, "max_flow": self.max_flow}
        if self.resolution.active:
            out["resolution"] = self.resolution.describe()
        return out


def process_sequence(source, backend, out_dir: Path, options: SequenceOptions, *, model_path: str,
                     input_name: str) -> dict:
    """Flow of the consecutive pairs of `source` (runtime.preprocessing.FrameSource) with `backend` (closed once
    the frames are done) into `out_dir`, resuming an earlier matching run; then the video and summary.json.
    -> the summary."""
    from runtime.pipeline import FlowEstimator

    t_start = time.perf_counter()
    try:
        estimator = FlowEstimator(backend, pad_mode=options.pad_mode, warm_start=options.warm_start,
                                  forward_warp=options.warm_start_mode == "forward", resolution=options.resolution)
        manifest = sequence_manifest(backend, source, options, model_path)
        resumed = prepare_output(out_dir, manifest, options.overwrite)
        every = source.names()[:-1]  # the outputs of the pair (t, t+1) are named after frame t
        names = every if options.max_frames is None else every[: options.max_frames]
        done = finished_frames(out_dir, every, options.formats) if resumed else {}
        records, reused = run_frames(source, estimator, out_dir, options, names, done)
    finally:
        backend.close()
    summary = sequence_summary(input_name, manifest, options, records, reused, time.perf_counter() - t_start)
    summary["resumed"] = resumed
    if options.resolution.active:
        summary.update(resolution=options.resolution.describe(),
                       model_size=None if estimator.model_size is None else list(estimator.model_size))
    color = [frame_outputs(out_dir, n, ["color"])["color"] for n in names] if options.video_out else []
    finish_sequence(options, out_dir, summary, color, options.fps or source.fps or DEFAULT_FPS)
    return summary


def sequence_manifest(backend, source, options: SequenceOptions, model_path: str) -> SequenceManifest:
    """What this run's outputs depend on (runtime.manifest): compared with the folder's before any work."""
    from runtime.manifest import model_identity

    return SequenceManifest(model=model_identity(backend, model_path), backend=backend.label,
                            settings=backend.solve_dict(), processing=options.processing(),
                            input=source.identity(), model_path=str(model_path))


def prepare_output(out_dir: Path, manifest: SequenceManifest, overwrite: bool) -> bool:
    """Check the folder against `manifest` (refused if it holds another run's results), clear it with
    `overwrite`, remove killed writers' temporary files, record the manifest. -> whether results are reused."""
    from deqflow.fileio import remove_stale_temps
    from runtime.manifest import RESULT_DIRS, check_resumable, clear_results, write_manifest

    resumed = False if overwrite else check_resumable(out_dir, manifest)
    if overwrite:
        clear_results(out_dir)
    for folder in (out_dir, *(out_dir / n for n in RESULT_DIRS)):
        remove_stale_temps(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / SUMMARY_NAME).is_file():
        (out_dir / SUMMARY_NAME).unlink()  # it describes the last completed run only
    write_manifest(out_dir, manifest)
    return resumed


def finished_frames(out_dir: Path, names: list[str], formats: list[str]) -> dict[str, dict]:
    """Frames (of the sequence's `names`) that an earlier matching run completed: every output file and a
    frames-log line. The log is rewritten with exactly those lines, once each (a killed run may have left a
    partial last line, or outputs of a frame whose line was never written: it is computed again)."""
    from deqflow.fileio import atomic_write_bytes

    log = out_dir / FRAMES_LOG
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


def run_frames(source, estimator, out_dir: Path, options: SequenceOptions, names: list[str],
               done: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Flow of the pairs named `names` (frame t -> t+1, named after t); the `done` ones are reused. Each
    computed frame's outputs and frames-log line are written as it finishes. -> (records, reused names)."""
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
                    rec = write_frame(pair, prev, frame_outputs(out_dir, prev.name, options.formats),
                                      options.max_flow, out_dir / FRAMES_LOG)
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
    """One computed pair's outputs (each atomic) and then its frames-log line: a frame counts as finished
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


def sequence_summary(input_name: str, manifest: SequenceManifest, options: SequenceOptions, records: list[dict],
                     reused: list[str], seconds: float) -> dict:
    """What this run did: the frames it computed (and their statistics) apart from those it reused from an
    earlier run (`frames_reused`, `reused`: not computed again)."""
    import numpy as np

    summary = {"input": input_name, "backend": manifest.backend, "model": manifest.model_path,
               "model_digest": manifest.model, "settings": manifest.settings, "warm_start": options.warm_start,
               "warm_start_mode": options.warm_start_mode if options.warm_start else None,
               "frames_computed": len(records), "frames_reused": len(reused),
               "computed": [r["name"] for r in records], "reused": reused, "formats": options.formats,
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


def summary_line(summary: dict, out_dir: Path) -> str:
    """The run in one line, for the console."""
    msg = f"{summary['frames_computed']} frame(s) computed, {summary['frames_reused']} already done (skipped)"
    if summary["frames_computed"]:
        msg += f", mean {summary['mean_iterations']:.1f} iterations/frame"
        if summary["mean_iterations_warm"] is not None and summary["mean_iterations_cold"] is not None:
            msg += f" (cold {summary['mean_iterations_cold']:.1f}, warm {summary['mean_iterations_warm']:.1f})"
    return msg + f"; wrote {out_dir}"


def finish_sequence(options: SequenceOptions, out_dir: Path, summary: dict, color_files: list[Path],
                    fps: float) -> None:
    """The video (if asked) and summary.json. The frames are on disk already: when the video cannot be
    written the summary still is, and when summary.json cannot be written it is printed."""
    failure = None
    if options.video_out:
        try:
            video = write_color_video(options.video_out, color_files, fps)
            summary["video"] = str(video)
            print(f"wrote {video}")
        except (DeqflowError, OSError) as exc:
            failure = exc
    save_summary(out_dir / SUMMARY_NAME, summary, f"the frames are in {out_dir}")
    if failure is not None:
        raise DeqflowError(f"{failure}; the {len(color_files)} frame(s) and summary.json are kept in {out_dir}")


def save_summary(path: Path, summary: dict, kept: str) -> None:
    """summary.json, atomically; printed to stdout (and a one-line error) when it cannot be written."""
    from deqflow.fileio import atomic_write_bytes

    text = json.dumps(summary, indent=2)
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as exc:
        print(text)
        raise DeqflowError(f"cannot write {path} ({exc.strerror or exc}); the summary is printed above and {kept}") \
            from None
