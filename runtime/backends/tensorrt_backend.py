"""TensorRT backend: engines built from deqflow's ONNX exports (cached) or loaded from `deqflow build` files.

Full layouts (unrolled / loop) run as one engine; the split layout runs three engines under the shared host
solver (tolerance stop, warm start, Anderson), the context staying on the GPU between steps. Device memory
comes from cuda-python, torch CUDA tensors or pycuda (runtime.tensorrt.memory.device_memory).

Not yet run on a GPU in this repository: docs/runtime.md ("GPU") says what has been checked and what to run first.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from deqflow.errors import EngineMismatchError, InputError
from deqflow.host_solver import WarmState
from deqflow.solver_spec import SolveOverrides
from runtime.backends.base import ExportedModelBackend, InferenceResult, TensorSpec
from runtime.modelfile import ModelFile
from runtime.tensorrt import import_tensorrt
from runtime.tensorrt.build import BuildSettings, build_engine, profiles_from_metadata
from runtime.tensorrt.cache import EngineCache, check_engine_compat, read_sidecar
from runtime.tensorrt.memory import DeviceMemory, device_memory, gpu_identity
from runtime.tensorrt.runner import TrtRunner, deserialize


class TrtStepParts:
    """StepParts (deqflow.host_solver) over the encoder / step / decode engines."""

    def __init__(self, runners: dict[str, TrtRunner], memory: DeviceMemory, context: list[str],
                 hidden_dim: int) -> None:
        self.runners, self.memory, self.context, self.hidden_dim = runners, memory, context, hidden_dim

    def encode(self, image1, image2):
        out = self.runners["encoder"].run({"image1": image1, "image2": image2})
        return {k: out[k] for k in self.context}, self.memory.download(out["coords0"])

    def step(self, ctx, net, coords1):
        out = self.runners["step"].run({**ctx, "net": net, "coords1": coords1})
        return (out["net_next"], out["coords1_next"], self.memory.download(out["residual"]),
                self.memory.download(out["residual_rel"]))

    def decode(self, ctx, net, coords1):
        out = self.runners["decode"].run({"net": net, "coords1": coords1, "coords0": ctx["coords0"]})
        return self.memory.download(out["flow"]), self.memory.download(out["flow_low"])

    def to_host(self, x):
        return x if isinstance(x, np.ndarray) else self.memory.download(x)

    def from_host(self, x):
        return self.memory.upload(np.ascontiguousarray(x, np.float32))


@dataclasses.dataclass
class EngineLoader:
    """The loader: a serialized engine per part of an export, built (through the engine cache) from its ONNX
    file, or read from a `deqflow build` engine after checking it matches this TensorRT and GPU (rebuilt from
    its ONNX file instead when `rebuild`)."""

    file: ModelFile
    build: BuildSettings | None = None
    cache_dir: str | os.PathLike | None = None
    rebuild: bool = False
    device_id: int = 0
    verbose: bool = False

    def __call__(self, part: str) -> bytes:
        path = self.file.parts[part]
        return self._from_onnx(part) if self.file.kind == "onnx" else self._from_engine(path)

    def _from_onnx(self, part: str) -> bytes:
        trt, meta = import_tensorrt(), self.file.exported()
        settings = dataclasses.replace(self.build) if self.build else BuildSettings()
        if not settings.profiles and meta.dynamic:
            names = ["image1", "image2"] + (["flow_init"] if meta.flow_init else [])
            settings.profiles = profiles_from_metadata(meta, names)
        settings.validate(trt.__version__, self.file.metadata[part].precision)
        plan, _ = build_engine(self.file.parts[part], settings, cache=EngineCache(self.cache_dir),
                               device_id=self.device_id, verbose=self.verbose)
        return plan

    def _from_engine(self, path) -> bytes:
        trt = import_tensorrt()
        info = read_sidecar(path)
        gpu, cc = gpu_identity(self.device_id)
        try:
            check_engine_compat(info, trt.__version__, gpu, cc, str(path))
        except EngineMismatchError:
            onnx = info.get("onnx")
            if not (self.rebuild and onnx and os.path.isfile(onnx)):
                raise
            plan, _ = build_engine(onnx, BuildSettings(**info.get("build", {})), cache=EngineCache(self.cache_dir),
                                   device_id=self.device_id)
            return plan
        return path.read_bytes()


class TensorRTBackend(ExportedModelBackend):
    """`tensorrt` backend. model: an ONNX export (engines built or taken from the cache) or an engine from
    `deqflow build`. Options: device_id, memory ('auto' | 'cuda-python' | 'torch' | 'pycuda'), cuda_graph,
    build (BuildSettings: precision, tf32, workspace, timing cache, profiles), cache_dir, rebuild (rebuild an
    engine made by another TensorRT version / for another GPU from its ONNX file instead of refusing it)."""

    name = "tensorrt"

    def __init__(self, model: str | os.PathLike | ModelFile, *, settings: SolveOverrides | None = None,
                 device_id: int = 0, memory: str = "auto", cuda_graph: bool = False,
                 build: BuildSettings | None = None, cache_dir: str | os.PathLike | None = None,
                 rebuild: bool = False, verbose: bool = False) -> None:
        super().__init__(model, settings=settings)
        if self.file.is_split and self.meta.dynamic:
            raise InputError("build TensorRT engines of the split layout from a static export (one engine per "
                             "resolution): re-export without --dynamic")
        import_tensorrt()  # the one clear error on machines without TensorRT
        self.memory = device_memory(memory, device_id)
        load = EngineLoader(self.file, build, cache_dir, rebuild, device_id, verbose)
        self.runners = {part: TrtRunner(deserialize(load(part), str(path)), self.memory, name=str(path),
                                        cuda_graph=cuda_graph) for part, path in self.file.parts.items()}
        first = self.runners.get("model") or self.runners["encoder"]
        inputs = [TensorSpec(n, first.profile[n][1], str(first.dtypes[n])) for n in first.inputs]
        parts = TrtStepParts(self.runners, self.memory, list(self.meta.context_names), self.meta.hidden_dim) \
            if self.file.is_split else None
        self.attach_runner(inputs, parts)

    @classmethod
    def wrong_kind(cls, file: ModelFile) -> str:
        return ("the tensorrt backend runs ONNX exports or engines; export the checkpoint first "
                "(deqflow export --layout split|unrolled) or use --backend torch")

    def describe(self) -> dict:
        trt = import_tensorrt()
        out = super().describe()
        out.update(tensorrt=trt.__version__, memory=self.memory.kind, layout=self.file.layout,
                   precision=self.meta.precision, model_file=self.file.describe(),
                   resolved_settings=self.solve_dict())
        return out

    def _infer(self, image1, image2, flow_init, state: WarmState | None) -> InferenceResult:
        if self.file.is_split:
            return self._solve_split(image1, image2, flow_init, state)
        runner = self.runners["model"]
        feeds = self._graph_feeds(runner.inputs, image1, image2, flow_init)
        out = {k: self.memory.download(v) for k, v in runner.run(feeds).items()}
        return self._graph_result(out, image1.shape[0])

    def close(self) -> None:
        self.runners.clear()
        super().close()
