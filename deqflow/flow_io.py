"""Optical-flow and disparity files: Middlebury .flo, KITTI 16-bit PNG, PFM.

Every reader validates the header and the exact file size, so a truncated or foreign file is a
FileFormatError naming the path rather than a reshape traceback or a silently shifted image. Every
writer is atomic and writes an explicit byte order, so files are portable across machines.
Flow is always (H,W,2) float32 (u right, v down); a valid mask is (H,W) float32 of 0/1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deqflow.errors import FileFormatError, InputError
from deqflow.fileio import PathLike, atomic_write_bytes
from deqflow.image_io import decode_image_file, encode_image, read_bytes

FLO_MAGIC = 202021.25
FLO_HEADER_BYTES = 12
# Middlebury marks unknown flow with 1e10 and treats |component| > 1e9 as unknown.
FLO_UNKNOWN_VALUE = 1e10
FLO_UNKNOWN_THRESH = 1e9
KITTI_OFFSET = 2.0**15
KITTI_SCALE = 64.0
KITTI_DISP_SCALE = 256.0
MAX_SIDE = 1 << 16  # sanity bound on header sizes: larger values mean a corrupt header

_PFM_HEADER = re.compile(rb"\s*(P[Ff])\s+(\d+)\s+(\d+)\s+(\S+)\s")


def _check_size(path: PathLike, width: int, height: int) -> None:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise FileFormatError(f"{path}: header gives an implausible size {width}x{height} (corrupt header?)")


def _check_flow(flow: np.ndarray, what: str) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        hint = " (channels-first? transpose to (H,W,2))" if flow.ndim == 3 and flow.shape[0] == 2 else ""
        raise InputError(f"{what}: flow must have shape (H,W,2), got {flow.shape}{hint}")
    if flow.shape[0] == 0 or flow.shape[1] == 0:
        raise InputError(f"{what}: flow is empty, shape {flow.shape}")
    if not (np.issubdtype(flow.dtype, np.floating) or np.issubdtype(flow.dtype, np.integer)):
        raise InputError(f"{what}: flow must be a real-valued array, got {flow.dtype}")
    return flow


def _check_valid(valid: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray:
    """Valid mask as bool (H,W); None means every pixel is valid. Values >= 0.5 count as valid."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    valid = np.asarray(valid)
    if valid.shape != shape:
        raise InputError(f"{what}: valid mask has shape {valid.shape}, expected {shape}")
    return valid.astype(bool) if valid.dtype == bool else valid >= 0.5


