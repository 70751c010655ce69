"""Preprocessing shared by every backend: image loading, batching, padding to a multiple of 8, unpadding.

Convention (official DEQ-Flow/RAFT, and the `input_range` of deqflow's ONNX metadata): float32 RGB in
0..255, channels first (N,3,H,W), H and W multiples of 8, replicate padding ('sintel' centres it, 'kitti'
pads at the bottom). Also the image pairs `compare` and `bench` use by default (the real pair of
deqflow.middlebury, or a generated one), and the frame sources of `infer` (a pair, a folder of frames, a
video file). numpy + OpenCV only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqflow.errors import FileFormatError, InputError
from deqflow.image_io import read_image, to_model_input
from deqflow.middlebury import real_pair, real_pairs
from deqflow.padding import InputPadder, check_model_input_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

__all__ = ["PreparedBatch", "check_model_inputs", "frame_source", "prepare", "real_pair",
           "real_pairs", "to_batch", "unpad_flow"]


def to_batch(images: Sequence[np.ndarray] | np.ndarray, name: str = "image") -> np.ndarray:
    """One (H,W,3) uint8 image or a list of them (same size) -> float32 (N,3,H,W) in 0..255."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    arrays = [to_model_input(np.asarray(img), f"{name}[{i}]") for i, img in enumerate(images)]
    if not arrays:
        raise InputError(f"{name}: empty batch")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"{name}: every image of a batch must have the same size, got "
                         f"{sorted(s[2:] for s in shapes)}")
    return np.concatenate(arrays, axis=0)


@dataclass
class PreparedBatch:
    """Padded model inputs and the padder that undoes the padding."""

    image1: np.ndarray  # (N,3,Hp,Wp) float32 0..255
    image2: np.ndarray
    padder: InputPadder

    @property
    def size(self) -> tuple[int, int]:
        return self.padder.height, self.padder.width

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.padder.padded_size

    def unpad(self, flow: np.ndarray) -> np.ndarray:
        return unpad_flow(flow, self.padder)


def prepare(image1, image2, pad_mode: str = "sintel") -> PreparedBatch:
    """uint8 RGB images (one (H,W,3) each, or lists for a batch) -> padded float32 (N,3,Hp,Wp) pairs."""
    b1, b2 = to_batch(image1, "image1"), to_batch(image2, "image2")
    if b1.shape != b2.shape:
        raise InputError(f"image1 and image2 must have the same shape, got {b1.shape[2:]} and {b2.shape[2:]} "
                         "(resize or crop one of them)")
    padder = InputPadder(b1.shape, mode=pad_mode)
    p1, p2 = padder.pad(b1, b2)
    return PreparedBatch(np.ascontiguousarray(p1, dtype=np.float32), np.ascontiguousarray(p2, dtype=np.float32),
                         padder)


def unpad_flow(flow: np.ndarray, padder: InputPadder) -> np.ndarray:
    """(N,2,Hp,Wp) padded model flow -> (N,H,W,2) float32 at the input size (flow files use (H,W,2))."""
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise InputError(f"flow must have shape (N,2,H,W), got {flow.shape}")
    return np.ascontiguousarray(padder.unpad(flow).transpose(0, 2, 3, 1), dtype=np.float32)


