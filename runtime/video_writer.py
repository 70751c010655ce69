"""The colour video of a sequence (`deqflow infer --video-out`): the colour frames assembled with OpenCV at the
end of a run, atomically, after the path was checked before any frame was computed."""

from __future__ import annotations

from pathlib import Path

from deqflow.errors import InputError

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
"""The containers --video-out accepts -> the OpenCV codec (fourcc) each is written with."""


def check_video_out(path: Path, video: str | None = None) -> Path:
    """--video-out checked before any frame is computed: a known container, a writable file path that is not
    the input video."""
    from deqflow.fileio import check_output_file

    if video and path.resolve() == Path(video).resolve():
        raise InputError(f"--video-out {path} is the input video: give another file name")
    if path.suffix.lower() not in VIDEO_CODECS:
        raise InputError(f"--video-out {path}: unknown video type {path.suffix or '(no extension)'!r}; use one of "
                         f"{', '.join(VIDEO_CODECS)} (e.g. --video-out flow.mp4)")
    return check_output_file(path, "--video-out")


def write_color_video(path: Path, files: list[Path], fps: float) -> Path:
    """Assemble the colour frames `files` (in order) into a video, atomically (deqflow.fileio)."""
    import cv2
    import numpy as np

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
