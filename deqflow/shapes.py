"""Image shapes and min/opt/max shape profiles, parsed and built in one place.

Exports (shape hints), engine builds (optimization profiles) and the runtime commands (sizes) all read
'HxW' / 'BxHxW' / 'Bx3xHxW' arguments; the per-input profiles they write ({'min'|'opt'|'max': {input:
shape}}) are the format of both the export metadata and TensorRT's optimization profiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deqflow.errors import InputError

ShapeProfiles = dict[str, dict[str, list[int]]]
"""{'min'|'opt'|'max': {input name: shape}}."""

PROFILE_KEYS = ("min", "opt", "max")
FLOW_SCALE = 8
"""`flow_init` (and the solver state) live at 1/8 of the padded image size; images are padded to multiples of 8."""

SHAPE_FORMS = "HxW, BxHxW or Bx3xHxW (e.g. 1x3x440x1024)"
_DIMS = re.compile(r"\s*\d+(\s*[xX,]\s*\d+){1,3}\s*")


def parse_dims(text: str | tuple | list, what: str, forms: str) -> list[int]:
    """'440x1024' / '1,3,440,1024' / a tuple of ints -> positive ints; InputError naming `what` otherwise."""
    if isinstance(text, (tuple, list)):
        dims = [int(v) for v in text]
    elif _DIMS.fullmatch(str(text)):
        dims = [int(v) for v in re.split(r"\s*[xX,]\s*", str(text).strip())]
    else:
        raise InputError(f"{what} {text!r} must look like {forms}")
    if min(dims, default=0) < 1:
        raise InputError(f"{what} {text!r} must be positive in every dimension")
    return dims


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    dims = parse_dims(text, "size", "HxW, e.g. 128x160")
    if len(dims) != 2:
        raise InputError(f"size {text!r} must look like HxW, e.g. 128x160")
    return dims[0], dims[1]


@dataclass(frozen=True)
class ImageShape:
    """Batch and (padded) image size of the `image1` / `image2` inputs."""

    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x3x{self.height}x{self.width}"

    def as_list(self) -> list[int]:
        return [self.batch, 3, self.height, self.width]

    def flow_shape(self) -> list[int]:
        """Shape of the matching `flow_init` input."""
        return [self.batch, 2, self.height // FLOW_SCALE, self.width // FLOW_SCALE]

    def check_padded(self) -> ImageShape:
        """self, or an InputError when H or W is not a multiple of 8 (the model's padding)."""
        if self.height % FLOW_SCALE or self.width % FLOW_SCALE:
            raise InputError(f"shape {self}: H and W must be multiples of {FLOW_SCALE} (pad the images)")
        return self

    @classmethod
    def parse(cls, text: str | ImageShape | tuple | list, default_batch: int = 1) -> ImageShape:
        """'HxW', 'BxHxW' or 'Bx3xHxW' (also a tuple/list of those numbers)."""
        if isinstance(text, ImageShape):
            return text
        dims = parse_dims(text, "shape", SHAPE_FORMS)
        if len(dims) == 2:
            dims = [default_batch, *dims]
        elif len(dims) == 4:
            if dims[1] != 3:
                raise InputError(f"shape {text!r}: images have 3 channels (RGB), got {dims[1]}")
            dims = [dims[0], dims[2], dims[3]]
        elif len(dims) != 3:
            raise InputError(f"shape {text!r} must look like {SHAPE_FORMS}")
        return cls(*dims)


@dataclass(frozen=True)
class ShapeHints:
    """min/opt/max image shapes of a dynamic model (export shape hints, TensorRT optimization profile)."""

    min: ImageShape
    opt: ImageShape
    max: ImageShape

    @classmethod
    def static(cls, shape: ImageShape) -> ShapeHints:
        """The hints of a static model: min = opt = max."""
        return cls(shape, shape, shape)

    def check_order(self) -> None:
        """InputError unless min <= opt <= max in every dimension."""
        for a, b, what in ((self.min, self.opt, "min > opt"), (self.opt, self.max, "opt > max")):
            if a.batch > b.batch or a.height > b.height or a.width > b.width:
                raise InputError(f"shape hints must satisfy min <= opt <= max in every dimension ({what}: "
                                 f"min {self.min}, opt {self.opt}, max {self.max})")

    def per_input(self, flow_init: bool = True) -> ShapeProfiles:
        """{'min': {'image1': [..], 'image2': [..], 'flow_init': [..]}, 'opt': ..., 'max': ...}."""
        out: ShapeProfiles = {}
        for key in PROFILE_KEYS:
            s: ImageShape = getattr(self, key)
            shapes = {"image1": s.as_list(), "image2": s.as_list()}
            if flow_init:
                shapes["flow_init"] = s.flow_shape()
            out[key] = shapes
        return out


def parse_shape_arg(text: str, batch: int = 1) -> list[int]:
    """A padded image shape argument ('HxW' | 'BxHxW' | 'Bx3xHxW') -> [B, 3, H, W]."""
    return ImageShape.parse(text, batch).check_padded().as_list()
