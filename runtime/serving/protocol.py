"""What server, client and model repositories agree on: model and tensor names, the request checks, and the
error that reaches the client as a one-line Triton error.

Requests carry model inputs, not files: float32 RGB (3,H,W) in 0..255, H and W multiples of 8 (the client
pads with runtime.prepare, exactly as local inference does), so a response's flow equals local inference's.
"""

from __future__ import annotations

import logging

import numpy as np

from deqflow.errors import InputError
from deqflow.padding import check_model_input_size

FLOW_MODEL = "deqflow_flow"
STREAM_MODEL = "deqflow_stream"
IMAGE_INPUTS = ("image1", "image2")
FRAME_INPUT = "frame"
# Triton's sequence batcher writes these control tensors into every request of a sequence
SEQUENCE_START, SEQUENCE_END, SEQUENCE_ID = "START", "END", "CORRID"
FLOW_OUTPUTS = ("flow", "iterations", "residual", "stop_reason", "error")
STREAM_OUTPUTS = ("flow", "iterations", "residual", "stop_reason", "warm", "error")
ERROR_MARK = "RequestError: "  # how a request's error message starts inside Triton's error text
LOG = logging.getLogger("deqflow.serve")
MAX_CANDIDATE_SEQUENCES = 64  # streams the sequence batcher interleaves at once (others queue)


class Enum(str):
    """A protobuf enum value in a model configuration (config.pbtxt writes it without quotes)."""


def sequence_batching(idle_timeout_s: float) -> dict:
    """The `sequence_batching` section of deqflow_stream: START/END/CORRID control tensors, idle timeout, and
    the oldest-first strategy (several streams' frames share one execution)."""
    flags = [(SEQUENCE_START, "CONTROL_SEQUENCE_START"), (SEQUENCE_END, "CONTROL_SEQUENCE_END")]
    controls = [{"name": n, "control": [{"kind": Enum(k), "int32_false_true": [0, 1]}]} for n, k in flags]
    controls.append({"name": SEQUENCE_ID, "control": [{"kind": Enum("CONTROL_SEQUENCE_CORRID"),
                                                        "data_type": Enum("TYPE_UINT64")}]})
    return {"max_sequence_idle_microseconds": int(idle_timeout_s * 1e6), "control_input": controls,
            "oldest": {"max_candidate_sequences": MAX_CANDIDATE_SEQUENCES}}


class RequestError(InputError):
    """A request the server refuses. Its traceback is hidden so that Triton's error text carries one line."""

    @property
    def __traceback__(self):  # read by traceback.format_exception in PyTriton's error path
        return None

    @__traceback__.setter
    def __traceback__(self, value) -> None:
        pass


def check_image(name: str, image: np.ndarray, levels: int) -> None:
    """RequestError unless `image` is a usable (3,H,W) float32 model input."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise RequestError(f"{name} must have shape (3,H,W) per batch item, got {tuple(image.shape)}")
    try:
        check_model_input_size(int(image.shape[1]), int(image.shape[2]), levels=levels)
    except InputError as exc:
        raise RequestError(f"{name}: {exc}") from None
    if image.dtype != np.float32:
        raise RequestError(f"{name} must be float32 (RGB in 0..255), got {image.dtype}")
    if not np.isfinite(image).all():
        raise RequestError(f"{name} contains NaN or Inf pixels")
    if image.size and float(image.min()) < 0:
        raise RequestError(f"{name} must be in 0..255, got minimum {float(image.min()):.3f}")


def check_pair(image1: np.ndarray, image2: np.ndarray, levels: int) -> None:
    """RequestError unless both images of a batch item are usable and of one shape."""
    check_image("image1", image1, levels)
    check_image("image2", image2, levels)
    if image1.shape != image2.shape:
        raise RequestError(f"image1 and image2 differ in shape: {tuple(image1.shape)} vs {tuple(image2.shape)}")


def error_message(text: str) -> str:
    """The request's own message from a Triton error text (PyTriton wraps it in its traceback)."""
    if ERROR_MARK in text:
        return text.split(ERROR_MARK, 1)[1].strip().splitlines()[0]
    return text.strip().splitlines()[0] if text.strip() else text


def failure_message(exc: BaseException) -> str:
    """What a client reads when the model fails on its request: one line, no traceback, no server path (the
    full traceback goes to the server's log)."""
    from deqflow.errors import DeqflowError
    from deqflow.memory_plan import allocation_failure

    LOG.error("request failed", exc_info=exc)
    text = allocation_failure(exc)
    if text:
        return "the server ran out of memory on this request; send a smaller frame"
    if isinstance(exc, DeqflowError):
        first = (str(exc).splitlines() or [""])[0]
        return first if "/" not in first and ".py" not in first else type(exc).__name__
    return f"the model failed on this request ({type(exc).__name__}); the server log has the details"
