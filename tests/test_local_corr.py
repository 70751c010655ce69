"""On-demand ("local") correlation against the all-pairs pyramid: lookup values, gradients, the model's flow, the
ONNX exports on ONNX Runtime (every layout), the host solver with compaction, the TensorRT static check."""

import numpy as np
import pytest
import torch

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.solver_spec import SolveSpec
from export import export_onnx, read_metadata
from export.parity import epe, padded_real_pair, reference_model, torch_flow
from runtime.backends.onnxruntime_sessions import SessionConfig, run_export
from training.checkpoint import load_model
from training.model.corr import LOOKUPS, CorrPyramid
from training.model.deq_flow import DEQFlow
from training.model.local_corr import LocalCorr

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SHIPPED = ROOT / SHIPPED_CHECKPOINT
H, W, ITERS = 128, 160, 10
FLOW_TOL = 1e-3  # px, as tests/test_export_parity.py
ONE_THREAD = SessionConfig(threads=1, inter_threads=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _features(n, c, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g, dtype=dtype), torch.randn(n, c, h, w, generator=g, dtype=dtype))


def _coords(n, h, w, spread, seed=1, dtype=torch.float32):
    """Pixel grid plus random displacements; `spread` px sends many windows past every border."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    grid = torch.stack([xs, ys]).expand(n, 2, h, w)
    return grid + spread * torch.randn(n, 2, h, w, generator=g, dtype=dtype)


def test_lookups_are_named_and_unknown_ones_refused():
    assert LOOKUPS == ("grid_sample", "gather", "local")
    f1, f2 = _features(1, 8, 16, 16)
    with pytest.raises(ValueError, match="all-pairs correlation lookup 'local'"):
        CorrPyramid(f1, f2, lookup="local")
    model = DEQFlow(lookup="nearest")
    image = torch.zeros(1, 3, 128, 128)
    with pytest.raises(Exception, match="unknown correlation lookup 'nearest'; choose one of grid_sample, gather, "
                                        "local"):
        model.encode(image, image)


@pytest.mark.parametrize("h,w,levels,radius", [(17, 25, 4, 4), (16, 24, 4, 4), (21, 14, 3, 3), (9, 11, 2, 1)])
def test_local_lookup_equals_all_pairs_per_sample(h, w, levels, radius):
    """Odd sizes (avg-pool floors), windows partly and wholly outside the image, batch 2."""
    f1, f2 = _features(2, 32, h, w)
    coords = _coords(2, h, w, spread=6.0)
    coords[0, :, 0, 0] = torch.tensor([-40.5, 3.25])  # far outside: every sample zero
    coords[1, :, -1, -1] = torch.tensor([w + 0.75, h - 0.5])  # straddling the far border
    local = LocalCorr(f1, f2, levels, radius)(coords)
    for lookup in ("grid_sample", "gather"):
        ref = CorrPyramid(f1, f2, levels, radius, lookup)(coords)
        assert local.shape == ref.shape == (2, levels * (2 * radius + 1) ** 2, h, w)
        assert float((local - ref).abs().max()) <= 1e-5, lookup
    assert float(local[0, :, 0, 0].abs().max()) == 0.0
    assert float(local.abs().max()) > 1.0  # real values were compared


@pytest.mark.parametrize("chunk", [1, 7, 400])
def test_chunking_and_select_do_not_change_values(chunk):
    f1, f2 = _features(3, 16, 16, 20)
    coords = _coords(3, 16, 20, spread=4.0)
    full = LocalCorr(f1, f2, 4, 4)
    out = LocalCorr(f1, f2, 4, 4, chunk=chunk)(coords)
    assert float((out - full(coords)).abs().max()) <= 1e-6
    rows = torch.tensor([0, 2])
    picked = full.select(rows)
    assert (picked.batch, picked.lookup, picked.levels, picked.radius) == (2, "local", 4, 4)
    assert float((picked(coords[rows]) - full(coords)[rows]).abs().max()) == 0.0


def _grads(corr_cls, f1, f2, coords, weights, **kw):
    a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    (corr_cls(a, b, 3, 3, **kw)(coords) * weights).sum().backward()
    return a.grad, b.grad


def test_gradients_wrt_both_feature_maps_match_all_pairs():
    f1, f2 = _features(2, 24, 19, 23)
    coords = _coords(2, 19, 23, spread=5.0)
    weights = torch.randn(2, 3 * 49, 19, 23, generator=torch.Generator().manual_seed(5))
    local = _grads(LocalCorr, f1, f2, coords, weights)
    ref = _grads(CorrPyramid, f1, f2, coords, weights, lookup="grid_sample")
    for got, want in zip(local, ref):
        assert float(want.abs().max()) > 0.1
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_float64_gradcheck():
    f1, f2 = _features(1, 3, 8, 9, dtype=torch.float64)
    coords = _coords(1, 8, 9, spread=2.0, dtype=torch.float64)
    f1.requires_grad_()
    f2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: LocalCorr(a, b, 2, 1)(coords), (f1, f2))


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED)[0]


def test_model_flow_local_equals_all_pairs(shipped):
    """The shipped checkpoint on the real pair: same flow (switching the mode on a loaded model)."""
    i1, i2 = padded_real_pair(128, 192)
    ref = torch_flow(reference_model(shipped, "grid_sample"), i1, i2, 12)
    local = reference_model(shipped, "local")
    got = torch_flow(local, i1, i2, 12)
    assert float(np.abs(got["flow"] - ref["flow"]).max()) <= FLOW_TOL
    assert float(np.abs(ref["flow"]).max()) > 0.5
    assert got["iterations"] == ref["iterations"] == 12


def test_training_step_gradients_match_all_pairs(shipped):
    """A training forward/backward in local mode: the feature encoder's gradients equal all-pairs'."""
    i1, i2 = padded_real_pair(128, 128)
    grads = {}
    for lookup in ("grid_sample", "local"):
        torch.manual_seed(0)
        model = DEQFlow(shipped.cfg, lookup=lookup)
        model.load_state_dict(shipped.state_dict())
        model.train()
        model.freeze_bn()
        model.cfg.dropout = 0.0
        out = model(i1, i2)
        sum(p.abs().mean() for p in out.flow_predictions).backward()
        grads[lookup] = torch.cat([p.grad.flatten() for p in model.fnet.parameters() if p.grad is not None])
    ref, got = grads["grid_sample"], grads["local"]
    assert float(ref.abs().max()) > 0
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-4


_exports: dict = {}


def _export(tmp_path_factory, layout, **settings):
    key = (layout, tuple(sorted(settings.items())))
    if key not in _exports:
        out = tmp_path_factory.mktemp("local") / f"local_{layout}.onnx"
        _exports[key] = export_onnx(SHIPPED, out, layout=layout, lookup="local", height=H, width=W,
                                    iters=settings.pop("iters", ITERS), **settings)
    return _exports[key]


def _run(result, image1, image2, iters=ITERS):
    metas = [read_metadata(p) for p in result.paths]
    feed = {"image1": image1.numpy(), "image2": image2.numpy(),
            "flow_init": np.zeros((image1.shape[0], 2, H // 8, W // 8), np.float32)}
    return run_export({m.part: p for m, p in zip(metas, result.paths)}, feed,
                      SolveSpec.of(max_iter=iters, tol=0.0, stop_mode="abs"), ONE_THREAD)


@pytest.mark.parametrize("layout", ["unrolled", "loop", "split"])
def test_local_exports_match_torch_and_pass_the_tensorrt_check(tmp_path_factory, shipped, layout):
    result = _export(tmp_path_factory, layout)
    assert result.ok, [r.format() for r in result.reports]  # onnx checker, shape inference, TensorRT static check
    metas = [read_metadata(p) for p in result.paths]
    assert all(m.lookup == "local" for m in metas)
    if layout == "split":
        assert metas[1].context_names[:2] == ["corr_fmap1", "corr_fmap2"]
    i1, i2 = padded_real_pair(H, W)
    ref = torch_flow(reference_model(shipped, "grid_sample"), i1, i2, ITERS)
    got = _run(result, i1, i2)
    err = float(np.abs(got["flow"] - ref["flow"]).max())
    assert err <= FLOW_TOL, f"{layout}: max |flow diff| {err:.3g} px"
    np.testing.assert_allclose(got["residual"], ref["residual"], rtol=1e-3, atol=1e-4)


def test_host_solver_runs_a_dynamic_split_local_export_with_compaction(tmp_path):
    from deqflow.solver_spec import SolveOverrides
    from runtime import create_backend
    from tests.test_batch_independence import motorcycle_crops

    image1, image2 = (x[:2] for x in motorcycle_crops(2))
    path = tmp_path / "dyn_local.onnx"
    result = export_onnx(SHIPPED, path, layout="split", lookup="local", height=128, width=160, iters=40,
                         dynamic=True, max_shape="2x3x128x160")
    assert result.ok, [r.format() for r in result.reports]
    with create_backend("onnxruntime", path, settings=SolveOverrides(max_iter=40, tol=0.005, stop_mode="rel"),
                        threads=1) as be:
        assert be.parts.compactable
        batched = be.infer(image1, image2)
        alone = [be.infer(image1[i:i + 1], image2[i:i + 1]) for i in range(2)]
    counts = batched.sample_iterations.tolist()
    assert counts == [r.iterations for r in alone] and counts[0] != counts[1]  # one sample stopped first
    for i, r in enumerate(alone):
        assert float(np.abs(batched.flow[i] - r.flow[0]).max()) <= 1e-4
    # the dynamic graphs at another size (pyramid levels 17x25 -> 8x12 -> 4x6 -> 2x3) match PyTorch's all-pairs
    i1, i2 = padded_real_pair(136, 200)
    parts = {read_metadata(p).part: p for p in result.paths}
    feed = {"image1": i1.numpy(), "image2": i2.numpy(), "flow_init": np.zeros((1, 2, 17, 25), np.float32)}
    got = run_export(parts, feed, SolveSpec.of(max_iter=6, tol=0.0, stop_mode="abs"), ONE_THREAD)
    ref = torch_flow(reference_model(load_model(SHIPPED)[0], "grid_sample"), i1, i2, 6)
    assert float(np.abs(got["flow"] - ref["flow"]).max()) <= FLOW_TOL


@pytest.mark.slow  # traces float16 convolutions on the CPU
def test_mixed16_local_export_runs(tmp_path_factory):
    fp32 = _export(tmp_path_factory, "unrolled")
    mixed = _export(tmp_path_factory, "unrolled", precision="mixed16")
    assert mixed.ok and read_metadata(mixed.paths[0]).precision == "mixed16"
    i1, i2 = padded_real_pair(H, W)
    a, b = _run(fp32, i1, i2), _run(mixed, i1, i2)
    assert b["flow"].dtype == np.float32
    assert epe(b["flow"], a["flow"]) < 0.05  # tests/test_export_parity.py's FP16_EPE
