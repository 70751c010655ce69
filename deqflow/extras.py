"""The install extras of the deqflow distribution (see pyproject.toml), which one brings each optional
library, and the one way to import an optional library, so a command that needs a missing one says in one
line what to install.

`pip install deqflow` is the runtime only (numpy, OpenCV, onnx, ONNX Runtime); PyTorch and everything behind
training, evaluation and export come with `train`, TensorRT with `gpu`, Triton serving with `serve`, Polygraphy
and onnx-graphsurgeon (compare --trace's node comparison) with `debug`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from deqflow.errors import MissingDependencyError

TRAIN = "pip install 'deqflow[train]'"
GPU = "pip install 'deqflow[gpu]'"
PYCUDA = "pip install 'deqflow[pycuda]'"
SERVE = "pip install 'deqflow[serve]'"
DEBUG = "pip install 'deqflow[debug]'"

LIBRARIES: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", TRAIN),
    "tqdm": ("tqdm", TRAIN),
    "skimage": ("scikit-image", TRAIN),
    "matplotlib": ("matplotlib", TRAIN),
    "onnxslim": ("onnxslim", TRAIN),
    "tensorboard": ("TensorBoard", "pip install tensorboard"),
    "tensorrt": ("TensorRT", f"{GPU}, or pip install tensorrt for TensorRT 10 or 11 for your CUDA"),
    "cuda": ("cuda-python", f"{GPU} (cuda-python, NVIDIA's CUDA bindings) or torch with CUDA; pycuda ({PYCUDA}) "
                            "also works"),
    "pycuda": ("pycuda", PYCUDA),
    "pytriton": ("PyTriton (Triton Inference Server)", SERVE),
    "tritonclient": ("tritonclient", SERVE),
    "polygraphy": ("Polygraphy", DEBUG),
    "onnx_graphsurgeon": ("onnx-graphsurgeon", DEBUG),
    "onnxruntime": ("ONNX Runtime", "pip install onnxruntime (CPU), or onnxruntime-gpu instead of it (CUDA/TensorRT "
                                    "providers; both provide the `onnxruntime` module)"),
    "onnx": ("onnx", "pip install onnx"),
    "cv2": ("OpenCV", "pip install opencv-python-headless"),
}
"""Importable module name -> (what it is, how to install it)."""

NOT_MODULES: dict[str, str] = {
    "onnxruntime-gpu": "pip uninstall onnxruntime && pip install onnxruntime-gpu (CUDA 12 + cuDNN 9); the TensorRT "
                       "provider also needs TensorRT's libraries on the library path",
    "gpu": "a CUDA GPU with a working NVIDIA driver (nvidia-smi must list it)",
}
"""Needs that no import names (a GPU, a build of a library) -> how to meet them."""


def install_hint(module: str) -> str:
    """'PyTorch (pip install 'deqflow[train]')' for a module name; the name itself for an unknown one."""
    name, how = LIBRARIES.get(module.split(".")[0], (module, f"pip install {module}"))
    return f"{name} ({how})"


def missing(what: str, for_what: str, detail: str = "") -> MissingDependencyError:
    """One clear message: what is missing (a module name or a NOT_MODULES key), what needs it, how to get it."""
    how = NOT_MODULES.get(what) or LIBRARIES.get(what.split(".")[0], ("", f"pip install {what}"))[1]
    extra = f" ({detail})" if detail else ""
    return MissingDependencyError(f"{for_what} needs {what}, which is not available here{extra}. Install: {how}")


def _import(module: str) -> ModuleType:
    """importlib.import_module, which also fails when an already imported submodule's package is blocked
    (sys.modules[package] = None), as `from package import sub` does."""
    importlib.import_module(module.split(".")[0])
    return importlib.import_module(module)


def require(module: str, for_what: str, package: str | None = None) -> ModuleType:
    """`import module`, or MissingDependencyError saying what needs it and what to install (`package`, a
    LIBRARIES or NOT_MODULES key, where the module's top-level name is not what is missing)."""
    try:
        return _import(module)
    except ImportError as exc:
        raise missing(package or module.split(".")[0], for_what, str(exc)) from None


def optional(module: str) -> ModuleType | None:
    """`import module`, or None where it is not installed (for libraries a feature can do without)."""
    try:
        return _import(module)
    except ImportError:
        return None
