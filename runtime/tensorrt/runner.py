"""Running a TensorRT engine with the name-based API (TensorRT 10/11: `set_input_shape`,
`set_tensor_address`, `execute_async_v3` on a non-default stream), with optional CUDA-graph capture and a
fallback to plain enqueues when capture fails."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deqflow.errors import EngineMismatchError, ProfileError
from runtime.tensorrt import import_tensorrt
from runtime.tensorrt.memory import Buffer, DeviceMemory, require_cuda_device

Profile = dict[str, tuple[list[int], list[int], list[int]]]
"""{input: (min, opt, max)} as `engine.get_tensor_profile_shape(name, 0)` reports it (static: 3x the shape)."""


def check_profile(shapes: dict[str, tuple[int, ...]], profile: Profile, where: str = "engine") -> None:
    """ProfileError (before anything runs) unless every input shape lies inside the engine's profile."""
    for name, (lo, _, hi) in profile.items():
        if name not in shapes:
            raise ProfileError(f"{where}: input {name} is missing (the engine takes {', '.join(profile)})")
        actual = tuple(int(d) for d in shapes[name])
        if len(actual) != len(lo):
            raise ProfileError(f"{where}: input {name} has rank {len(actual)} ({list(actual)}), expected {len(lo)}")
        bad = [i for i, (a, mn, mx) in enumerate(zip(actual, lo, hi)) if not mn <= a <= mx]
        if bad:
            raise ProfileError(f"{where}: input {name} of shape {list(actual)} is outside the engine's "
                               f"optimization profile (min {list(lo)}, max {list(hi)}; dimension "
                               f"{', '.join(map(str, bad))}). Rebuild with deqflow build --min-shape/--max-shape "
                               "covering it, or export/build an engine for this size")


def deserialize(plan: bytes, path: str = "engine"):
    """The ICudaEngine of a plan; EngineMismatchError when this TensorRT cannot load it."""
    trt = import_tensorrt()
    require_cuda_device()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize {path} (built by another "
                                  "TensorRT version or for another GPU, or corrupt): rebuild it with deqflow build")
    return engine


class TrtRunner:
    """One engine + execution context: name-based I/O, output ring buffers (stable addresses), optional CUDA
    graphs captured per (shapes, addresses) with a fallback to plain enqueues when capture fails."""

    RING = 2  # outputs alternate between two buffer sets, so a step may read the previous step's outputs

    def __init__(self, engine, memory: DeviceMemory, *, name: str = "engine", cuda_graph: bool = False) -> None:
        trt = import_tensorrt()
        self.engine, self.memory, self.name = engine, memory, name
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profile: Profile = {}
        for n in self.inputs:
            shape = list(engine.get_tensor_shape(n))
            if -1 in shape:
                lo, opt, hi = engine.get_tensor_profile_shape(n, 0)
                self.profile[n] = (list(lo), list(opt), list(hi))
            else:
                self.profile[n] = (shape, shape, shape)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, Callable[[], None]] = {}
        self._graph_failed = False
        self._staging: dict[str, Buffer] = {}
        self._rings: dict[tuple, list[dict[str, Buffer]]] = {}
        self._turn = 0

    def _device_input(self, name: str, value: np.ndarray | Buffer) -> Buffer:
        if not isinstance(value, np.ndarray):
            return value
        value = np.ascontiguousarray(value, self.dtypes[name])
        buf = self._staging.get(name)
        if buf is None or tuple(getattr(buf, "shape", ())) != value.shape:
            buf = self._staging[name] = self.memory.empty(value.shape, value.dtype)
        return self.memory.upload(value, buf)

    def _next_outputs(self, key_shapes: tuple) -> dict[str, Buffer]:
        """The next output buffer set of the ring for these input shapes (allocated on first use)."""
        ring = self._rings.get(key_shapes)
        if ring is None:
            ring = self._rings[key_shapes] = [
                {n: self.memory.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n]) for n in self.outputs}
                for _ in range(self.RING)]
        outs = ring[self._turn % self.RING]
        self._turn += 1
        return outs

    def run(self, feeds: dict[str, np.ndarray | Buffer]) -> dict[str, Buffer]:
        """feeds: numpy (uploaded into staging buffers) or device tensors -> device outputs (ring buffers)."""
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in self.inputs if n in feeds}
        check_profile(shapes, self.profile, self.name)  # before anything runs
        ctx = self.context
        device = {n: self._device_input(n, feeds[n]) for n in self.inputs}
        for n in self.inputs:
            ctx.set_input_shape(n, shapes[n])
            ctx.set_tensor_address(n, self.memory.ptr(device[n]))
        key_shapes = tuple(sorted(shapes.items()))
        outs = self._next_outputs(key_shapes)
        for n in self.outputs:
            ctx.set_tensor_address(n, self.memory.ptr(outs[n]))
        if self.cuda_graph and not self._graph_failed:
            self._run_graph((key_shapes, tuple(self.memory.ptr(device[n]) for n in self.inputs),
                             tuple(self.memory.ptr(outs[n]) for n in self.outputs)))
        else:
            self._enqueue()
        return dict(outs)

    def _enqueue(self) -> bool:
        if not self.context.execute_async_v3(self.memory.handle):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed")
        return True

    def _run_graph(self, key: tuple) -> None:
        """Replay the CUDA graph of these shapes and addresses, capturing it on first use."""
        replay = self._graphs.get(key)
        if replay is not None:
            replay()
            return
        self._enqueue()  # one plain run first, so capture does not record initialisation work
        replay = self.memory.capture(lambda: bool(self.context.execute_async_v3(self.memory.handle)))
        if replay is None:
            self._graph_failed = True  # not capturable: keep running without graphs
        else:
            self._graphs[key] = replay
