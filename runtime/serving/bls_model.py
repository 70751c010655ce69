"""Triton python-backend model for a split export (copied as `model.py` by runtime.serving.triton_repo): the
host fixed-point solver (runtime.solve: tolerance stop, Anderson, warm start) driving the encoder, step and
decode models through BLS calls. Parameter `mode`: 'pair' (deqflow_flow: image pairs) or 'stream'
(deqflow_stream: one frame per request of a Triton sequence, warm-started from the sequence's previous fixed
point, which is freed at the sequence end or after the idle timeout).

Needs deqflow importable in the server's Python (`pip install --no-deps deqflow` plus numpy in NVIDIA's
container). Bad requests get a per-request Triton error; the other requests of the batch are answered. Every
error a client reads is one line without a traceback or a server path (runtime.serving.protocol.failure_message),
and frames above the `max_pixels` parameter (0: any) are refused before any work.
"""

from __future__ import annotations

import json
import time

import numpy as np


def _pb():
    import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

    return pb_utils


class BlsParts:
    """deqflow.host_solver.StepParts over BLS calls to the three graph models (values stay numpy on the host)."""

    def __init__(self, params: dict[str, str]) -> None:
        self.names = {part: params[f"{part}_model"] for part in ("encoder", "step", "decode")}
        self.context = json.loads(params["context_names"])
        self.hidden_dim = int(params["hidden_dim"])

    def _call(self, part: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        pb = _pb()
        request = pb.InferenceRequest(model_name=self.names[part], requested_output_names=outputs,
                                      inputs=[pb.Tensor(k, np.ascontiguousarray(v)) for k, v in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.names[part]}: {response.error().message()}")
        return {n: np.array(pb.get_output_tensor_by_name(response, n).as_numpy()) for n in outputs}

    def encode(self, image1, image2):
        ctx = self._call("encoder", {"image1": image1, "image2": image2}, self.context)
        return ctx, ctx["coords0"]

    def step(self, ctx, net, coords1):
        out = self._call("step", {**ctx, "net": net, "coords1": coords1},
                         ["net_next", "coords1_next", "residual", "residual_rel"])
        return out["net_next"], out["coords1_next"], out["residual"], out["residual_rel"]

    def decode(self, ctx, net, coords1):
        out = self._call("decode", {"net": net, "coords1": coords1, "coords0": ctx["coords0"]}, ["flow", "flow_low"])
        return out["flow"], out["flow_low"]

    def to_host(self, x):
        return x

    def from_host(self, x):
        return x


class TritonPythonModel:
    def initialize(self, args) -> None:
        from deqflow.solver_spec import SolveSpec, StopRule

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.mode, self.levels = params["mode"], int(params["levels"])
        self.parts = BlsParts(params)
        self.spec = SolveSpec(method=params["method"], stop=StopRule(
            tol=float(params["tol"]), stop_mode=params["stop_mode"], max_iter=int(params["max_iter"])))
        self.idle_timeout_s = float(params["idle_timeout_s"])
        self.max_pixels = int(params.get("max_pixels", "0"))
        self.streams: dict[int, tuple] = {}  # sequence id -> (frame, WarmState, last seen)

    def execute(self, requests):
        from runtime.serving.protocol import failure_message

        pb = _pb()
        now = time.monotonic()
        self.streams = {k: v for k, v in self.streams.items() if now - v[2] <= self.idle_timeout_s}
        responses = []
        for request in requests:
            try:
                outputs = self._pair(request) if self.mode == "pair" else self._frame(request, now)
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in outputs.items()]))
            except Exception as exc:  # every failure reaches the client as one clean line; the server keeps serving
                message = str(exc) if type(exc).__name__ == "RequestError" else failure_message(exc)
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message)))
        return responses

    def _admit(self, image: np.ndarray) -> None:
        from runtime.serving.protocol import RequestError

        h, w = image.shape[-2:]
        if self.max_pixels and h * w > self.max_pixels:
            raise RequestError(f"frame {h}x{w} has {h * w} pixels, more than this server admits ({self.max_pixels}, "
                               "--max-size); send a smaller frame")

    def _input(self, request, name: str) -> np.ndarray:
        return np.array(_pb().get_input_tensor_by_name(request, name).as_numpy())

    def _solve(self, image1, image2, state=None):
        from runtime import solve

        r = solve(self.parts, image1, image2, self.spec, state=state)
        return r, {"flow": r.flow.astype(np.float32),
                   "iterations": np.asarray(r.stats.sample_iterations, np.int32).reshape(-1, 1),
                   "residual": r.stats.final_abs.astype(np.float32).reshape(-1, 1),
                   "stop_reason": np.array([[v.encode()] for v in r.stats.reasons], dtype=np.object_)}

    def _pair(self, request) -> dict[str, np.ndarray]:
        from runtime.serving.protocol import check_pair

        image1, image2 = self._input(request, "image1"), self._input(request, "image2")
        for a, b in zip(image1, image2):
            check_pair(a, b, self.levels)
            self._admit(a)
        return self._solve(image1, image2)[1]

    def _frame(self, request, now: float) -> dict[str, np.ndarray]:
        from runtime.serving.protocol import RequestError, check_image

        key = int(request.correlation_id())
        start = bool(self._input(request, "START").ravel()[0])
        end = bool(self._input(request, "END").ravel()[0])
        frame = self._input(request, "frame")
        if len(frame) != 1:
            raise RequestError(f"a stream request carries one frame, got a batch of {len(frame)}")
        check_image("frame", frame[0], self.levels)
        self._admit(frame[0])
        previous = None if start else self.streams.get(key)
        if not start and previous is None:
            raise RequestError(f"sequence {key} is unknown, ended or expired: start it with sequence_start")
        if previous is not None and previous[0].shape != frame.shape:
            raise RequestError(f"sequence {key}: frame size changed; start a new sequence")
        if previous is None:
            state = None
            outputs = {"flow": np.zeros((1, 2, *frame.shape[2:]), np.float32), "iterations": np.zeros((1, 1), np.int32),
                       "residual": np.zeros((1, 1), np.float32), "stop_reason": np.array([[b""]], dtype=np.object_)}
        else:
            r, outputs = self._solve(previous[0], frame, previous[1])
            state = r.state
        outputs["warm"] = np.full((1, 1), int(previous is not None and previous[1] is not None), np.int32)
        if end:
            self.streams.pop(key, None)
        else:
            self.streams[key] = (frame, state, now)
        return outputs
