"""TensorRT engines from deqflow's ONNX exports, in four parts:

- build: build settings (profiles, precision, TF32, timing cache, TensorRT 10 vs 11 typing) and the builder;
- cache: the engine cache, engine files with their JSON sidecars, compatibility checks;
- memory: device memory and streams behind one small Protocol (cuda-python, torch CUDA tensors, pycuda);
- runner: a deserialized engine and its execution context (name-based I/O, optional CUDA graphs).

Nothing here imports tensorrt, torch or cuda-python at module level: the pure parts (cache key, profile
checks, sidecar compatibility, build-setting validation) are tested without a GPU.
"""

from __future__ import annotations

from deqflow.extras import require


def import_tensorrt():
    """The tensorrt module, or one MissingDependencyError saying what to install."""
    return require("tensorrt", "the tensorrt backend / deqflow build")


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (0 when unreadable)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0
