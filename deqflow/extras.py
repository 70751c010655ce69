"""The install extras of the deqflow distribution (see pyproject.toml) and which one brings each optional
library, so a command that needs a missing library says in one line what to install.

`pip install deqflow` is the runtime only (numpy, OpenCV, onnx, ONNX Runtime); PyTorch and everything behind
training, evaluation and export come with `train`, TensorRT with `gpu`, Triton serving with `serve`.
"""

from __future__ import annotations

TRAIN = "pip install 'deqflow[train]'"
GPU = "pip install 'deqflow[gpu]'"
PYCUDA = "pip install 'deqflow[pycuda]'"
SERVE = "pip install 'deqflow[serve]'"

LIBRARIES: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", TRAIN),
    "tqdm": ("tqdm", TRAIN),
    "skimage": ("scikit-image", TRAIN),
    "matplotlib": ("matplotlib", TRAIN),
    "onnxslim": ("onnxslim", TRAIN),
    "tensorrt": ("TensorRT", GPU),
    "cuda": ("cuda-python", GPU),
    "pycuda": ("pycuda", PYCUDA),
    "pytriton": ("PyTriton (Triton Inference Server)", SERVE),
    "tritonclient": ("tritonclient", SERVE),
    "onnxruntime": ("ONNX Runtime", "pip install onnxruntime, or onnxruntime-gpu instead of it"),
    "onnx": ("onnx", "pip install onnx"),
    "cv2": ("OpenCV", "pip install opencv-python-headless"),
}
"""Importable module name -> (what it is, how to install it)."""


def install_hint(module: str) -> str:
    """'PyTorch (pip install 'deqflow[train]')' for a module name; the name itself for an unknown one."""
    name, how = LIBRARIES.get(module.split(".")[0], (module, f"pip install {module}"))
    return f"{name} ({how})"
