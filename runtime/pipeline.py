"""uint8 images in, (H,W,2) flow out: preprocessing + a backend + warm-start bookkeeping for sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deqflow.errors import InputError
from deqflow.host_solver import WarmState
from deqflow.resolution import Resolution, downscale_pair, upsample_flow
from runtime.backends.base import Backend, InferenceResult
from runtime.preprocessing import prepare
from runtime.warm_start import check_warm_start, forward_warp_state


@dataclass
class PairFlow:
    flow: np.ndarray  # (H,W,2) float32 at the input size (padding removed)
    result: InferenceResult  # padded outputs and solver statistics
    warm: bool  # whether this pair started from the previous fixed point
    model_size: tuple[int, int] | None = None  # (H, W) the model ran at (before padding): smaller with a Resolution

    @property
    def iterations(self) -> int:
        return self.result.iterations


class FlowEstimator:
    """Run a backend on image pairs with the shared preprocessing. With `warm_start`, each call starts from
    the fixed point of the previous call (video: frame t -> t+1 after t-1 -> t), as it is or, with
    `forward_warp`, moved along its own flow first (see `forward_warp_state`); `reset()` forgets it. With a
    `resolution` (deqflow.resolution), the model runs on a shrunk copy of each pair and the flow comes back at
    the input size; the warm-start state stays at the reduced size, where the model runs.

    Reuse is the default because it measured better on the synthetic videos of docs/warm_start.md: the
    unwarped fixed point is closer to the next pair's fixed point and reaches the cold solve's accuracy in
    fewer steps, for the same iteration counts under the residual stop rule."""

    def __init__(self, backend: Backend, *, pad_mode: str = "sintel", warm_start: bool = False,
                 forward_warp: bool = False, resolution: Resolution | None = None) -> None:
        if warm_start:
            check_warm_start(backend)
        self.backend, self.pad_mode, self.warm_start = backend, pad_mode, warm_start
        self.forward_warp = forward_warp
        self.resolution = resolution or Resolution()
        self.model_size: tuple[int, int] | None = None  # of the last pair
        self._state: WarmState | None = None

    def reset(self) -> None:
        self._state = None

    def __call__(self, image1: np.ndarray, image2: np.ndarray) -> PairFlow:
        size = self._input_size(image1, image2)
        if self.resolution.active:
            small = self.resolution.model_size(size)
            check_reduced_size(self.backend, self.resolution, size, small)
            image1, image2 = downscale_pair(image1, image2, small)
        batch = prepare(image1, image2, self.pad_mode)
        check_image_size(self.backend, batch.size, batch.padded_size)
        state = self._state if self.warm_start else None
        if state is not None and tuple(np.shape(state.flow_low))[2:] != (batch.image1.shape[2] // 8,
                                                                      batch.image1.shape[3] // 8):
            state = None  # the frame size changed: start cold
        result = self.backend.infer(batch.image1, batch.image2, state=state)
        if self.warm_start:
            self._state = forward_warp_state(result.state) if self.forward_warp else result.state
        self.model_size = batch.size
        flow = batch.unpad(result.flow)[0]
        if self.resolution.active:
            flow = upsample_flow(flow, size)
        return PairFlow(flow=flow, result=result, warm=state is not None, model_size=batch.size)

    def _input_size(self, image1, image2) -> tuple[int, int]:
        """(H, W) of a pair of (H,W,3) images; with a resolution, refused unless both have that size (shrinking
        two different sizes to one would hide the mismatch)."""
        shape1, shape2 = np.shape(image1), np.shape(image2)
        if self.resolution.active and (len(shape1) != 3 or shape1 != shape2):
            raise InputError(f"{self.resolution.flag()} takes one pair of (H,W,3) images of the same size, got "
                             f"{shape1} and {shape2}")
        return tuple(shape1[:2])


def check_image_size(backend: Backend, size: tuple[int, int], padded: tuple[int, int]) -> None:
    """InputError in the user's terms (their image size, not the padded one) when the model cannot take the
    images: smaller than its correlation pyramid allows, or not the size a static export was made for."""
    from deqflow.errors import InputError
    from deqflow.padding import min_size_for_levels

    (h, w), (hp, wp) = size, padded
    minimum = min_size_for_levels(backend.levels)
    if hp < minimum or wp < minimum:
        scale = minimum / min(h, w)
        suggest = f"{-(-h * minimum // min(h, w))}x{-(-w * minimum // min(h, w))}"
        raise InputError(f"the images are {h}x{w} (HxW), too small for this model: it needs at least "
                         f"{minimum}x{minimum}; upscale them (e.g. {scale:.2g}x, to {suggest}) and divide the flow "
                         "by the same factor")
    static = [d for d in (backend.inputs[0].shape[2:] if backend.inputs else []) if isinstance(d, int)]
    if len(static) == 2 and tuple(static) != (hp, wp):
        padding = f" (padded to {hp}x{wp})" if (hp, wp) != (h, w) else ""
        raise InputError(f"the images are {h}x{w}{padding}, but {backend.model_path} was exported for "
                         f"{static[0]}x{static[1]} only: resize the images to that size, or export the model with "
                         f"--height {hp} --width {wp} (or --dynamic)")


def check_reduced_size(backend: Backend, resolution: Resolution, size: tuple[int, int],
                       small: tuple[int, int]) -> None:
    """InputError in the option's terms when the reduced size cannot run: below the model's minimum (with the
    smallest setting that works) or not the size a static export was made for."""
    from deqflow.padding import min_size_for_levels

    (h, w), (hs, ws) = size, small
    ran = f"{resolution.flag()} runs the model at {hs}x{ws} for these {h}x{w} images"
    minimum = min_size_for_levels(backend.levels)
    if min(hs, ws) < minimum:
        if min(h, w) < minimum:
            return  # too small even at full size: check_image_size says so
        raise InputError(f"{ran}, smaller than this model's minimum {minimum}x{minimum}: use "
                         f"{smallest_setting(resolution, size, minimum)} or larger")
    static = [d for d in (backend.inputs[0].shape[2:] if backend.inputs else []) if isinstance(d, int)]
    if len(static) == 2 and tuple(static) != (hs, ws):
        fits = Resolution(max_side=max(static)).model_size(size) == tuple(static)
        hint = f"use --max-side {max(static)}, " if fits else ""
        raise InputError(f"{ran}, but {backend.model_path} was exported for {static[0]}x{static[1]} only: {hint}"
                         f"export the model for {hs}x{ws} (--height {hs} --width {ws}) or with --dynamic")


def smallest_setting(resolution: Resolution, size: tuple[int, int], minimum: int) -> str:
    """The smallest --scale (2 decimals) or --max-side (multiple of 8) whose reduced size is at least `minimum`."""
    if resolution.scale is not None:
        scale = np.ceil(100 * minimum / min(size)) / 100
        while min(Resolution(scale=min(1.0, scale)).model_size(size)) < minimum and scale < 1:
            scale += 0.01
        return f"--scale {min(1.0, scale):.2f}"
    side = -(-minimum * max(size) // min(size) // 8) * 8
    while min(Resolution(max_side=side).model_size(size)) < minimum:
        side += 8
    return f"--max-side {side}"
