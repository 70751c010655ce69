"""deqflow's TensorRT calls, checked against the real Python API of TensorRT 10.13 and 11.4 without a GPU.

The build and run paths are executed against a stand-in module that has exactly one version's names
(tests/trt_api_fake.py), so each version-specific branch (the FP16 flag on 10, strong typing on 11) meets the
API of its own version; a static scan adds every `trt.<name>` written anywhere in the runtime.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trt_api_fake import FakeTensorRT, TrtApiError, read_table

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("10.13", "11.4")
INPUTS = {"image1": (1, 3, -1, -1), "image2": (1, 3, -1, -1)}
OUTPUTS = {"flow": (1, 2, -1, -1)}
SHAPE = (1, 3, 128, 160)


class HostMemory:
    """Device-memory provider stand-in (numpy arrays as device buffers)."""

    kind, handle = "host", 0

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def upload(self, array, out=None):
        out = np.empty_like(array) if out is None else out
        out[...] = array
        return out

    def download(self, x):
        return np.asarray(x)

    @staticmethod
    def ptr(x):
        return x.ctypes.data

    def capture(self, enqueue):
        return None


def _tensor(trt, name, shape):
    t = trt.fake_class("ITensor")()
    object.__setattr__(t, "name", name)
    object.__setattr__(t, "shape", shape)
    return t


def _behaviours(trt_holder: dict) -> dict:
    """Scripted answers of an engine with two dynamic image inputs and a flow output."""
    names = [*INPUTS, *OUTPUTS]
    shapes = {**INPUTS, **OUTPUTS}

    def t():
        return trt_holder["trt"]

    return {
        "INetworkDefinition.num_inputs": len(INPUTS),
        "INetworkDefinition.get_input": lambda self, i: _tensor(t(), names[i], INPUTS[names[i]]),
        "Builder.build_serialized_network": lambda self, network, config: b"plan",
        "ITimingCache.serialize": lambda self: b"cache",
        "Runtime.deserialize_cuda_engine": lambda self, plan: t().fake_class("ICudaEngine")(),
        "ICudaEngine.create_execution_context": lambda self, *a: t().fake_class("IExecutionContext")(),
        "ICudaEngine.num_io_tensors": len(names),
        "ICudaEngine.get_tensor_name": lambda self, i: names[i],
        "ICudaEngine.get_tensor_mode": lambda self, n: t().TensorIOMode.INPUT if n in INPUTS
        else t().TensorIOMode.OUTPUT,
        "ICudaEngine.get_tensor_dtype": lambda self, n: t().DataType.FLOAT,
        "ICudaEngine.get_tensor_shape": lambda self, n: shapes[n],
        "ICudaEngine.get_tensor_profile_shape": lambda self, n, p: [(1, 3, 128, 128), SHAPE, (1, 3, 512, 512)],
        "IExecutionContext.get_tensor_shape": lambda self, n: (1, 2, 128, 160),
        "nptype": lambda dtype: np.float32,
    }


def _pretend_a_gpu(monkeypatch) -> None:
    """The stand-in runs on a CPU: the CUDA device check (its own test below) is taken as passed."""
    import runtime.tensorrt.build
    import runtime.tensorrt.runner

    for module in (runtime.tensorrt.build, runtime.tensorrt.runner):
        monkeypatch.setattr(module, "require_cuda_device", lambda device_id=0: None)


@pytest.fixture(params=VERSIONS)
def fake_trt(request, monkeypatch):
    _pretend_a_gpu(monkeypatch)
    holder: dict = {}
    trt = FakeTensorRT(request.param, _behaviours(holder))
    holder["trt"] = trt
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _build(tmp_path: Path, precision: str) -> bytes:
    from runtime.tensorrt.build import BuildSettings, build_serialized

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    profiles = {k: {n: [1, 3, s, s] for n in INPUTS} for k, s in (("min", 128), ("opt", 160), ("max", 512))}
    settings = BuildSettings(profiles=profiles, precision=precision, workspace_mb=256, optimization_level=3,
                             timing_cache=str(tmp_path / "timing.cache"))
    return build_serialized(onnx, settings)


@pytest.mark.parametrize("precision", ["fp32", "graph", "fp16"])
def test_build_path_uses_only_names_of_each_version(fake_trt, tmp_path, precision):
    if precision == "fp16" and fake_trt.__version__.startswith("11."):
        from deqflow.errors import InputError

        with pytest.raises(InputError, match="strongly typed"):
            _build(tmp_path, precision)
        return
    assert _build(tmp_path, precision) == b"plan"
    assert "Builder.build_serialized_network" in fake_trt.used
    assert ("BuilderFlag.FP16" in fake_trt.used) == (precision == "fp16")


def test_run_path_uses_only_names_of_each_version(fake_trt):
    from runtime.tensorrt.runner import TrtRunner, deserialize

    runner = TrtRunner(deserialize(b"plan"), HostMemory(), name="fake")
    feeds = {n: np.zeros(SHAPE, np.float32) for n in INPUTS}
    out = runner.run(feeds)
    assert set(out) == set(OUTPUTS) and out["flow"].shape == (1, 2, 128, 160)
    assert {"IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address"} <= fake_trt.used


def _trt_attribute_chains(path: Path) -> set[str]:
    """Every `trt.A` / `trt.A.B` written in a source file (`trt` is how deqflow names the module)."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
            chains.add(node.attr)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
              and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt"):
            chains.add(f"{node.value.attr}.{node.attr}")
    return {c for c in chains if not c.startswith("__")}


