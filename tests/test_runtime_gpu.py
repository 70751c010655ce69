"""GPU backends: TensorRT engines and ONNX Runtime's CUDA / TensorRT providers against the float32 reference.
They need a CUDA GPU (and tensorrt / onnxruntime-gpu) and skip with the reason otherwise."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deqflow.extras import optional

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "fixtures" / "official" / "official-T-seed2.pth"
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "motorcycle-128x160-official-T-seed2-it8.npz"


def _has_cuda_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _ort_providers() -> list[str]:
    onnxruntime = optional("onnxruntime")
    return onnxruntime.get_available_providers() if onnxruntime is not None else []


HAS_GPU = _has_cuda_gpu()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason="needs tensorrt and a CUDA GPU")
needs_ort_cuda = pytest.mark.skipif(not (HAS_GPU and "CUDAExecutionProvider" in _ort_providers()),
                                    reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU")
needs_ort_trt = pytest.mark.skipif(not (HAS_GPU and "TensorrtExecutionProvider" in _ort_providers()),
                                   reason="needs onnxruntime-gpu with the TensorRT provider and a CUDA GPU")

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from export import export_onnx

    base = tmp_path_factory.mktemp("onnx")
    out = {}
    for layout in ("split", "unrolled"):
        export_onnx(CKPT, base / f"m_{layout}.onnx", layout=layout, height=128, width=160, iters=8)
        out[layout] = base / f"m_{layout}.onnx"
    out["mixed16"] = base / "m_mixed16.onnx"
    export_onnx(CKPT, out["mixed16"], layout="unrolled", height=128, width=160, iters=8, precision="mixed16")
    return out


def _golden_check(backend, limit):
    from runtime import prepare
    from runtime.compare import load_golden

    g = load_golden(GOLDEN)
    (a, b), ref = g.pairs[0], g.outputs[0]
    batch = prepare(a, b)
    r = backend.infer(batch.image1, batch.image2)
    err = float(np.abs(r.flow - ref["flow"]).max())
    assert err <= limit, f"{backend.label}: max |flow - golden| {err:.3g} px > {limit}"
    return r


@needs_trt
@pytest.mark.parametrize("layout", ["unrolled", "split"])
def test_tensorrt_fp32_matches_the_golden_outputs(exports, layout, tmp_path):
    from runtime import SolveOverrides, create_backend

    settings = SolveOverrides(max_iter=8, tol=0.0) if layout == "split" else None
    with create_backend("tensorrt", exports[layout], settings=settings, cache_dir=tmp_path) as be:
        r = _golden_check(be, 1e-3)  # tier 2: TensorRT float32, TF32 off
        assert r.iterations == 8


@needs_trt
def test_tensorrt_engine_cache_cuda_graph_and_profile_error(exports, tmp_path):
    from deqflow.errors import ProfileError
    from runtime import create_backend

    with create_backend("tensorrt", exports["unrolled"], cache_dir=tmp_path, cuda_graph=True) as be:
        _golden_check(be, 1e-3)
        _golden_check(be, 1e-3)  # replayed graph (or the fallback) gives the same flow
        big = np.zeros((1, 3, 136, 168), np.float32)
        with pytest.raises(ProfileError):
            be.infer(big, big)
    assert len(list(tmp_path.glob("*.engine"))) == 1 and len(list(tmp_path.glob("*.engine.json"))) == 1


@needs_trt
@pytest.mark.parametrize("layout", ["unrolled", "split"])
def test_deqflow_build_writes_an_engine_that_loads(exports, layout, tmp_path):
    from deqflow.cli import main
    from runtime import SolveOverrides, create_backend

    engine = tmp_path / "m.engine"
    assert main(["build", "--onnx", str(exports[layout]), "--output", str(engine), "--timing-cache",
                 str(tmp_path / "timing.cache")]) == 0
    parts = ["m"] if layout == "unrolled" else ["m.encoder", "m.step", "m.decode"]
    assert all((tmp_path / f"{p}.engine").is_file() and (tmp_path / f"{p}.engine.json").is_file() for p in parts)
    assert (tmp_path / "timing.cache").is_file()
    settings = SolveOverrides(max_iter=8, tol=0.0) if layout == "split" else None
    with create_backend("tensorrt", engine, settings=settings) as be:
        _golden_check(be, 1e-3)


@needs_trt
@pytest.mark.parametrize("memory", ["cuda-python", "torch", "pycuda"])
def test_tensorrt_memory_providers_give_the_golden_flow(exports, memory, tmp_path):
    from deqflow.errors import MissingDependencyError
    from runtime import SolveOverrides, create_backend

    module = {"cuda-python": "cuda", "torch": "torch", "pycuda": "pycuda"}[memory]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{memory} is not installed")
    try:
        be = create_backend("tensorrt", exports["split"], settings=SolveOverrides(max_iter=8, tol=0.0),
                            cache_dir=tmp_path, memory=memory, cuda_graph=True)
    except MissingDependencyError as exc:  # e.g. a CPU-only torch
        pytest.skip(str(exc))
    with be:
        assert be.memory.kind == memory
        _golden_check(be, 1e-3)
        _golden_check(be, 1e-3)  # second run: replayed CUDA graphs (or the eager fallback)


@needs_trt
def test_tensorrt_mixed16_is_within_the_float16_tier(exports, tmp_path):
    from runtime import create_backend
    from runtime.compare import compare, load_golden

    g = load_golden(GOLDEN)
    with create_backend("tensorrt", exports["mixed16"], cache_dir=tmp_path) as be:
        report = compare(None, [be], golden=g, tier="float16")
    assert report.passed, report.to_markdown()


@needs_ort_cuda
def test_onnxruntime_cuda_matches_the_golden_outputs(exports, monkeypatch):
    from runtime import SolveOverrides, create_backend

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # cuDNN 9 ignores use_tf32=0 for convolutions
    for layout in ("unrolled", "split"):
        s = SolveOverrides(max_iter=8, tol=0.0) if layout == "split" else None
        with create_backend("onnxruntime", exports[layout], provider="cuda", settings=s) as be:
            _golden_check(be, 1e-3)


@needs_ort_trt
def test_onnxruntime_tensorrt_provider_matches_the_golden_outputs(exports, tmp_path):
    from runtime import create_backend

    with create_backend("onnxruntime", exports["unrolled"], provider="tensorrt", cache_dir=tmp_path) as be:
        _golden_check(be, 1e-3)


@pytest.mark.skipif(not HAS_GPU or importlib.util.find_spec("torch") is None, reason="needs a CUDA GPU and torch")
def test_torch_cuda_matches_the_golden_outputs():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and a CUDA GPU")
    from runtime import SolveOverrides, create_backend

    with create_backend("torch", CKPT, device="cuda", settings=SolveOverrides(max_iter=8, tol=0.0)) as be:
        _golden_check(be, 1e-3)