def check_model_inputs(image1: np.ndarray, image2: np.ndarray, flow_init: np.ndarray | None = None,
                       levels: int = 4) -> None:
    """The checks every backend runs before inference: shapes, size, dtype, finite values, 0..255 range."""
    for name, img in (("image1", image1), ("image2", image2)):
        if not hasattr(img, "shape") or len(img.shape) != 4 or img.shape[1] != 3:
            raise InputError(f"{name} must be an array of shape (N,3,H,W) (RGB, channels first, 0..255), got "
                             f"{getattr(img, 'shape', type(img).__name__)}; use runtime.preprocessing.prepare "
                             "to convert and pad images")
    if tuple(image1.shape) != tuple(image2.shape):
        raise InputError(f"image1 and image2 differ in shape: {tuple(image1.shape)} vs {tuple(image2.shape)}")
    n, _, h, w = image1.shape
    check_model_input_size(int(h), int(w), levels=levels)
    if isinstance(image1, np.ndarray):
        for name, img in (("image1", image1), ("image2", image2)):
            if not np.issubdtype(img.dtype, np.floating):
                raise InputError(f"{name} must be float32 in 0..255, got {img.dtype} (use to_batch/prepare)")
            if not np.isfinite(img).all():
                raise InputError(f"{name} contains NaN or Inf values")
            if img.min() < -1e-3:
                raise InputError(f"{name} must be in 0..255 (official DEQ-Flow convention); got minimum "
                                 f"{float(img.min()):.3f}. For [-1,1] inputs use (x + 1) * 127.5")
    if flow_init is not None:
        expected = (n, 2, h // 8, w // 8)
        if tuple(flow_init.shape) != expected:
            raise InputError(f"flow_init must have shape {expected} (1/8 resolution), got {tuple(flow_init.shape)}")


# --- generated pairs (the real ones: deqflow.middlebury) -----------------------------------------------


def random_pair(size: tuple[int, int] = (128, 160), seed: int = 0, shift: tuple[int, int] = (3, -5)):
    """A smooth random image and a shifted copy (uint8 RGB): the generated-input option of compare/bench."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    base = rng.random((h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    img = np.clip(cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR) * 255, 0, 255).astype(np.uint8)
    return img, np.ascontiguousarray(np.roll(img, shift, axis=(0, 1)))


# --- frame sources for `deqflow infer` --------------------------------------------------------------


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass
class Frame:
    index: int
    name: str
    rgb: np.ndarray  # uint8 (H,W,3)


class FrameSource:
    """Frames of a folder (image files in natural order) or a video file (OpenCV), read lazily. A video is
    decoded once up front (`check_video`) so that a damaged file is refused before any work."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileFormatError(f"input not found: {self.path}")
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                                key=lambda p: _natural_key(p.name))
            if len(self.files) < 2:
                raise InputError(f"{self.path} holds {len(self.files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); "
                                 "a sequence needs at least 2 frames")
            self.fps = 0.0
        else:
            self.kind = "video"
            self.files = []
            self.fps, self._count = check_video(self.path)

    def __len__(self) -> int:
        return len(self.files) if self.kind == "folder" else self._count

    def names(self) -> list[str]:
        """Frame names, in order (the outputs of the pair (t, t+1) are named after frame t)."""
        if self.kind == "folder":
            return [p.stem for p in self.files]
        return [f"{i:06d}" for i in range(self._count)]

    def identity(self) -> dict:
        """What identifies this input for a resume: the video's size and sha256, or each frame's name, size and
        modification time."""
        if self.kind == "video":
            from deqflow.checkpoint import sha256_file

            return {"kind": "video", "size": self.path.stat().st_size, "sha256": sha256_file(self.path)}
        frames = []
        for p in self.files:
            st = p.stat()
            frames.append([p.name, st.st_size, st.st_mtime_ns])
        return {"kind": "folder", "frames": frames}

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "folder":
            for i, p in enumerate(self.files):
                yield Frame(i, p.stem, read_image(p))
            return
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            for i in range(self._count):
                ok, bgr = cap.read()
                if not ok:
                    raise FileFormatError(f"{self.path}: frame {i} could not be decoded on the second reading "
                                          "(the file changed while it was being read?)")
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield Frame(i, f"{i:06d}", np.ascontiguousarray(bgr[:, :, 2::-1]))
        finally:
            cap.release()


FFMPEG_LOG_LINE = re.compile(r"^\[[\w:-]+ @ (0x)?[0-9a-fA-F]+\]")
"""How FFmpeg's messages start (`[mjpeg @ 0x55d0...] overread 8`), as OpenCV lets them through to stderr."""


def check_video(path: Path) -> tuple[float, int]:
    """Decode every frame of `path` once and refuse a damaged video: -> (fps, frames).

    FFmpeg conceals a damaged frame (or stops early) and only says so on stderr, so its messages are caught
    here, together with the frame count the container announces. A partly decodable video is refused rather
    than processed: the flow next to a concealed frame is wrong while looking plausible. Re-encode the file,
    or extract its good frames into a folder for --folder."""
    import cv2

    with _captured_stderr() as log:
        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened()
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if ok else 0.0
        announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if ok else 0
        decoded = 0
        while ok and cap.grab():
            decoded += 1
        cap.release()
        text = log.text()
    if not ok:
        raise FileFormatError(f"OpenCV cannot open {path} as a video (unsupported container/codec, or not a video)")
    errors = [line for line in text.splitlines() if FFMPEG_LOG_LINE.match(line)]
    if errors or decoded < announced:
        short = f"only {decoded} of the {announced} frames it announces decode" if decoded < announced else \
            f"its {decoded} frames decode"
        detail = f", FFmpeg reports {len(errors)} decoding error(s) (first: {errors[0].split('] ', 1)[-1].strip()})" \
            if errors else ""
        raise FileFormatError(f"{path} is damaged: {short}{detail}; re-encode it, or extract the good frames into a "
                              "folder and use --folder")
    if decoded < 2:
        raise InputError(f"{path}: decoded {decoded} frame(s); a sequence needs at least 2")
    return fps, decoded


class _CapturedText:
    def __init__(self, fh) -> None:
        self.fh = fh

    def text(self) -> str:
        self.fh.seek(0)
        return self.fh.read().decode(errors="replace")


@contextmanager
def _captured_stderr() -> Iterator[_CapturedText]:
    """File descriptor 2 redirected into a temporary file (FFmpeg writes there from C, past sys.stderr)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield _CapturedText(fh)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def frame_source(path: str | os.PathLike) -> FrameSource:
    return FrameSource(path)
