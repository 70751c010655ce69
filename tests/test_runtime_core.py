"""runtime without a model file: imports without torch, the host solver against the PyTorch solvers, shared
preprocessing, backend registry and provider options, the TensorRT pieces that need no GPU (cache key,
profile checks, compatibility, error messages without tensorrt), compare statistics and the bench gate."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, blocking_prelude, subprocess_env

from deqflow.errors import EngineMismatchError, InputError, MissingDependencyError, ProfileError
from deqflow.extras import optional


def test_runtime_imports_without_torch_tensorrt_or_onnxruntime():
    code = blocking_prelude("torch", "tensorrt", "pycuda", "onnxruntime") + (
        "import importlib, pkgutil\n"
        "import runtime\n"
        "for m in pkgutil.walk_packages(runtime.__path__, 'runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "import deqflow.cli\n"
        "deqflow.cli.build_parser()\n"
        "print('loaded', [k for k in ('torch', 'tensorrt', 'pycuda', 'onnxruntime') if sys.modules.get(k)])\n"
        "from runtime import create_backend\n"
        "for name, path in (('torch', 'x.pth'), ('tensorrt', 'x.onnx')):\n"
        "    try:\n"
        "        create_backend(name, 'tests/fixtures/official/official-T-seed2.pth' if name == 'torch' else path)\n"
        "    except Exception as exc:\n"
        "        print(name, type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "loaded []" in proc.stdout
    # the torch backend says what is missing in one message
    assert "torch MissingDependencyError the torch backend needs torch" in proc.stdout
    assert "pip install 'deqflow[train]'" in proc.stdout


# --- host solver ---------------------------------------------------------------------------------------


class LinearParts:
    """StepParts of a toy problem: z = (net, coords1), f(z) = A z + b per sample (a contraction)."""

    def __init__(self, n=2, hidden=3, h=2, w=2, rho=0.95, seed=0):
        rng = np.random.default_rng(seed)
        self.hidden_dim, self.shape = hidden, (n, hidden + 2, h, w)
        d = (hidden + 2) * h * w
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        self.A = (q * np.linspace(0.1, rho, d)) @ q.T  # symmetric, spectral radius rho
        self.b = rng.standard_normal((n, d)).astype(np.float64)
        self.n, self.h, self.w, self.d = n, h, w, d
        self.calls = 0

    def f(self, z):  # (n, d)
        return z @ self.A.T + self.b

    def encode(self, image1, image2):
        ys, xs = np.meshgrid(np.arange(self.h), np.arange(self.w), indexing="ij")
        coords0 = np.broadcast_to(np.stack([xs, ys])[None], (self.n, 2, self.h, self.w)).astype(np.float32)
        return {"coords0": coords0}, coords0.copy()

    def step(self, ctx, net, coords1):
        self.calls += 1
        z = np.concatenate([net.reshape(self.n, -1), coords1.reshape(self.n, -1)], 1).astype(np.float64)
        fz = self.f(z)
        res = np.linalg.norm(fz - z, axis=1)
        rel = res / (np.linalg.norm(fz, axis=1) + 1e-8)
        k = net[0].size
        return (fz[:, :k].reshape(net.shape).astype(np.float32), fz[:, k:].reshape(coords1.shape).astype(np.float32),
                res, rel)

    def decode(self, ctx, net, coords1):
        return coords1 - ctx["coords0"], coords1 - ctx["coords0"]

    def to_host(self, x):
        return np.asarray(x)

    def from_host(self, x):
        return np.asarray(x)

    def torch_f(self):
        import torch

        A, b = torch.from_numpy(self.A).float(), torch.from_numpy(self.b).float()
        return lambda z: (z.reshape(self.n, -1) @ A.T + b).reshape(z.shape)


@pytest.mark.parametrize("method", ["fixed_point", "anderson"])
def test_host_solver_matches_the_pytorch_solvers(method):
    import torch

    from deqflow.host_solver import solve
    from deqflow.solver_spec import SolveSpec
    from training.deq.solvers import anderson, fixed_point_iter

    parts = LinearParts()
    settings = SolveSpec.of(max_iter=400, tol=1e-3, stop_mode="abs", method=method)
    img = np.zeros((2, 3, 8, 8), np.float32)
    result = solve(parts, img, img, settings)
    # the PyTorch solver on the same f from the same start (net 0, coords1 = coords0)
    _, coords0 = parts.encode(None, None)
    z0 = np.concatenate([np.zeros((2, 3 * 4)), coords0.reshape(2, -1)], 1)
    fn = fixed_point_iter if method == "fixed_point" else anderson
    ref = fn(parts.torch_f(), torch.from_numpy(z0).float(), max_iter=400, tol=1e-3, stop_mode="abs", return_final=True)
    assert result.stats.iterations == ref.stats.iterations
    np.testing.assert_allclose(result.stats.abs_trace, ref.stats.abs_trace.numpy(), rtol=2e-3, atol=1e-4)
    # converged to the true fixed point z* = (I - A)^-1 b
    z_star = np.linalg.solve(np.eye(parts.d) - parts.A, parts.b.T).T
    assert np.abs(result.flow.reshape(2, -1) + coords0.reshape(2, -1) - z_star[:, 12:]).max() < 0.05
    if method == "fixed_point":
        assert 100 < result.stats.iterations < 250  # rho 0.95: slow plain iteration
    else:
        assert result.stats.iterations < 40  # Anderson: several times fewer steps


def test_host_solver_warm_start_lowest_residual_and_cap():
    from deqflow.host_solver import WarmState, solve
    from deqflow.solver_spec import SolveOverrides, SolveSpec

    parts = LinearParts(rho=0.8)
    img = np.zeros((2, 3, 8, 8), np.float32)
    cold = solve(parts, img, img, SolveSpec.of(max_iter=200, tol=1e-4, stop_mode="abs"))
    warm = solve(parts, img, img, SolveSpec.of(max_iter=200, tol=1e-4, stop_mode="abs"), state=cold.state)
    assert cold.stats.iterations > 20 and warm.stats.iterations == 1  # starts at the fixed point
    capped = solve(parts, img, img, SolveSpec.of(max_iter=5, tol=0.0))
    assert capped.stats.iterations == 5 and capped.stats.abs_trace.shape == (2, 5)
    best = solve(parts, img, img, SolveSpec.of(max_iter=5, tol=0.0, return_final=False))
    np.testing.assert_allclose(best.flow, capped.flow, atol=1e-5)  # contraction: the last is the lowest
    with pytest.raises(InputError, match="warm-start state"):
        solve(parts, img, img, SolveSpec.of(max_iter=5, tol=0.0),
              state=WarmState(np.zeros((2, 3, 3, 3)), np.zeros((2, 2, 3, 3))))
    with pytest.raises(InputError, match="SolveSpec"):
        solve(parts, img, img, SolveOverrides())
    with pytest.raises(InputError, match="solver"):
        SolveSpec.of(method="newton")


# --- preprocessing -------------------------------------------------------------------------------------


def test_preprocessing_pads_batches_and_unpads():
    from runtime.preprocessing import check_model_inputs, prepare, real_pair, real_pairs, to_batch

    a, b, flow, valid = real_pair((130, 165))
    assert a.shape == (130, 165, 3) and a.dtype == np.uint8 and flow.shape == (130, 165, 2)
    assert valid.mean() > 0.5 and flow[..., 0][valid > 0].min() < -5 and np.all(flow[..., 1] == 0)
    batch = prepare(a, b)
    assert batch.image1.shape == (1, 3, 136, 168) and batch.image1.dtype == np.float32
    assert batch.padder.padding == (1, 2, 3, 3)
    np.testing.assert_array_equal(batch.image1[0, :, 3:133, 1:166].transpose(1, 2, 0), a.astype(np.float32))
    fake = np.zeros((1, 2, 136, 168), np.float32)
    fake[0, 0, 3:133, 1:166] = 7
    out = batch.unpad(fake)
    assert out.shape == (1, 130, 165, 2) and np.all(out[..., 0] == 7)
    pairs = real_pairs((128, 160), 3)
    stacked = prepare([p[0] for p in pairs], [p[1] for p in pairs])
    assert stacked.image1.shape == (3, 3, 128, 160)
    assert not np.array_equal(stacked.image1[0], stacked.image1[1])
    with pytest.raises(InputError, match="same size"):
        to_batch([a, a[:64]])
    with pytest.raises(InputError, match="multiple of 8"):
        check_model_inputs(np.zeros((1, 3, 130, 160), np.float32), np.zeros((1, 3, 130, 160), np.float32))
    with pytest.raises(InputError, match="at least 128"):
        check_model_inputs(np.zeros((1, 3, 64, 160), np.float32), np.zeros((1, 3, 64, 160), np.float32))
    with pytest.raises(InputError, match="0..255"):
        check_model_inputs(-np.ones((1, 3, 128, 160), np.float32), np.zeros((1, 3, 128, 160), np.float32))


def test_frame_sources(tmp_path):
    import cv2

    from deqflow.image_io import write_image
    from runtime.preprocessing import frame_source

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(3)]
    for i, f in enumerate(frames):
        write_image(tmp_path / f"frame_{10 - i * 5}.png", f)  # names 10, 5, 0: natural order is 0, 5, 10
    src = frame_source(tmp_path)
    got = list(src)
    assert [f.name for f in got] == ["frame_0", "frame_5", "frame_10"]
    np.testing.assert_array_equal(got[0].rgb, frames[2])
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 32))
    for f in frames:
        w.write(np.ascontiguousarray(f[:, :, ::-1]))
    w.release()
    vid = list(frame_source(video))
    assert len(vid) == 3 and vid[0].rgb.shape == (32, 40, 3) and vid[1].name == "000001"
    from deqflow.errors import FileFormatError

    with pytest.raises(FileFormatError, match="input not found"):
        frame_source(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="at least 2"):
        frame_source(tmp_path / "empty")


# --- backends and providers ----------------------------------------------------------------------------


def test_backend_registry_and_specs():
    from runtime.backends import BACKENDS, parse_spec

    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}
    assert parse_spec("onnxruntime:cuda=m.onnx") == ("onnxruntime", {"provider": "cuda"}, "m.onnx")
    assert parse_spec("ort=m.onnx") == ("onnxruntime", {}, "m.onnx")
    assert parse_spec("torch:cuda:1=c.pth") == ("torch", {"device": "cuda:1"}, "c.pth")
    with pytest.raises(InputError, match="BACKEND"):
        parse_spec("model.onnx")
    with pytest.raises(InputError, match="unknown backend"):
        parse_spec("openvino=m.onnx")


def test_onnxruntime_provider_options_and_missing_gpu_provider():
    from runtime.backends.onnxruntime_backend import check_available, provider_options, shape_string

    assert provider_options("cpu") == ["CPUExecutionProvider"]
    cuda = provider_options("cuda", device_id=1, cuda_graph=True)
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[0][1]["device_id"] == 1
    assert cuda[0][1]["enable_cuda_graph"] and cuda[0][1]["use_tf32"] == 0 and cuda[-1] == "CPUExecutionProvider"
    prof = {k: {"image1": [1, 3, 128, s], "image2": [1, 3, 128, s]} for k, s in (("min", 128), ("opt", 160),
                                                                                ("max", 256))}
    trt = provider_options("tensorrt", fp16=True, cache_dir="/tmp/deqflow-test-cache", profile=prof,
                           cache_prefix="deqflow_abc")
    name, opts = trt[0]
    assert name == "TensorrtExecutionProvider" and [p if isinstance(p, str) else p[0] for p in trt[1:]] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_engine_cache_prefix"] == "deqflow_abc"
    assert opts["trt_profile_opt_shapes"] == "image1:1x3x128x160,image2:1x3x128x160"
    assert shape_string({"a": [1, 2]}) == "a:1x2"
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        check_available("cuda", ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="provider"):
        provider_options("rocm")


# --- TensorRT pieces that need no GPU ---------------------------------------------------------------------


def test_trt_engine_cache_key():
    from runtime.tensorrt.build import BuildSettings
    from runtime.tensorrt.cache import engine_cache_key

    s = BuildSettings(profiles={}, precision="fp32")
    base = engine_cache_key("a" * 64, "10.9.0", "NVIDIA H100", s, "9.0")
    assert len(base) == 32 and base == engine_cache_key("a" * 64, "10.9.0", "NVIDIA H100", BuildSettings(), "9.0")
    assert BuildSettings(timing_cache="x.cache").key_dict() == s.key_dict()  # the cache file does not matter
    changed = [engine_cache_key("b" * 64, "10.9.0", "NVIDIA H100", s, "9.0"),
               engine_cache_key("a" * 64, "11.1.0", "NVIDIA H100", s, "9.0"),
               engine_cache_key("a" * 64, "10.9.0", "NVIDIA A100", s, "8.0"),
               engine_cache_key("a" * 64, "10.9.0", "NVIDIA H100", BuildSettings(tf32=True), "9.0"),
               engine_cache_key("a" * 64, "10.9.0", "NVIDIA H100", BuildSettings(precision="fp16"), "9.0"),
               engine_cache_key("a" * 64, "10.9.0", "NVIDIA H100", BuildSettings(profiles={
                   k: {"image1": [1, 3, 128, 160]} for k in ("min", "opt", "max")}), "9.0")]
    assert len({base, *changed}) == 7


def test_trt_profile_checks_and_build_settings():
    from fakes import image_profiles

    from deqflow.shapes import parse_shape_arg
    from runtime.tensorrt.build import BuildSettings
    from runtime.tensorrt.runner import check_profile

    profile = {"image1": ([1, 3, 128, 128], [1, 3, 440, 1024], [2, 3, 512, 1024])}
    check_profile({"image1": (2, 3, 440, 1024)}, profile)
    with pytest.raises(ProfileError, match=r"outside the engine's optimization profile.*dimension 2"):
        check_profile({"image1": (1, 3, 600, 1024)}, profile, "m.engine")
    with pytest.raises(ProfileError, match="missing"):
        check_profile({}, profile)
    with pytest.raises(ProfileError, match="rank"):
        check_profile({"image1": (3, 440, 1024)}, profile)
    assert parse_shape_arg("440x1024") == [1, 3, 440, 1024] and parse_shape_arg("2x440x1024") == [2, 3, 440, 1024]
    with pytest.raises(InputError, match="multiples of 8"):
        parse_shape_arg("441x1024")
    prof = image_profiles([1, 3, 128, 128], [1, 3, 440, 1024], [1, 3, 512, 1024])
    assert prof["max"]["flow_init"] == [1, 2, 64, 128]
    BuildSettings(profiles=prof).validate("10.9.0")
    with pytest.raises(InputError, match="min <= opt <= max"):
        BuildSettings(profiles=image_profiles([1, 3, 512, 1024], [1, 3, 440, 1024], [1, 3, 512, 1024])).validate()
    with pytest.raises(InputError, match="strongly typed"):
        BuildSettings(precision="fp16").validate("11.1.0")  # never a silent fp32 engine on TensorRT 11
    BuildSettings(precision="fp16").validate("10.9.0")
    s = BuildSettings()
    s.validate("11.1.0", onnx_precision="mixed16")
    assert s.precision == "graph"


def test_trt_engine_compatibility_messages():
    from runtime.tensorrt.cache import check_engine_compat

    info = {"tensorrt": "10.3.0", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "onnx": "m.onnx"}
    check_engine_compat(info, "10.3.0", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.3.0 \(this is 10.9.0\).*deqflow build --onnx m.onnx"):
        check_engine_compat(info, "10.9.0", "NVIDIA A100-SXM4-80GB", "8.0", "m.engine")
    with pytest.raises(EngineMismatchError, match=r"GPU NVIDIA A100-SXM4-80GB \(this is NVIDIA H100"):
        check_engine_compat(info, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "m.engine")


def test_tensorrt_absent_gives_one_clear_error(tmp_path):
    pytest.importorskip("onnx")
    if optional("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    from runtime.tensorrt import import_tensorrt

    with pytest.raises(MissingDependencyError) as exc:
        import_tensorrt()
    msg = str(exc.value)
    assert "needs tensorrt" in msg and "pip install tensorrt" in msg and "\n" not in msg


def test_engine_file_without_sidecar(tmp_path):
    from deqflow.errors import FileFormatError
    from runtime.modelfile import open_model_file

    (tmp_path / "m.engine").write_bytes(b"plan")
    with pytest.raises(FileFormatError, match="m.engine.json"):
        open_model_file(tmp_path / "m.engine")
    with pytest.raises(FileFormatError, match="engine not found"):
        open_model_file(tmp_path / "other.engine")
    with pytest.raises(InputError, match="extension"):
        open_model_file(tmp_path / "m.bin")


# --- compare statistics ---------------------------------------------------------------------------------


def test_compare_statistics_and_tiers():
    from runtime.compare import compare_outputs

    rng = np.random.default_rng(0)
    ref = {"flow": rng.normal(0, 5, (1, 2, 16, 20)).astype(np.float32), "iterations": np.array([8], np.int32)}
    same = compare_outputs(ref, {k: v.copy() for k, v in ref.items()}, "float32")
    assert same["passed"] and same["metrics"]["flow"]["max_abs"] == 0 and same["nonfinite"] == 0
    cand = {"flow": ref["flow"].copy(), "iterations": np.array([8], np.int32)}
    cand["flow"][0, 0, 3, 4] += 0.01  # one pixel off by 0.01 px
    r = compare_outputs(ref, cand, "float32")
    assert not r["passed"] and r["min_tolerance"]["flow.max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert r["metrics"]["flow"]["epe_max"] == pytest.approx(0.01, rel=1e-3)
    assert compare_outputs(ref, cand, "float16")["passed"]  # well inside fp16 tolerances
    big = {"flow": ref["flow"] + 10.0, "iterations": np.array([8], np.int32)}
    r = compare_outputs(ref, big, "float16")
    assert not r["passed"] and r["metrics"]["flow"]["fl_all_pct"] > 50
    nan = {"flow": ref["flow"].copy(), "iterations": np.array([9], np.int32)}
    nan["flow"][0, 1, 0, 0] = np.nan
    r = compare_outputs(ref, nan, "float32")
    assert not r["passed"] and r["nonfinite"] == 1 and r["metrics"]["flow"]["max_abs"] is None
    assert r["min_tolerance"]["iterations.max_abs"] == 1


def test_golden_roundtrip(tmp_path):
    from runtime.compare import load_golden, save_golden

    pairs = [(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8))]
    outs = [{"flow": np.ones((1, 2, 8, 8), np.float32), "iterations": np.array([3], np.int32)}]
    save_golden(tmp_path / "g.npz", pairs, outs, {"label": "torch:cpu", "settings": {"max_iter": 3}})
    g = load_golden(tmp_path / "g.npz")
    assert g.meta["label"] == "torch:cpu" and g.meta["versions"]["toolkit"] and "onnxruntime" in g.meta["versions"]
    np.testing.assert_array_equal(g.outputs[0]["flow"], outs[0]["flow"])
    np.testing.assert_array_equal(g.pairs[0][1], pairs[0][1])


# --- bench ---------------------------------------------------------------------------------------------


def _entry(label, median, size=(128, 160)):
    return {"label": label, "size": list(size), "batch": 1, "latency_ms": {"median": median}}


def test_bench_percentiles_memory_and_gate():
    from runtime.bench import gate, peak_rss_mb, percentiles, reset_peak_rss, rss_mb

    p = percentiles([0.010] * 98 + [0.020, 0.100])
    assert p["median"] == pytest.approx(10.0) and p["p99"] > 19 and p["max"] == pytest.approx(100.0)
    assert rss_mb() > 10 and peak_rss_mb() >= rss_mb() * 0.5
    assert isinstance(reset_peak_rss(), bool)
    base = {"results": [_entry("torch:cpu", 200.0), _entry("ort", 100.0)]}
    # the whole machine is 2x slower now (background load): the ratio gate passes, the absolute one fails
    now = {"results": [_entry("torch:cpu", 400.0), _entry("ort", 210.0)]}
    g = gate(now, base, tolerance=0.15)
    assert g["passed"] and g["compared"] == 1 and g["checks"][0]["measure"] == "median / torch:cpu"
    assert g["checks"][0]["slower_by"] == pytest.approx(0.05)
    assert not gate(now, base, tolerance=0.15, mode="absolute")["passed"]
    # ort itself regressed by 40 % relative to torch in the same run: fails
    worse = {"results": [_entry("torch:cpu", 200.0), _entry("ort", 140.0)]}
    g = gate(worse, base, tolerance=0.15)
    assert not g["passed"] and g["checks"][0]["slower_by"] == pytest.approx(0.4)
    # a single backend falls back to absolute medians
    assert not gate({"results": [_entry("ort", 130.0)]}, base, tolerance=0.15)["passed"]
    assert gate({"results": [_entry("ort", 100.0, (256, 320))]}, base)["compared"] == 0


def test_versions_are_json_ready():
    from runtime.versions import version_info

    v = version_info()
    json.dumps(v)
    assert v["toolkit"] and v["numpy"] and "gpu" in v and "tensorrt" in v


def test_forward_warp_moves_the_state_with_its_flow():
    """A 2x2 block moving 2 cells right: its flow and hidden state land 2 cells right (over the static
    background, which it occludes); the uncovered cells take the nearest landing point's (background) state."""
    from deqflow.host_solver import WarmState
    from runtime.warm_start import forward_warp_state

    flow = np.zeros((2, 2, 6, 8), np.float32)
    flow[0, 0, 2:4, 1:3] = 2.0
    flow[1, 1] = -10.0  # sample 2: everything leaves the image through the top
    hidden = np.zeros((2, 3, 6, 8), np.float32)
    hidden[0, :, 2:4, 1:3] = 7.0
    hidden[1] = np.arange(48, dtype=np.float32).reshape(6, 8)
    out = forward_warp_state(WarmState(hidden, flow))
    expect = np.zeros((6, 8), np.float32)
    expect[2:4, 3:5] = 2.0
    np.testing.assert_array_equal(out.flow_low[0, 0], expect)
    np.testing.assert_array_equal(out.hidden[0, 1], expect * 3.5)
    np.testing.assert_array_equal(out.flow_low[0, 1], 0.0)
    # nothing lands inside: the state is kept as it was rather than invented
    np.testing.assert_array_equal(out.hidden[1], hidden[1])
    np.testing.assert_array_equal(out.flow_low[1], flow[1])


def test_forward_warp_accepts_torch_tensors_and_checks_shapes():
    import torch

    from deqflow.host_solver import WarmState
    from runtime.warm_start import forward_warp_state

    flow = torch.zeros(1, 2, 4, 5)
    flow[0, 1, 0, 0] = 1.0  # cell (0,0) moves down one onto the static cell (1,0): larger motion wins there
    hidden = torch.arange(20, dtype=torch.float32).reshape(1, 1, 4, 5)
    out = forward_warp_state(WarmState(hidden, flow))
    assert isinstance(out.hidden, np.ndarray)
    assert out.hidden[0, 0, 1, 0] == 0.0 and out.flow_low[0, 1, 1, 0] == 1.0
    assert out.hidden[0, 0, 0, 0] in (0.0, 1.0)  # the uncovered cell: a nearest landing point's state
    with pytest.raises(InputError, match="warm-start state"):
        forward_warp_state(WarmState(np.zeros((1, 3, 4, 5)), np.zeros((1, 2, 4, 6))))
