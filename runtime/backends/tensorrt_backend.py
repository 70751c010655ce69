"""TensorRT backend: engines built from deqflow's ONNX exports (cached) or loaded from `deqflow build` files.

Full layouts (unrolled / loop) run as one engine; the split layout runs three engines under the shared host
solver (tolerance stop, warm start, Anderson), the context staying on the GPU between steps. Device memory
comes from torch CUDA tensors (zero-copy), cuda-python or pycuda (runtime.tensorrt_engine.device_memory).

Not exercised on a GPU in this repository's CI: see docs/runtime.md ("GPU") for what has been measured.
"""

from __future__ import annotations

import os

import numpy as np

from runtime.backends.base import ExportedModelBackend, InferenceResult, TensorSpec
from runtime.errors import EngineMismatchError, InputError
from runtime.modelfile import ModelFile, open_model_file
from runtime.solver import SolverSettings, WarmState
from runtime.tensorrt_engine import (
    BuildSettings,
    EngineCache,
    TrtRunner,
    build_engine,
    check_engine_compat,
    deserialize,
    device_memory,
    gpu_identity,
    import_tensorrt,
    profiles_from_metadata,
    read_sidecar,
)


class TrtStepParts:
    """StepParts (runtime.solver) over the encoder / step / decode engines."""

    def __init__(self, runners: dict[str, TrtRunner], memory, context: list[str], hidden_dim: int) -> None:
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


class TensorRTBackend(ExportedModelBackend):
    """`tensorrt` backend. model: an ONNX export (engines built or taken from the cache) or an engine from
    `deqflow build`. Options: device_id, memory ('auto' | 'torch' | 'cuda-python' | 'pycuda'), cuda_graph,
    build (BuildSettings: precision, tf32, workspace, timing cache, profiles), cache_dir, rebuild (rebuild an
    engine made by another TensorRT version / for another GPU from its ONNX file instead of refusing it)."""

    name = "tensorrt"

    def __init__(self, model: str | os.PathLike | ModelFile, *, settings: SolverSettings | None = None,
                 device_id: int = 0, memory: str = "auto", cuda_graph: bool = False,
                 build: BuildSettings | None = None, cache_dir: str | os.PathLike | None = None,
                 rebuild: bool = False, verbose: bool = False) -> None:
        super().__init__(model, settings=settings)
        self.file = model if isinstance(model, ModelFile) else open_model_file(model)
        if self.file.kind == "checkpoint":
            raise InputError("the tensorrt backend runs ONNX exports or engines; export the checkpoint first "
                             "(deqflow export --layout split|unrolled) or use --backend torch")
        meta = self.file.main
        self.meta, self.levels = meta, meta.corr_levels
        if self.file.is_split and meta.dynamic:
            raise InputError("build TensorRT engines of the split layout from a static export (one engine per "
                             "resolution, deployment.md section 1): re-export without --dynamic")
        trt = import_tensorrt()
        self.memory = device_memory(memory, device_id)
        gpu, cc = gpu_identity(device_id)
        self.runners: dict[str, TrtRunner] = {}
        for part, path in self.file.parts.items():
            if self.file.kind == "onnx":
                settings_b = BuildSettings(**{**(build.__dict__ if build else {})})
                if not settings_b.profiles and meta.dynamic:
                    names = ["image1", "image2"] + (["flow_init"] if meta.flow_init else [])
                    settings_b.profiles = profiles_from_metadata(meta, names)
                settings_b.validate(trt.__version__, self.file.metadata[part].precision)
                plan, _ = build_engine(path, settings_b, cache=EngineCache(cache_dir), device_id=device_id,
                                       verbose=verbose)
            else:
                info = read_sidecar(path)
                try:
                    check_engine_compat(info, trt.__version__, gpu, cc, str(path))
                except EngineMismatchError:
                    onnx = info.get("onnx")
                    if not (rebuild and onnx and os.path.isfile(onnx)):
                        raise
                    stored = BuildSettings(**info.get("build", {}))
                    plan, _ = build_engine(onnx, stored, cache=EngineCache(cache_dir), device_id=device_id)
                else:
                    plan = path.read_bytes()
            self.runners[part] = TrtRunner(deserialize(plan, str(path)), self.memory, name=f"{path}",
                                           cuda_graph=cuda_graph)
        first = self.runners.get("model") or self.runners["encoder"]
        self._inputs = [TensorSpec(n, first.profile[n][1], str(first.dtypes[n])) for n in first.inputs]
        if self.file.is_split:
            self.supports_warm_start = True
            self.parts = TrtStepParts(self.runners, self.memory, list(meta.context_names), meta.hidden_dim)
        self.configure(self.settings)

    @property
    def label(self) -> str:
        return f"tensorrt ({self.file.layout})"

    def describe(self) -> dict:
        trt = import_tensorrt()
        out = super().describe()
        out.update(tensorrt=trt.__version__, memory=self.memory.kind, layout=self.file.layout,
                   precision=self.meta.precision, model_file=self.file.describe(),
                   resolved_settings=self.resolved.as_dict())
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
