"""Image files in, model-ready arrays out.

Images are decoded from bytes with OpenCV (so non-ASCII paths work and a missing file is told apart
from a file that is not an image) and always come back as uint8 RGB (H,W,3), whatever the bit depth
or channel count on disk. Writes are atomic (deqflow.fileio): never half a file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deqflow.errors import FileFormatError, InputError
from deqflow.fileio import PathLike, atomic_write_bytes


def read_bytes(path: PathLike) -> bytes:
    """The whole file, or FileFormatError naming the path (missing, a folder, unreadable, empty)."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"file not found: {path}")
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise FileFormatError(f"{path} is empty (0 bytes)")
    return data


def decode_image_file(path: PathLike) -> np.ndarray:
    """Decode an image file as stored (any depth, any channel count, OpenCV's BGR order)."""
    data = read_bytes(path)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise FileFormatError(f"cannot decode {path}: {exc.err or exc}") from None
    if img is None or img.size == 0:
        raise FileFormatError(f"{path} is not an image OpenCV can decode (corrupt, truncated or unsupported "
                              f"format; {len(data)} bytes)")
    return img


def encode_image(path: PathLike, img: np.ndarray) -> bytes:
    """Encode an array in the format named by the extension of `path` (OpenCV channel order)."""
    ext = Path(path).suffix.lower()
    if not ext:
        raise InputError(f"output path {path} has no extension; use e.g. .png or .jpg")
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error as exc:
        raise InputError(f"cannot write {path} as '{ext}' ({img.dtype}, shape {img.shape}): "
                         f"{exc.err or exc}") from None
    if not ok:
        raise InputError(f"OpenCV could not encode {path} as '{ext}'")
    return buf.tobytes()


def read_image(path: PathLike) -> np.ndarray:
    """Read any 8/16-bit image as uint8 RGB (H,W,3): gray is replicated, alpha dropped, 16-bit scaled."""
    img = decode_image_file(path)
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)  # 65535 -> 255 exactly
    elif img.dtype != np.uint8:
        raise FileFormatError(f"{path} holds {img.dtype} samples; deqflow reads 8-bit or 16-bit images")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    channels = img.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(img[:, :, :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(img[:, :, 2::-1])
    raise FileFormatError(f"{path} has {channels} channels; expected 1 (gray), 3 (colour) or 4 (with alpha)")


def write_image(path: PathLike, rgb: np.ndarray) -> Path:
    """Write a uint8 RGB (H,W,3) or gray (H,W) image atomically; the format follows the extension."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise InputError(f"write_image({path}): image must be uint8, got {rgb.dtype} "
                         "(scale and convert first)")
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        out = np.ascontiguousarray(rgb[:, :, ::-1])
    elif rgb.ndim == 2:
        out = rgb
    else:
        raise InputError(f"write_image({path}): image must be (H,W,3) RGB or (H,W) gray, "
                         f"got shape {rgb.shape}")
    if out.size == 0:
        raise InputError(f"write_image({path}): image is empty, shape {rgb.shape}")
    return atomic_write_bytes(path, encode_image(path, out))


def to_model_input(rgb: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 RGB (H,W,3) -> float32 (1,3,H,W) in 0..255, the official DEQ-Flow/RAFT input convention."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{name} must be an RGB image of shape (H,W,3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InputError(f"{name} must be uint8 (0..255) as returned by read_image, got {rgb.dtype}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)


def pair_to_batch(img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 RGB images of one size -> two float32 (1,3,H,W) batches."""
    s1, s2 = np.shape(img1), np.shape(img2)
    if s1 != s2:
        raise InputError(f"image1 and image2 must have the same shape, got {s1} and {s2} "
                         "(resize or crop one of them)")
    return to_model_input(img1, "image1"), to_model_input(img2, "image2")
