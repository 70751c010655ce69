"""Versions of everything that can change a result, for reports and golden files (imports nothing heavy)."""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from deqflow import __version__

# distribution names that provide each module (first installed one wins)
_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt_libs"),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "cuda-python": ("cuda-python", "cuda-bindings"),
    "pycuda": ("pycuda",),
}


def package_version(module: str) -> str | None:
    """Installed version of the package providing `module` (without importing it), or None."""
    if module in sys.modules and getattr(sys.modules[module], "__version__", None):
        return str(sys.modules[module].__version__)
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return version if dist == module else f"{version} ({dist})"
    return None


@functools.lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """Names of the visible NVIDIA GPUs (from nvidia-smi; empty when there is none)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_info() -> dict:
    """Toolkit, library, GPU and CPU identification, JSON-ready."""
    gpus = gpu_names()
    return {
        "toolkit": __version__,
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime"),
        "tensorrt": package_version("tensorrt"),
        "torch": package_version("torch"),
        "opencv": package_version("opencv"),
        "gpu": gpus[0] if gpus else None,
        "cpu": cpu_name(),
        "cpu_count": _cpu_count(),
        "platform": platform.platform(),
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
