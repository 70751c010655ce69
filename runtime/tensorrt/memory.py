"""Device memory and streams for the TensorRT runner, behind one small Protocol.

Providers: cuda-python (NVIDIA's CUDA bindings; the default, it needs nothing else), torch CUDA tensors
(zero-copy; preferred when torch is already loaded in the process) and pycuda (only when installed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import missing, optional, require

Buffer = Any
"""A provider's device array (torch tensor, cudaMalloc'd buffer, pycuda GPUArray); it has a `.shape`."""


class DeviceMemory(Protocol):
    """What the runner needs from a device-memory provider."""

    kind: str

    @property
    def handle(self) -> int:
        """The CUDA stream handle that TensorRT enqueues on (never the default stream)."""

    def empty(self, shape: Sequence[int], dtype: np.dtype) -> Buffer: ...

    def upload(self, array: np.ndarray, out: Buffer | None = None) -> Buffer: ...

    def download(self, x: Buffer) -> np.ndarray: ...

    def ptr(self, x: Buffer) -> int: ...

    def synchronize(self) -> None: ...

    def capture(self, enqueue: Callable[[], bool]) -> Callable[[], None] | None:
        """A replay function of a CUDA graph of `enqueue()` on this stream, or None when capture fails."""


def import_cudart():
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6), or None."""
    return optional("cuda.bindings.runtime") or optional("cuda.cudart")


def gpu_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') via cuda-python or torch; MissingDependencyError if none."""
    cudart = import_cudart()
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(device_id)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    torch = optional("torch")
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device_id)
        return torch.cuda.get_device_name(device_id), f"{major}.{minor}"
    raise missing("gpu", "the tensorrt backend", "no CUDA device found through cuda-python or torch")


def require_cuda_device(device_id: int = 0) -> None:
    """Stop with one clear message unless CUDA device `device_id` is usable. Called before any TensorRT
    runtime or builder object exists: TensorRT used after a CUDA initialisation failure crashes the process."""
    reasons = []
    cudart = import_cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and int(count) > device_id:
            return
        reasons.append(f"cuda-python: {'no device ' + str(device_id) if int(err) == 0 else err}")
    else:
        reasons.append("cuda-python: not installed")
    torch = sys.modules.get("torch")  # only a torch that is already loaded: importing it costs seconds
    if torch is not None and torch.cuda.is_available() and torch.cuda.device_count() > device_id:
        return
    raise missing("gpu", "TensorRT", f"no usable CUDA device {device_id}; " + "; ".join(reasons))


