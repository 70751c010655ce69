"""The two inference callables bound into Triton: `FlowModel` (pairs, dynamically batched) and `StreamModel`
(one frame per request of a Triton sequence, warm-started from the stream's previous fixed point).

Each receives the requests Triton grouped into one execution. PyTriton cannot answer one request of a group
with an error, so a group holding one bad request runs the good ones and gives the bad one an `error` output
(the client raises it); a request alone gets a Triton error response carrying the RequestError message.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from runtime.backends import BackendChoice
from runtime.serving import adapter
from runtime.serving.protocol import (
    FRAME_INPUT,
    IMAGE_INPUTS,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    RequestError,
    check_image,
    check_pair,
    failure_message,
)


@dataclass
class Admission:
    """Which frames a model instance accepts: at most `max_pixels` per frame (0: any), and only requests whose
    memory plan (deqflow.memory_plan, `request` re-sized to theirs) fits `limit`, one instance's share."""

    request: Any = None  # deqflow.memory_plan.PlanRequest of the served model, or None (no plan)
    limit: Any = None  # deqflow.memory_plan.MemoryLimit
    max_pixels: int = 0

    def check(self, height: int, width: int, batch: int = 1) -> None:
        from deqflow.memory_plan import estimate, human

        if self.max_pixels and height * width > self.max_pixels:
            raise RequestError(f"frame {height}x{width} has {height * width} pixels, more than this server "
                               f"admits ({self.max_pixels}, --max-size); send a smaller frame")
        if self.request is None or self.limit is None:
            return
        plan = estimate(replace(self.request, height=height, width=width, batch=batch), self.limit)
        if not plan.fits:
            raise RequestError(f"frame {height}x{width} (batch {batch}) needs about {human(plan.total)} with "
                               f"{plan.request.corr} correlation, more than one model instance may use "
                               f"({human(self.limit.bytes)}); send a smaller frame or fewer pairs per request")


