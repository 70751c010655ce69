"""A small client for `deqflow serve` over tritonclient (HTTP or gRPC): pairs and video streams, with the
same preprocessing as local inference (runtime.prepare pads; the flow comes back unpadded), so a served
flow equals `deqflow infer`'s. Every server-side refusal raises ServingError with the server's message."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np

from deqflow.errors import DeqflowError, InputError
from deqflow.extras import require
from runtime import prepare
from runtime.serving.protocol import FLOW_MODEL, FRAME_INPUT, STREAM_MODEL, error_message

PROTOCOLS = ("http", "grpc")


class ServingError(DeqflowError):
    """The server refused a request (bad input, unknown sequence...) or could not be reached."""


def _module(protocol: str):
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return require(f"tritonclient.{protocol}", "the deqflow serving client")


def parse_url(url: str) -> tuple[str, str]:
    """'grpc://host:port' / 'http://host:port' / 'host:port' (HTTP) -> (protocol, 'host:port')."""
    for protocol in PROTOCOLS:
        if url.startswith(f"{protocol}://"):
            return protocol, url[len(protocol) + 3:].rstrip("/")
    if "://" in url:
        raise InputError(f"server URL {url!r} must start with http:// or grpc:// (or be host:port for HTTP)")
    return "http", url.rstrip("/")


@dataclass
class ServedFlow:
    """One pair's answer: flow (H,W,2) at the input size (or (N,2,Hp,Wp) padded for raw batches)."""

    flow: np.ndarray
    iterations: np.ndarray  # (N,) (-1 when the model does not report them)
    residual: np.ndarray  # (N,)
    batch: np.ndarray | None = None  # (N,) size of the solve each pair was part of
    warm: bool | None = None  # streams: whether the solve started from the stream's previous fixed point
    stop_reasons: list[str] | None = None  # (N,) why each pair's solve ended (None: not reported)


def texts(column: np.ndarray | None) -> list[str] | None:
    """A bytes column as strings (None where the model has no such output)."""
    if column is None:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(column)]


class Client:
    """Connection to one server. `url`: 'http://127.0.0.1:8000' or 'grpc://127.0.0.1:8001'."""

    _sequence_ids = itertools.count(((os.getpid() & 0xFFFF) << 32) + 1)

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.protocol, self.address = parse_url(url)
        self.module = _module(self.protocol)
        self.timeout_s = float(timeout_s)
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if self.protocol == "http" else {}
        self.client = self.module.InferenceServerClient(self.address, **kwargs)

    def ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready() and self.client.is_model_ready(FLOW_MODEL))
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- raw requests (model inputs)
    def _input(self, name: str, array: np.ndarray):
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.uint8): "UINT8",
                 np.dtype(np.int32): "INT32", np.dtype(np.float16): "FP16"}.get(array.dtype, "FP32")
        tensor = self.module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def infer(self, model: str, inputs: dict[str, np.ndarray], **sequence) -> dict[str, np.ndarray]:
        """Send named arrays as they are; returns the named outputs. ServingError on any refusal."""
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            result = self.client.infer(model, [self._input(k, v) for k, v in inputs.items()], **sequence, **kwargs)
        except self.module.InferenceServerException as exc:
            raise ServingError(f"{model}: {error_message(exc.message() or str(exc))}") from None
        response = result.get_response()
        names = [o["name"] for o in response["outputs"]] if isinstance(response, dict) else \
            [o.name for o in response.outputs]
        outputs = {name: result.as_numpy(name) for name in names}
        errors = [e.decode() if isinstance(e, bytes) else str(e) for e in np.ravel(outputs.get("error", []))]
        if any(errors):
            raise ServingError(f"{model}: {next(e for e in errors if e)}")
        return outputs

    def infer_padded(self, image1: np.ndarray, image2: np.ndarray) -> ServedFlow:
        """(N,3,H,W) float32 model inputs (H, W multiples of 8) -> padded flow (N,2,H,W)."""
        out = self.infer(FLOW_MODEL, {"image1": image1, "image2": image2})
        n = len(image1)  # a whole-graph model in NVIDIA's Triton has no iterations / batch outputs
        return ServedFlow(out["flow"], out.get("iterations", np.full(n, -1)).reshape(-1),
                          out.get("residual", np.full(n, np.nan)).reshape(-1),
                          out.get("batch", np.full(n, -1)).reshape(-1), stop_reasons=texts(out.get("stop_reason")))

    def pair(self, image1: np.ndarray, image2: np.ndarray, pad_mode: str = "sintel") -> ServedFlow:
        """uint8 RGB (H,W,3) images (or lists of them) -> flow (H,W,2) ((N,H,W,2) for lists), as local inference."""
        batch = prepare(image1, image2, pad_mode)
        served = self.infer_padded(batch.image1, batch.image2)
        flow = batch.unpad(served.flow)
        served.flow = flow[0] if np.ndim(image1) == 3 else flow
        return served

    def stream(self, pad_mode: str = "sintel", sequence_id: int | None = None) -> Stream:
        return Stream(self, pad_mode, sequence_id or next(self._sequence_ids))


class Stream:
    """One video stream (a Triton sequence): `send(frame)` for each frame, `send(frame, last=True)` for the last.
    The first frame returns None; every later one the flow from the previous frame."""

    def __init__(self, client: Client, pad_mode: str, sequence_id: int) -> None:
        self.client, self.pad_mode, self.sequence_id = client, pad_mode, int(sequence_id)
        self.started = False

    def send_padded(self, frame: np.ndarray, last: bool = False) -> ServedFlow:
        """(1,3,H,W) float32 model input -> padded flow (1,2,H,W) (zeros for the first frame)."""
        out = self.client.infer(STREAM_MODEL, {FRAME_INPUT: frame}, sequence_id=self.sequence_id,
                                sequence_start=not self.started, sequence_end=bool(last))
        self.started = True
        return ServedFlow(out["flow"], out["iterations"].reshape(-1), out["residual"].reshape(-1),
                          warm=bool(out["warm"].ravel()[0]), stop_reasons=texts(out.get("stop_reason")))

    def send(self, frame: np.ndarray, last: bool = False) -> ServedFlow | None:
        first = not self.started
        batch = prepare(frame, frame, self.pad_mode)
        served = self.send_padded(batch.image1, last)
        if first:
            return None
        served.flow = batch.unpad(served.flow)[0]
        return served