def _check_cuda(err, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed with CUDA error {err}")


class _DeviceArray:
    """A cudaMalloc'd buffer (cuda-python) with shape and dtype; freed when garbage-collected."""

    def __init__(self, cudart, shape: Sequence[int], dtype: np.dtype) -> None:
        self.cudart, self.shape, self.dtype = cudart, tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        err, self.ptr = cudart.cudaMalloc(max(self.nbytes, 1))
        _check_cuda(err, "cudaMalloc")

    def __del__(self) -> None:
        try:
            self.cudart.cudaFree(self.ptr)
        except Exception:  # interpreter shutdown
            pass


class CudaPythonMemory:
    """Device memory and stream through NVIDIA's cuda-python."""

    kind = "cuda-python"

    def __init__(self, device_id: int = 0) -> None:
        cudart = import_cudart()
        if cudart is None:
            raise missing("cuda", "the tensorrt backend's device memory")
        self.cudart = cudart
        _check_cuda(cudart.cudaSetDevice(device_id)[0], "cudaSetDevice")
        err, self.stream = cudart.cudaStreamCreate()
        _check_cuda(err, "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def empty(self, shape: Sequence[int], dtype: np.dtype) -> _DeviceArray:
        return _DeviceArray(self.cudart, shape, dtype)

    def upload(self, array: np.ndarray, out: _DeviceArray | None = None) -> _DeviceArray:
        array = np.ascontiguousarray(array)
        out = out or self.empty(array.shape, array.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check_cuda(self.cudart.cudaMemcpyAsync(out.ptr, array.ctypes.data, array.nbytes, kind, self.stream)[0],
                    "cudaMemcpyAsync")
        self.synchronize()  # the host array may be freed after we return
        return out

    def download(self, x: _DeviceArray) -> np.ndarray:
        host = np.empty(x.shape, x.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check_cuda(self.cudart.cudaMemcpyAsync(host.ctypes.data, x.ptr, x.nbytes, kind, self.stream)[0],
                    "cudaMemcpyAsync")
        self.synchronize()
        return host

    def ptr(self, x: _DeviceArray) -> int:
        return int(x.ptr)

    def synchronize(self) -> None:
        _check_cuda(self.cudart.cudaStreamSynchronize(self.stream)[0], "cudaStreamSynchronize")

    def capture(self, enqueue: Callable[[], bool]) -> Callable[[], None] | None:
        c = self.cudart
        mode = c.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        if int(c.cudaStreamBeginCapture(self.stream, mode)[0]) != 0:
            return None
        ok = bool(enqueue())
        err, graph = c.cudaStreamEndCapture(self.stream)
        if not ok or int(err) != 0:
            return None
        err, exec_graph = c.cudaGraphInstantiate(graph, 0)
        if int(err) != 0:
            return None

        def replay() -> None:
            _check_cuda(c.cudaGraphLaunch(exec_graph, self.stream)[0], "cudaGraphLaunch")

        return replay


class TorchMemory:
    """Device memory as torch CUDA tensors (zero-copy: TensorRT reads/writes them through data_ptr())."""

    kind = "torch"

    def __init__(self, device_id: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise missing("gpu", "the tensorrt backend", "torch.cuda.is_available() is False")
        self.torch, self.device = torch, torch.device("cuda", device_id)
        self.stream = torch.cuda.Stream(self.device)  # non-default: enqueueV3 on the default stream syncs

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def empty(self, shape: Sequence[int], dtype: np.dtype) -> Buffer:
        return self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device=self.device)

    def upload(self, array: np.ndarray, out: Buffer | None = None) -> Buffer:
        src = self.torch.from_numpy(np.ascontiguousarray(array))
        with self.torch.cuda.stream(self.stream):
            if out is None:
                return src.to(self.device, non_blocking=False)
            out.copy_(src)
            return out

    def download(self, x: Buffer) -> np.ndarray:
        self.stream.synchronize()
        return x.detach().cpu().numpy()

    def ptr(self, x: Buffer) -> int:
        return int(x.data_ptr())

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue: Callable[[], bool]) -> Callable[[], None] | None:
        try:
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                if not enqueue():
                    return None
            return graph.replay
        except RuntimeError:
            return None

    def _dtype(self, dtype: np.dtype):
        t = self.torch
        return {np.dtype(np.float32): t.float32, np.dtype(np.float16): t.float16, np.dtype(np.int32): t.int32,
                np.dtype(np.int64): t.int64, np.dtype(np.bool_): t.bool}[np.dtype(dtype)]


class PycudaMemory:
    """pycuda memory, used only when installed (its context handling conflicts with torch's)."""

    kind = "pycuda"

    def __init__(self, device_id: int = 0) -> None:
        cuda = require("pycuda.driver", "the tensorrt backend's device memory")
        cuda.init()
        self.cuda = cuda
        self.ctx = cuda.Device(device_id).retain_primary_context()
        self.ctx.push()
        self.stream = cuda.Stream()

    @property
    def handle(self) -> int:
        return self.stream.handle

    def empty(self, shape: Sequence[int], dtype: np.dtype) -> Buffer:
        from pycuda import gpuarray

        return gpuarray.empty(tuple(shape), np.dtype(dtype))

    def upload(self, array: np.ndarray, out: Buffer | None = None) -> Buffer:
        array = np.ascontiguousarray(array)
        out = out if out is not None else self.empty(array.shape, array.dtype)
        out.set(array, stream=self.stream)
        self.stream.synchronize()
        return out

    def download(self, x: Buffer) -> np.ndarray:
        self.stream.synchronize()
        return x.get()

    def ptr(self, x: Buffer) -> int:
        return int(x.gpudata)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue: Callable[[], bool]) -> Callable[[], None] | None:
        return None  # no CUDA-graph capture through pycuda: the runner runs eagerly


MEMORY: dict[str, Callable[[int], DeviceMemory]] = {
    "cuda-python": CudaPythonMemory, "torch": TorchMemory, "pycuda": PycudaMemory}


def device_memory(kind: str = "auto", device_id: int = 0) -> DeviceMemory:
    """Device-memory provider `kind`; 'auto': torch when already loaded, else the first of cuda-python, torch,
    pycuda that works."""
    if kind != "auto":
        if kind not in MEMORY:
            raise InputError(f"memory must be one of auto, {', '.join(MEMORY)}; got {kind!r}")
        return MEMORY[kind](device_id)
    torch_loaded = sys.modules.get("torch") is not None
    order = ("torch", "cuda-python", "pycuda") if torch_loaded else ("cuda-python", "torch", "pycuda")
    errors = []
    for name in order:
        try:
            return MEMORY[name](device_id)
        except (ImportError, RuntimeError) as exc:  # not installed, or no usable device through it
            errors.append(f"{name}: {exc}")
    raise missing("cuda", "the tensorrt backend (device memory)", "; ".join(errors))