# --- Middlebury .flo ------------------------------------------------------------------------------


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury .flo file -> (H,W,2) float32 (values as stored, unknown markers included)."""
    data = read_bytes(path)
    if len(data) < FLO_HEADER_BYTES:
        raise FileFormatError(f"{path}: {len(data)} bytes is too short for a .flo header (12 bytes)")
    # The format is little-endian; files written natively on a big-endian machine are recognised too.
    for order in "<>":
        if np.frombuffer(data, dtype=f"{order}f4", count=1)[0] == FLO_MAGIC:
            break
    else:
        raise FileFormatError(f"{path} is not a Middlebury .flo file: it starts with {bytes(data[:4])!r} instead of "
                              "the .flo magic b'PIEH' (check the file and its extension)")
    width, height = (int(x) for x in np.frombuffer(data, dtype=f"{order}i4", count=2, offset=4))
    _check_size(path, width, height)
    expected = FLO_HEADER_BYTES + 8 * width * height
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise FileFormatError(f"{path} is {state}: {len(data)} bytes, expected {expected} for "
                              f"{width}x{height}")
    flow = np.frombuffer(data, dtype=f"{order}f4", offset=FLO_HEADER_BYTES).reshape(height, width, 2)
    return flow.astype(np.float32)  # native byte order, writeable copy


def write_flo(path: PathLike, flow: np.ndarray) -> Path:
    """Write (H,W,2) flow as a little-endian Middlebury .flo file, atomically."""
    flow = _check_flow(flow, f"write_flo({path})")
    height, width = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    return atomic_write_bytes(path, header + flow.astype("<f4").tobytes())


# --- KITTI 16-bit PNG -----------------------------------------------------------------------------


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI flow PNG -> (flow (H,W,2) float32, valid (H,W) float32 0/1).

    u = (R - 2^15)/64, v = (G - 2^15)/64, valid = B > 0. Flow at invalid pixels is set to 0 (the
    file stores raw 0 there, which would otherwise decode to -512 px).
    """
    img = decode_image_file(path)
    if img.dtype != np.uint16 or img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        raise FileFormatError(f"{path} is not a KITTI flow PNG: expected 16-bit 3-channel, found "
                              f"{8 * img.dtype.itemsize}-bit {channels}-channel")
    valid = img[:, :, 0] > 0  # OpenCV order is B, G, R
    flow = (img[:, :, 2:0:-1].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    flow[~valid] = 0.0
    return flow, valid.astype(np.float32)


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write flow as a KITTI 16-bit PNG, atomically.

    Values are rounded to 1/64 px and clipped to the representable range [-512, 511.98]; invalid
    pixels (valid < 0.5) are stored as raw 0 in all channels, as in the KITTI ground truth.
    """
    what = f"write_kitti_flow({path})"
    flow = _check_flow(flow, what).astype(np.float64)
    mask = _check_valid(valid, flow.shape[:2], what)
    bad = mask & ~np.isfinite(flow).all(axis=2)
    if bad.any():
        raise InputError(f"{what}: flow has {int(bad.sum())} non-finite pixels marked valid; mark them "
                         "invalid in `valid` or fix the flow")
    raw = np.zeros(flow.shape[:2] + (3,), dtype=np.uint16)
    encoded = np.clip(np.rint(flow[mask] * KITTI_SCALE + KITTI_OFFSET), 0, 65535).astype(np.uint16)
    raw[mask, 2] = encoded[:, 0]  # R = u
    raw[mask, 1] = encoded[:, 1]  # G = v
    raw[mask, 0] = 1  # B = valid
    return atomic_write_bytes(path, encode_image(path, raw))


# --- PFM ------------------------------------------------------------------------------------------


def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM file -> (H,W) float32 for 'Pf', (H,W,3) float32 for 'PF', top row first."""
    data = read_bytes(path)
    match = _PFM_HEADER.match(data[:256])
    if match is None:
        raise FileFormatError(f"{path} is not a PFM file: expected a header 'PF|Pf <width> <height> "
                              f"<scale>', found {data[:24]!r}")
    kind, width, height = match.group(1), int(match.group(2)), int(match.group(3))
    try:
        scale = float(match.group(4))
    except ValueError:
        raise FileFormatError(f"{path}: PFM scale {match.group(4)!r} is not a number") from None
    if scale == 0 or not np.isfinite(scale):
        raise FileFormatError(f"{path}: PFM scale must be a non-zero number, got {scale}")
    _check_size(path, width, height)
    channels = 3 if kind == b"PF" else 1
    offset = match.end()
    expected = width * height * channels * 4
    if len(data) - offset != expected:
        state = "truncated" if len(data) - offset < expected else "longer than its header says"
        raise FileFormatError(f"{path} is {state}: {len(data) - offset} data bytes, expected {expected} for "
                              f"{width}x{height}x{channels}")
    dtype = "<f4" if scale < 0 else ">f4"  # negative scale = little-endian
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(height, width, channels)
    arr = arr[::-1]  # rows are stored bottom-up
    return (arr[:, :, 0] if channels == 1 else arr).astype(np.float32)


def write_pfm(path: PathLike, array: np.ndarray) -> Path:
    """Write (H,W) as 'Pf' or (H,W,3) as 'PF' (little-endian, rows bottom-up), atomically.

    (H,W,2) flow is written as 3 channels with a zero third channel, as FlyingThings3D stores flow.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 2:
        arr = np.concatenate([arr, np.zeros(arr.shape[:2] + (1,), dtype=arr.dtype)], axis=2)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.size == 0:
        raise InputError(f"write_pfm({path}): array must be (H,W), (H,W,2) or (H,W,3), got {arr.shape}")
    height, width = arr.shape[:2]
    header = f"{'Pf' if arr.ndim == 2 else 'PF'}\n{width} {height}\n-1.0\n".encode("ascii")
    return atomic_write_bytes(path, header + np.ascontiguousarray(arr[::-1], dtype="<f4").tobytes())


# --- dispatch -------------------------------------------------------------------------------------


def _known_flow_mask(flow: np.ndarray) -> np.ndarray | None:
    """Valid mask for dense formats: NaN/Inf or Middlebury 'unknown' (|value| > 1e9) are invalid."""
    known = (np.isfinite(flow) & (np.abs(flow) <= FLO_UNKNOWN_THRESH)).all(axis=2)
    return None if known.all() else known


def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ground-truth or predicted flow by extension -> (flow (H,W,2) float32, valid or None).

    .flo and .pfm are dense: valid is None unless some pixels are unknown (NaN/Inf or |value| > 1e9,
    Middlebury's marker); those are then 0 in `valid` and in `flow`. .png is KITTI (always a mask).
    """
    ext = Path(path).suffix.lower()
    if ext == ".png":
        return read_kitti_flow(path)
    if ext == ".flo":
        flow = read_flo(path)
    elif ext == ".pfm":
        arr = read_pfm(path)
        if arr.ndim != 3:
            raise FileFormatError(f"{path} is a 1-channel PFM (disparity?), not flow; use read_disparity")
        flow = np.ascontiguousarray(arr[:, :, :2])
    else:
        raise InputError(f"cannot read flow from {path}: unknown extension '{ext}' "
                         "(expected .flo, .png, .pfm)")
    known = _known_flow_mask(flow)
    if known is None:
        return flow, None
    flow[~known] = 0.0
    return flow, known.astype(np.float32)


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write flow by extension (.flo, KITTI .png, .pfm); invalid pixels become the format's marker
    (1e10 in .flo, raw 0 in .png, NaN in .pfm) so that read_flow gives the mask back."""
    ext = Path(path).suffix.lower()
    if ext == ".png":
        return write_kitti_flow(path, flow, valid)
    if ext not in (".flo", ".pfm"):
        raise InputError(f"cannot write flow to {path}: unknown extension '{ext}' "
                         "(expected .flo, .png, .pfm)")
    what = f"write_flow({path})"
    flow = _check_flow(flow, what).astype(np.float32)
    if valid is not None:
        flow[~_check_valid(valid, flow.shape[:2], what)] = FLO_UNKNOWN_VALUE if ext == ".flo" else np.nan
    return write_flo(path, flow) if ext == ".flo" else write_pfm(path, flow)


# --- disparity ------------------------------------------------------------------------------------


def read_disparity(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read stereo ground truth -> (disparity (H,W) float32, valid (H,W) float32 0/1).

    .pfm: float disparity, non-finite values invalid. .png: KITTI 16-bit, d = value/256, 0 invalid.
    Disparity at invalid pixels is set to 0.
    """
    ext = Path(path).suffix.lower()
    if ext == ".pfm":
        disp = read_pfm(path)
        if disp.ndim != 2:
            raise FileFormatError(f"{path} is a 3-channel PFM (flow?), expected a 1-channel disparity map")
        valid = np.isfinite(disp)
    elif ext == ".png":
        raw = decode_image_file(path)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            channels = 1 if raw.ndim == 2 else raw.shape[2]
            raise FileFormatError(f"{path} is not a KITTI disparity PNG: expected 16-bit 1-channel, found "
                                  f"{8 * raw.dtype.itemsize}-bit {channels}-channel")
        valid = raw > 0
        disp = raw.astype(np.float32) / KITTI_DISP_SCALE
    else:
        raise InputError(f"cannot read disparity from {path}: unknown extension '{ext}' "
                         "(expected .pfm, .png)")
    disp = np.where(valid, disp, 0.0).astype(np.float32)
    return disp, valid.astype(np.float32)


def disparity_to_flow(disp: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-to-right stereo disparity as flow (u = -d, v = 0) -> (flow (H,W,2), valid (H,W)) float32.

    A pixel is valid where `valid` >= 0.5 (all if None) and d is finite; flow is 0 elsewhere.
    """
    disp = np.asarray(disp)
    if disp.ndim != 2 or disp.size == 0:
        raise InputError(f"disparity must have shape (H,W), got {disp.shape}")
    mask = _check_valid(valid, disp.shape, "disparity_to_flow") & np.isfinite(disp)
    flow = np.zeros(disp.shape + (2,), dtype=np.float32)
    flow[:, :, 0] = np.where(mask, -disp, 0.0)
    return flow, mask.astype(np.float32)