def _runtime_sources() -> list[Path]:
    """Runtime modules that import TensorRT (other modules may use `trt` for other things, e.g. EP options)."""
    return sorted(p for p in (ROOT / "runtime").rglob("*.py")
                  if "import tensorrt" in p.read_text() or "import_tensorrt()" in p.read_text())


def test_every_trt_name_in_the_runtime_exists_in_a_supported_version():
    tables = {v: read_table(v) for v in VERSIONS}
    missing = {}
    for path in _runtime_sources():
        for chain in _trt_attribute_chains(path):
            if not any(chain in t for t in tables.values()):
                missing.setdefault(str(path.relative_to(ROOT)), []).append(chain)
    assert not missing, f"TensorRT names that no supported version has: {missing}"
    assert _runtime_sources(), "the scan found no TensorRT code: the check measured nothing"


def test_a_planted_wrong_name_fails_the_checks(tmp_path, monkeypatch):
    """The checks are not vacuous: names removed in TensorRT 11 fail against 11.4 and pass against 10.13."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f(trt):\n"
                       "    return trt.BuilderFlag.FP16, trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH\n")
    chains = _trt_attribute_chains(planted)
    assert chains >= {"BuilderFlag.FP16", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"}
    assert not chains <= set(read_table("11.4")) and chains <= set(read_table("10.13"))
    assert "BuilderFlag.FP17" not in read_table("10.13")

    trt11, trt10 = FakeTensorRT("11.4"), FakeTensorRT("10.13")
    with pytest.raises(TrtApiError, match="11.4.* has no NetworkDefinitionCreationFlag.EXPLICIT_BATCH"):
        _ = trt11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    with pytest.raises(TrtApiError, match="has no IExecutionContext.execute_async_v2"):
        _ = trt11.fake_class("IExecutionContext")().execute_async_v2
    config = trt11.fake_class("IBuilderConfig")()
    with pytest.raises(TrtApiError, match="set_timing_cache.* does not accept"):
        config.set_timing_cache(object())  # ignore_mismatch has no default
    with pytest.raises(TrtApiError, match="Builder.__init__"):
        trt11.Builder()
    assert int(trt10.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) >= 0

    # a wrong method name inside deqflow's own run path fails too
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    _pretend_a_gpu(monkeypatch)
    import inspect

    from runtime.tensorrt.runner import TrtRunner

    src = Path(inspect.getsourcefile(TrtRunner)).read_text()
    assert "execute_async_v3" in src
    module = type(sys)("planted_engine")
    monkeypatch.setitem(sys.modules, "planted_engine", module)
    exec(compile(src.replace("execute_async_v3", "execute_async_v2"), "planted_engine.py", "exec"), module.__dict__)
    module.require_cuda_device = lambda device_id=0: None
    trt11.behaviours.update(_behaviours({"trt": trt11}))
    runner = module.TrtRunner(module.deserialize(b"plan"), HostMemory())
    with pytest.raises(TrtApiError, match="execute_async_v2"):
        runner.run({n: np.zeros(SHAPE, np.float32) for n in INPUTS})


@pytest.mark.parametrize("version", VERSIONS)
def test_api_tables_are_the_real_bindings(version):
    """Spot checks that the committed tables are the introspected bindings of that version."""
    table = read_table(version)
    assert table["__version__"][1].startswith(version)
    assert table["IExecutionContext.execute_async_v3"][0] == "method"
    assert ("BuilderFlag.FP16" in table) == (version == "10.13")
    assert "IExecutionContext.execute_async_v2" not in table and "ICudaEngine.get_binding_index" not in table


def test_no_tensorrt_object_is_created_without_a_usable_cuda_device(monkeypatch):
    """On a machine without a GPU the runtime stops with one message before TensorRT could crash it."""
    from deqflow.errors import MissingDependencyError
    from runtime.tensorrt.runner import deserialize

    trt = FakeTensorRT("11.4", {"Runtime.__init__": None})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(MissingDependencyError, match="no usable CUDA device 0") as err:
        deserialize(b"plan")
    assert "\n" not in str(err.value)
    assert not any(name.startswith("Runtime") for name in trt.used), "a TensorRT runtime was created"
