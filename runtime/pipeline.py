"""uint8 images in, (H,W,2) flow out: preprocessing + a backend + warm-start bookkeeping for sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deqflow.host_solver import WarmState
from runtime.backends.base import Backend, InferenceResult
from runtime.preprocessing import prepare
from runtime.warm_start import check_warm_start, forward_warp_state


@dataclass
class PairFlow:
    flow: np.ndarray  # (H,W,2) float32 at the input size (padding removed)
    result: InferenceResult  # padded outputs and solver statistics
    warm: bool  # whether this pair started from the previous fixed point

    @property
    def iterations(self) -> int:
        return self.result.iterations


class FlowEstimator:
    """Run a backend on image pairs with the shared preprocessing. With `warm_start`, each call starts from
    the fixed point of the previous call (video: frame t -> t+1 after t-1 -> t), as it is or, with
    `forward_warp`, moved along its own flow first (see `forward_warp_state`); `reset()` forgets it.

    Reuse is the default because it measured better on the synthetic videos of docs/warm_start.md: the
    unwarped fixed point is closer to the next pair's fixed point and reaches the cold solve's accuracy in
    fewer steps, for the same iteration counts under the residual stop rule."""

    def __init__(self, backend: Backend, *, pad_mode: str = "sintel", warm_start: bool = False,
                 forward_warp: bool = False) -> None:
        if warm_start:
            check_warm_start(backend)
        self.backend, self.pad_mode, self.warm_start = backend, pad_mode, warm_start
        self.forward_warp = forward_warp
        self._state: WarmState | None = None

    def reset(self) -> None:
        self._state = None

    def __call__(self, image1: np.ndarray, image2: np.ndarray) -> PairFlow:
        batch = prepare(image1, image2, self.pad_mode)
        check_image_size(self.backend, batch.size, batch.padded_size)
        state = self._state if self.warm_start else None
        if state is not None and tuple(np.shape(state.flow_low))[2:] != (batch.image1.shape[2] // 8,
                                                                      batch.image1.shape[3] // 8):
            state = None  # the frame size changed: start cold
        result = self.backend.infer(batch.image1, batch.image2, state=state)
        if self.warm_start:
            self._state = forward_warp_state(result.state) if self.forward_warp else result.state
        return PairFlow(flow=batch.unpad(result.flow)[0], result=result, warm=state is not None)


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
