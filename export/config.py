"""Typed export settings and their validation (no torch here: the CLI parses and checks them first).

Why the limits:
- opset 17-19 only: GridSample needs opset >= 16, the TorchScript exporter stops at 17-18 in practice, and at
  opset 20 ONNX renamed GridSample's modes ('bilinear' -> 'linear'), which TensorRT's ONNX parser does not know
  and silently replaces by *nearest* sampling.
- sizes: the network works on images padded to a multiple of 8 and needs H, W >= 8 * 2**corr_levels (below
  that the coarsest correlation level is one pixel wide and the model returns NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from deqflow.errors import InputError
from deqflow.model_metadata import LAYOUTS
from deqflow.padding import check_model_input_size, min_size_for_levels
from deqflow.shapes import ImageShape, ShapeHints
from deqflow.solver_spec import STOP_MODES

PRECISIONS = ("fp32", "mixed16")
LOOKUPS = ("gather", "grid_sample", "local")
"""gather and grid_sample: all-pairs volume (exports default to gather); local: on-demand, memory linear in pixels."""
OPSET_MIN, OPSET_MAX, DEFAULT_OPSET = 17, 19, 17
DEFAULT_SIZE = (440, 1024)  # (H, W): Sintel/KITTI-like; one graph (and TensorRT engine) per resolution


@dataclass
class ExportConfig:
    """Everything `export_onnx` needs besides the weights."""

    layout: str = "unrolled"
    iters: int | None = None  # None: the model's evaluation iterations (cfg.deq.eval_max_iter)
    height: int = DEFAULT_SIZE[0]
    width: int = DEFAULT_SIZE[1]
    batch: int = 1
    precision: str = "fp32"
    lookup: str = "gather"
    opset: int = DEFAULT_OPSET
    dynamic: bool = False
    min_shape: str | ImageShape | None = None  # dynamic only; default 1 x min size
    opt_shape: str | ImageShape | None = None  # dynamic only; default batch x height x width
    max_shape: str | ImageShape | None = None  # dynamic only; default = opt
    tolerance: float = 0.0  # > 0: loop stops early (layout loop) / host stop criterion (layout split)
    stop_mode: str | None = None  # 'abs' | 'rel'; None: the model's f_stop_mode
    flow_init: bool = True  # add the `flow_init` input (warm start); feed zeros for a cold start
    simplify: bool = False  # run onnxslim after the export
    variant: str | None = None  # expected variant of the checkpoint (checked)
    verify: bool = False  # run ONNX Runtime on the trace inputs and compare with PyTorch
    levels: int = field(default=4, repr=False)  # correlation levels of the model (filled in by the exporter)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """InputError naming the first unusable setting."""
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.lookup not in LOOKUPS:
            raise InputError(f"unknown correlation lookup {self.lookup!r}; choose one of {', '.join(LOOKUPS)}")
        check_opset(self.opset)
        if self.iters is not None and int(self.iters) < 1:
            raise InputError(f"iterations must be >= 1, got {self.iters}")
        if int(self.batch) < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")
        if self.stop_mode is not None and self.stop_mode not in STOP_MODES:
            raise InputError(f"stop mode must be one of {STOP_MODES}, got {self.stop_mode!r}")
        if not float(self.tolerance) >= 0:
            raise InputError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.tolerance > 0 and self.layout == "unrolled":
            raise InputError("a tolerance needs --layout loop (early exit inside the graph) or --layout split "
                             "(the host stops); an unrolled graph always runs all its iterations")
        check_size(self.height, self.width, self.levels)
        if not self.dynamic and any(s is not None for s in (self.min_shape, self.opt_shape, self.max_shape)):
            raise InputError("--min-shape/--opt-shape/--max-shape need --dynamic")
        if self.dynamic:
            self.shape_hints()  # validates them

    def shape_hints(self) -> ShapeHints | None:
        """The validated min/opt/max shapes of a dynamic export (None when static)."""
        if not self.dynamic:
            return None
        lo = min_size_for_levels(self.levels)
        opt = ImageShape.parse(self.opt_shape, self.batch) if self.opt_shape is not None \
            else ImageShape(self.batch, self.height, self.width)
        mn = ImageShape.parse(self.min_shape, 1) if self.min_shape is not None else ImageShape(1, lo, lo)
        mx = ImageShape.parse(self.max_shape, opt.batch) if self.max_shape is not None else opt
        for name, s in (("min", mn), ("opt", opt), ("max", mx)):
            check_size(s.height, s.width, self.levels, what=f"{name} shape")
        hints = ShapeHints(mn, opt, mx)
        hints.check_order()
        return hints

    def with_changes(self, **changes) -> ExportConfig:
        return replace(self, **changes)


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSET_MIN <= opset <= OPSET_MAX:
        raise InputError(
            f"opset {opset!r} is not supported; use {OPSET_MIN}-{OPSET_MAX} (default {DEFAULT_OPSET}). "
            "Below 16 there is no GridSample; from opset 20 GridSample's modes are renamed ('linear', 'cubic') "
            "and TensorRT's ONNX parser silently falls back to nearest sampling, which corrupts the flow; "
            "the TorchScript exporter used here targets <= 18-19.")


def check_size(height: int, width: int, levels: int = 4, what: str = "export size") -> None:
    """InputError unless H x W is a padded model input: multiples of 8 and at least the model minimum."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{what}: {name} must be an integer, got {v!r}")
    try:
        check_model_input_size(height, width, levels=levels)
    except InputError as exc:
        raise InputError(f"{what} {height}x{width}: {exc}") from None