def _column(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def error_response(message: str, n: int) -> dict[str, np.ndarray]:
    return {"error": np.array([[message.encode()]] * n, dtype=np.bytes_)}


def reasons(values: list[str]) -> np.ndarray:
    """Per-pair stop reasons as a (N, 1) bytes column ('' for a stream's first frame, which solves nothing)."""
    return np.array([[v.encode()] for v in values], dtype=np.bytes_)


def answer(responses: list[Any], errors: dict[int, str], n_items: list[int]) -> list[dict[str, np.ndarray]]:
    """Responses in request order; a lone bad request raises (a Triton error response)."""
    if len(responses) == 1 and 0 in errors:
        raise RequestError(errors[0])
    return [error_response(errors[i], n_items[i]) if i in errors else r for i, r in enumerate(responses)]


class FlowModel:
    """`deqflow_flow`: image1/image2 (N,3,H,W) float32 -> flow (N,2,H,W), iterations, residual, batch (the
    number of pairs solved together), error. Requests of one size are solved as one batch."""

    def __init__(self, choice: BackendChoice, admission: Admission | None = None) -> None:
        self.backend = choice.open()
        self.levels = adapter.levels_of(self.backend)
        self.admission = admission or Admission()

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        errors: dict[int, str] = {}
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                image1, image2 = (np.asarray(request[name]) for name in IMAGE_INPUTS)
                for a, b in zip(image1, image2):
                    check_pair(a, b, self.levels)
                getattr(self, "admission", Admission()).check(*image1.shape[2:], batch=len(image1))
            except RequestError as exc:
                errors[i] = str(exc)
                continue
            groups.setdefault(image1.shape[1:], []).append(i)
        responses: list[Any] = [None] * len(requests)
        for members in groups.values():
            image1 = np.concatenate([requests[i]["image1"] for i in members])
            image2 = np.concatenate([requests[i]["image2"] for i in members])
            try:
                outputs = adapter.infer_batch(self.backend, image1, image2)
            except Exception as exc:  # the model failed: these requests get one clean line, the server goes on
                errors.update({i: failure_message(exc) for i in members})
                continue
            start = 0
            for i in members:
                n = len(requests[i]["image1"])
                mine, start = outputs[start:start + n], start + n
                responses[i] = {"flow": np.stack([o.flow for o in mine]),
                                "iterations": _column([o.iterations for o in mine], np.int32),
                                "residual": _column([o.residual for o in mine], np.float32),
                                "batch": _column([len(image1)] * n, np.int32),
                                "stop_reason": reasons([o.stop_reason for o in mine]),
                                "error": np.array([[b""]] * n, dtype=np.bytes_)}
        return answer(responses, errors, [len(np.asarray(r["image1"])) if "image1" in r.data else 1
                                          for r in requests])


@dataclass
class Stream:
    """What the server keeps of one sequence: its last frame, the fixed point solved for it, when it was used."""

    frame: np.ndarray  # (3,H,W)
    state: Any
    last_seen: float


class StreamStore:
    """Per-sequence state shared by every instance of the stream model, freed at the sequence end or when a
    sequence has been idle longer than `idle_timeout_s` (Triton forgets such a sequence too)."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = float(idle_timeout_s)
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, key: int) -> Stream | None:
        with self._lock:
            return self._streams.get(key)

    def put(self, key: int, stream: Stream) -> None:
        with self._lock:
            self._streams[key] = stream

    def drop(self, key: int) -> None:
        with self._lock:
            self._streams.pop(key, None)

    def expire(self, now: float | None = None) -> int:
        """Forget idle sequences; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [k for k, s in self._streams.items() if now - s.last_seen > self.idle_timeout_s]
            for k in old:
                del self._streams[k]
        return len(old)


class StreamModel:
    """`deqflow_stream`: one frame (1,3,H,W) per request of a sequence (START/END/CORRID from Triton's sequence
    batcher) -> the flow from the previous frame, its iterations, residual and whether it was warm-started.
    The first frame of a sequence returns zero flow and 0 iterations."""

    def __init__(self, choice: BackendChoice, store: StreamStore, admission: Admission | None = None) -> None:
        self.backend = choice.open()
        self.levels = adapter.levels_of(self.backend)
        self.store = store
        self.admission = admission or Admission()

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        self.store.expire()
        errors: dict[int, str] = {}
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                responses[i] = self._frame(request)
            except RequestError as exc:
                errors[i] = str(exc)
            except Exception as exc:  # the model failed: one clean line for this request, the server goes on
                errors[i] = failure_message(exc)
        return answer(responses, errors, [1] * len(requests))

    def _frame(self, request: Any) -> dict[str, np.ndarray]:
        if SEQUENCE_ID not in request.data:
            raise RequestError("deqflow_stream needs a sequence: send sequence_id, sequence_start and sequence_end")
        key = int(np.asarray(request[SEQUENCE_ID]).ravel()[0])
        start = bool(np.asarray(request[SEQUENCE_START]).ravel()[0])
        end = bool(np.asarray(request[SEQUENCE_END]).ravel()[0])
        frames = np.asarray(request[FRAME_INPUT])
        if len(frames) != 1:
            raise RequestError(f"a stream request carries one frame, got a batch of {len(frames)}")
        frame = frames[0]
        check_image(FRAME_INPUT, frame, self.levels)
        getattr(self, "admission", Admission()).check(*frame.shape[1:])
        now = time.monotonic()
        stream = None if start else self.store.get(key)
        if not start and stream is None:
            raise RequestError(f"sequence {key} is unknown, ended or expired: start it with sequence_start")
        if stream is not None and stream.frame.shape != frame.shape:
            raise RequestError(f"sequence {key}: frame size changed from {stream.frame.shape[1:]} to "
                               f"{frame.shape[1:]}; start a new sequence")
        if stream is None:
            out, warm = adapter.PairOutput(np.zeros((2, *frame.shape[1:]), np.float32), 0, 0.0), False
            state = None
        else:
            warm = stream.state is not None and self.backend.supports_warm_start
            out = adapter.infer_pair(self.backend, stream.frame, frame, stream.state)
            state = out.state
        if end:
            self.store.drop(key)
        else:
            self.store.put(key, Stream(frame.copy(), state, now))
        return {"flow": out.flow[None], "iterations": _column([out.iterations], np.int32),
                "residual": _column([out.residual], np.float32), "warm": _column([int(warm)], np.int32),
                "stop_reason": reasons([out.stop_reason]),
                "error": np.array([[b""]], dtype=np.bytes_)}
