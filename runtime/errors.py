"""Errors of the runtime. All derive from deqflow.errors, so the CLI prints them in one line."""

from __future__ import annotations

from deqflow.errors import DeqflowError, FileFormatError, InputError, MissingDependencyError
from deqflow.extras import GPU, PYCUDA, TRAIN

__all__ = ["DeqflowError", "EngineMismatchError", "FileFormatError", "InputError", "MissingDependencyError",
           "ProfileError", "missing_dependency"]

INSTALL_HINTS = {
    "tensorrt": f"{GPU} (TensorRT and cuda-python; or pip install tensorrt for TensorRT 10 or 11 for your CUDA)",
    "cuda": f"{GPU} (cuda-python, NVIDIA's CUDA bindings) or torch with CUDA; pycuda ({PYCUDA}) also works",
    "onnxruntime": "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT providers; uninstall "
                   "onnxruntime first, both provide the `onnxruntime` module)",
    "onnxruntime-gpu": "pip uninstall onnxruntime && pip install onnxruntime-gpu (CUDA 12 + cuDNN 9); the "
                       "TensorRT provider also needs TensorRT's libraries on the library path",
    "torch": f"{TRAIN} (the `torch` backend is the PyTorch reference; deployments can use "
             "`--backend onnxruntime` or `tensorrt` without it)",
    "gpu": "a CUDA GPU with a working NVIDIA driver (nvidia-smi must list it)",
}


class ProfileError(InputError):
    """An input shape lies outside what a model or TensorRT engine was built for (checked before running)."""


class EngineMismatchError(DeqflowError):
    """A TensorRT engine was built by another TensorRT version or for another GPU (or from another ONNX)."""


def missing_dependency(what: str, needed_for: str, detail: str = "") -> MissingDependencyError:
    """One clear message: what is missing, what needs it, how to install it."""
    hint = INSTALL_HINTS.get(what, f"pip install {what}")
    extra = f" ({detail})" if detail else ""
    return MissingDependencyError(f"{needed_for} needs {what}, which is not available here{extra}. Install: {hint}")
