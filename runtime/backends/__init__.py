"""Backend registry: `torch` (PyTorch reference), `onnxruntime` (CPU / CUDA / TensorRT providers) and
`tensorrt` (engines built from the ONNX exports). Modules are imported when a backend is created, and the
backend modules themselves import torch / onnxruntime / tensorrt only inside their functions."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deqflow.errors import InputError
from deqflow.model_metadata import ENGINE_SUFFIXES
from deqflow.solver_spec import SolveOverrides
from runtime.backends.base import Backend, InferenceResult, TensorSpec

BACKENDS: dict[str, str] = {
    "torch": "runtime.backends.torch_backend:TorchBackend",
    "onnxruntime": "runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "runtime.backends.tensorrt_backend:TensorRTBackend",
}
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def backend_class(name: str) -> type[Backend]:
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def create_backend(name: str, model: Any, *, allow_nonfinite: bool = False, **options: Any) -> Backend:
    """Instantiate backend `name` on `model` (checkpoint, ONNX file or engine); options go to its constructor.
    allow_nonfinite: return NaN/Inf outputs instead of refusing them (for debugging a model)."""
    backend = backend_class(name)(model, **options)
    backend.allow_nonfinite = bool(allow_nonfinite)
    return backend


def parse_spec(spec: str) -> tuple[str, dict[str, Any], str]:
    """'BACKEND[:PROVIDER]=PATH' -> (backend, options, path); e.g. 'onnxruntime:cuda=model.onnx',
    'torch=ckpt.pth', 'tensorrt=model.onnx'."""
    if "=" not in spec:
        raise InputError(f"backend spec {spec!r} must look like BACKEND[:PROVIDER]=PATH, e.g. "
                         "onnxruntime=model.onnx, onnxruntime:cuda=model.onnx, torch=ckpt.pth, tensorrt=model.onnx")
    head, path = spec.split("=", 1)
    name, _, provider = head.partition(":")
    name = ALIASES.get(name.strip(), name.strip())
    if name not in BACKENDS:
        raise InputError(f"backend spec {spec!r}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    options: dict[str, Any] = {}
    if provider:
        if name == "onnxruntime":
            options["provider"] = provider
        elif name == "torch":
            options["device"] = provider
        else:
            raise InputError(f"backend spec {spec!r}: only onnxruntime (provider) and torch (device) take a ':' option")
    return name, options, path


def default_backend(checkpoint: str | None, model: str | None) -> str:
    """The backend that runs a model when none is named: torch for a checkpoint, tensorrt for an engine file
    (ENGINE_SUFFIXES), onnxruntime for an ONNX export."""
    if checkpoint:
        return "torch"
    return "tensorrt" if Path(str(model)).suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"


@dataclass
class BackendChoice:
    """Which backend runs which model, with which constructor options and solver settings: what infer, serve
    (one backend per Triton instance), compare and bench decide from their flags before opening it."""

    name: str  # 'onnxruntime' | 'tensorrt' | 'torch'
    model: str  # ONNX export / engine / checkpoint
    options: dict[str, Any] = field(default_factory=dict)
    settings: SolveOverrides = field(default_factory=SolveOverrides)

    def open(self) -> Backend:
        return create_backend(self.name, self.model, settings=self.settings, **self.options)

    @property
    def label(self) -> str:
        """The label the backend will report (Backend.label_for), known without opening it: bench names its
        cases before creating them, compare names a candidate that could not be loaded."""
        from runtime.modelfile import open_model_file

        cls = backend_class(self.name)
        layout = None
        if self.name != "torch":
            try:
                layout = open_model_file(self.model).layout
            except Exception:  # a missing or unreadable file is reported when the backend is opened
                layout = None
        return cls.label_for(self.options, layout)


__all__ = ["ALIASES", "BACKENDS", "Backend", "BackendChoice", "InferenceResult", "TensorSpec", "backend_class",
           "create_backend", "default_backend", "parse_spec"]
