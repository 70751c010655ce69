"""Pictures of flow and of its errors: Baker et al. colour coding, error maps, residual plots, panels.

`flow_to_color` reproduces the look of RAFT's `flow_viz` and torchvision's `flow_to_image` (Middlebury
colour wheel of Baker et al., ICCV 2007), so pictures can be compared with those in papers.
numpy and OpenCV only (residual plots too: the runtime needs no plotting library).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from deqflow.errors import InputError
from deqflow.fileio import PathLike
from deqflow.image_io import write_image
from deqflow.metrics import epe_map, valid_mask

EPS = 1e-5
# Hue transitions of the Baker wheel: (number of hues, channel that changes, rising?) starting from red.
# RY: red->yellow (G rises), YG: yellow->green (R falls), GC: green->cyan (B rises),
# CB: cyan->blue (G falls), BM: blue->magenta (R rises), MR: magenta->red (B falls). 55 hues in all.
_WHEEL_SEGMENTS = ((15, 1, True), (6, 0, False), (4, 2, True), (11, 1, False), (13, 0, True), (6, 2, False))
# KITTI devkit error colours: lower bound of min(EPE/3, EPE/(0.05|gt|)) -> RGB, each range [lower, next);
# a value above 1 is a Fl-all outlier.
_KITTI_ERROR_COLOURS = ((0.0, (49, 54, 149)), (0.0625, (69, 117, 180)), (0.125, (116, 173, 209)),
                        (0.25, (171, 217, 233)), (0.5, (224, 243, 248)), (1.0, (254, 224, 144)),
                        (2.0, (253, 174, 97)), (4.0, (244, 109, 67)), (8.0, (215, 48, 39)),
                        (16.0, (165, 0, 38)))


def make_color_wheel() -> np.ndarray:
    """The 55 Baker et al. hues as float (55,3) RGB in 0..255."""
    rows = []
    rgb = np.array([255.0, 0.0, 0.0])
    for n, channel, rising in _WHEEL_SEGMENTS:
        ramp = np.floor(255.0 * np.arange(n) / n)
        block = np.repeat(rgb[None], n, axis=0)
        block[:, channel] = ramp if rising else 255.0 - ramp
        rows.append(block)
        rgb = block[-1].copy()
        rgb[channel] = 255.0 if rising else 0.0
    return np.concatenate(rows)


_WHEEL = make_color_wheel()


def _check_flow(flow: np.ndarray, what: str) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        hint = " (channels-first? transpose to (H,W,2))" if flow.ndim == 3 and flow.shape[0] == 2 else ""
        raise InputError(f"{what}: flow must have shape (H,W,2), got {flow.shape}{hint}")
    return flow.astype(np.float64)


def flow_to_color(flow: np.ndarray, max_flow: float | None = None,
                  convert_to_bgr: bool = False) -> np.ndarray:
    """Colour-code (H,W,2) flow -> uint8 (H,W,3) RGB (BGR if `convert_to_bgr`).

    Hue is the direction, saturation the magnitude divided by the largest magnitude of this image (or
    by `max_flow`, to give several images one scale); magnitudes beyond 1 are dimmed to 75 %.
    Zero flow is white; NaN/Inf pixels are black.
    """
    flow = _check_flow(flow, "flow_to_color")
    if max_flow is not None and not (np.isfinite(max_flow) and max_flow >= 0):
        raise InputError(f"flow_to_color: max_flow must be a finite number >= 0, got {max_flow}")
    finite = np.isfinite(flow).all(axis=2)
    u, v = np.where(finite, flow[:, :, 0], 0.0), np.where(finite, flow[:, :, 1], 0.0)
    if max_flow is None:
        max_flow = float(np.sqrt(u**2 + v**2).max(initial=0.0))
    u, v = u / (max_flow + EPS), v / (max_flow + EPS)
    rad = np.sqrt(u**2 + v**2)
    ncols = len(_WHEEL)
    fk = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (ncols - 1)  # angle in [-pi, pi] -> [0, 54]
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[:, :, None]
    col = ((1.0 - f) * _WHEEL[k0] + f * _WHEEL[k1]) / 255.0
    inside = (rad <= 1.0)[:, :, None]
    col = np.where(inside, 1.0 - rad[:, :, None] * (1.0 - col), 0.75 * col)
    img = np.floor(255.0 * col).astype(np.uint8)
    img[~finite] = 0
    return np.ascontiguousarray(img[:, :, ::-1]) if convert_to_bgr else img


def color_wheel_image(size: int = 256) -> np.ndarray:
    """Legend: uint8 (size,size,3) RGB disc whose pixel colour is the code of the flow pointing from
    the centre to that pixel (unit radius at the edge); white outside the disc."""
    if size < 2:
        raise InputError(f"color_wheel_image: size must be at least 2, got {size}")
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, c)
    img = flow_to_color(np.stack([x, y], axis=2), max_flow=1.0)
    img[x**2 + y**2 > 1.0] = 255
    return img


def error_map(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
              max_error: float | None = None, scale: str = "linear") -> np.ndarray:
    """Colour-code the end-point error -> uint8 (H,W,3) RGB; invalid pixels black.

    scale='linear': EPE / max_error (default: the largest valid EPE) through the perceptual 'inferno'
    colormap; NaN/Inf predictions show as the largest error. scale='kitti': the KITTI devkit's log
    colours of min(EPE/3, EPE/(0.05|gt|)), blue = accurate, red = Fl-all outlier (max_error unused).
    """
    pred_f, gt_f = _check_flow(pred, "error_map"), _check_flow(gt, "error_map")
    if pred_f.shape != gt_f.shape:
        raise InputError(f"error_map: pred and gt differ in shape: {pred_f.shape} vs {gt_f.shape}")
    epe = epe_map(pred_f, gt_f).astype(np.float64)
    mask = valid_mask(gt_f, valid) & np.isfinite(gt_f).all(axis=2)
    epe = np.where(np.isfinite(epe), epe, np.inf)
    if scale == "linear":
        if max_error is None:
            finite = epe[mask & np.isfinite(epe)]
            max_error = float(finite.max()) if finite.size else 1.0
        if not (np.isfinite(max_error) and max_error >= 0):
            raise InputError(f"error_map: max_error must be a finite number >= 0, got {max_error}")
        level = np.clip(epe / max(max_error, EPS), 0.0, 1.0)
        gray = np.round(255.0 * level).astype(np.uint8)
        img = cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)[:, :, ::-1].copy()
    elif scale == "kitti":
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.minimum(epe / 3.0, epe / (0.05 * np.sqrt((gt_f**2).sum(axis=2))))
        rel[epe == 0] = 0.0  # 0/0 where |gt| is 0 too
        lower = np.array([b for b, _ in _KITTI_ERROR_COLOURS])
        colours = np.array([c for _, c in _KITTI_ERROR_COLOURS], dtype=np.uint8)
        img = colours[np.searchsorted(lower, rel, side="right") - 1]
    else:
        raise InputError(f"error_map: scale must be 'linear' or 'kitti', got {scale!r}")
    img[~mask] = 0
    return img


_PLOT_SIZE = (400, 600)  # (H, W) of a residual plot
_PLOT_BOX = (40, 20, 50, 76)  # margins around the axes: top, right, bottom, left
_PLOT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def residual_plot(traces: Mapping[str, Sequence[float]], path: PathLike, title: str = "") -> Path:
    """Plot fixed-point residual against solver iteration (log y) for each named trace; write `path` (an image
    format OpenCV writes: .png, .jpg, ...).

    Non-positive and non-finite values cannot be shown on a log axis and are left out. Drawn with OpenCV, so
    the runtime needs no plotting library and no display.
    """
    if not traces:
        raise InputError("residual_plot: no traces given")
    if not cv2.haveImageWriter(str(path)):
        raise InputError(f"residual_plot: cannot write '{path}'; use an image extension such as .png or .jpg")
    series = {}
    for name, values in traces.items():
        y = np.asarray(values, dtype=np.float64)
        if y.ndim != 1:
            raise InputError(f"residual_plot: trace {name!r} must be 1-D (one value per iteration), "
                             f"got shape {y.shape}")
        series[name] = np.where(np.isfinite(y) & (y > 0), y, np.nan)
    img = np.full((*_PLOT_SIZE, 3), 255, np.uint8)
    to_pixel = _draw_axes(img, series, title)
    for k, y in enumerate(series.values()):
        _draw_trace(img, to_pixel, y, _PLOT_COLOURS[k % len(_PLOT_COLOURS)])
    _draw_legend(img, list(series))
    return write_image(path, img)


def _draw_axes(img: np.ndarray, series: Mapping[str, np.ndarray], title: str):
    """Frame, decade grid and labels of the log plot; returns (iteration, value) -> pixel (x, y)."""
    top, right, bottom, left = _PLOT_BOX
    (h, w), grey = img.shape[:2], (200, 200, 200)
    x0, x1 = 1, max(2, max(y.size for y in series.values()))
    positive = np.concatenate([y[np.isfinite(y)] for y in series.values()])
    lo = int(np.floor(np.log10(positive.min()))) if positive.size else 0
    hi = max(lo + 1, int(np.ceil(np.log10(positive.max()))) if positive.size else 1)

    def to_pixel(i: float, value: float) -> tuple[int, int]:
        px = left + (i - x0) / (x1 - x0) * (w - left - right)
        py = top + (hi - np.log10(value)) / (hi - lo) * (h - top - bottom)
        return round(px), round(py)

    for decade in range(lo, hi + 1):
        for m in range(1, 10 if decade < hi else 2):
            y = to_pixel(x0, m * 10.0**decade)[1]
            cv2.line(img, (left, y), (w - right, y), grey if m == 1 else (235, 235, 235), 1)
        _text(img, f"1e{decade}", (left - 8, to_pixel(x0, 10.0**decade)[1] + 4), align="right")
    step = _tick_step(x1 - x0)
    for i in range(x0, x1 + 1):
        if i % step == 0 or i == x0:
            x = to_pixel(i, 10.0**lo)[0]
            cv2.line(img, (x, top), (x, h - bottom), grey, 1)
            _text(img, str(i), (x, h - bottom + 16), align="centre")
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    _text(img, "solver iteration", ((left + w - right) // 2, h - 12), align="centre")
    label = np.full((18, 80, 3), 255, np.uint8)
    _text(label, "residual", (40, 13), align="centre")
    y_label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    mid = (top + h - bottom) // 2 - 40
    img[mid:mid + 80, 4:22] = y_label
    _text(img, title, ((left + w - right) // 2, top - 14), align="centre", scale=0.5)
    return to_pixel


def _draw_trace(img: np.ndarray, to_pixel, y: np.ndarray, colour: tuple[int, int, int]) -> None:
    """One trace: line segments between consecutive shown values (a left-out value breaks the line), dots."""
    points = [None if np.isnan(v) else to_pixel(i + 1, v) for i, v in enumerate(y)]
    for a, b in zip(points[:-1], points[1:]):
        if a is not None and b is not None:
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
    for p in points:
        if p is not None:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)


def _draw_legend(img: np.ndarray, names: Sequence[str]) -> None:
    """The trace names with their colours, in the top right corner of the axes."""
    top, right = _PLOT_BOX[0], _PLOT_BOX[1]
    width = 40 + max(cv2.getTextSize(str(n), _FONT, 0.4, 1)[0][0] for n in names)
    x = img.shape[1] - right - width - 8
    cv2.rectangle(img, (x, top + 6), (x + width, top + 10 + 18 * len(names)), (160, 160, 160), 1)
    for k, name in enumerate(names):
        y = top + 20 + 18 * k
        cv2.line(img, (x + 6, y - 4), (x + 28, y - 4), _PLOT_COLOURS[k % len(_PLOT_COLOURS)], 2, cv2.LINE_AA)
        _text(img, str(name), (x + 34, y))


def _tick_step(span: int) -> int:
    """A 1-2-5 step that puts at most 10 iteration ticks on the x axis."""
    step = 1
    while span / step > 10:
        step *= 5 if str(step).startswith("2") else 2
    return step


def _text(img: np.ndarray, text: str, at: tuple[int, int], align: str = "left", scale: float = 0.4) -> None:
    """Black text whose baseline starts at, centres on or ends at `at`."""
    width = cv2.getTextSize(text, _FONT, scale, 1)[0][0]
    x = at[0] - {"left": 0, "centre": width // 2, "right": width}[align]
    cv2.putText(img, text, (x, at[1]), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str] | None = None,
                 gap: int = 4) -> np.ndarray:
    """Compose uint8 RGB (H,W,3) or gray (H,W) images into one row, each scaled to the first image's
    height, with its label written on a black strip above it -> uint8 RGB."""
    if not images:
        raise InputError("side_by_side: no images given")
    if labels is not None and len(labels) != len(images):
        raise InputError(f"side_by_side: {len(images)} images but {len(labels)} labels")
    height = np.shape(images[0])[0]
    panels = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise InputError(f"side_by_side: image {i} must be uint8 (H,W,3) or (H,W), "
                             f"got {img.dtype} {img.shape}")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.shape[0] != height:
            width = max(1, round(img.shape[1] * height / img.shape[0]))
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        panels.append(img)
    strip = 0 if labels is None else max(18, height // 16)
    font_scale = strip / 40.0
    columns = []
    for i, img in enumerate(panels):
        column = np.zeros((strip + height, img.shape[1], 3), dtype=np.uint8)
        column[strip:] = img
        if labels is not None:
            cv2.putText(column, str(labels[i]), (4, int(strip * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                        (255, 255, 255), 1, cv2.LINE_AA)
        columns.append(column)
        if i < len(panels) - 1:
            columns.append(np.full((strip + height, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(columns, axis=1)
