"""runtime with ONNX Runtime where PyTorch cannot be imported (`pytest --torch-free`): the committed tiny split
export reproduces its torch float32 golden file through the host solver, and `deqflow infer` / `compare` run."""

import json
import sys

import numpy as np
import pytest
from helpers import TINY_GOLDEN, TINY_ONNX, TINY_ONNX_ITERS, TINY_ONNX_SIZE

from deqflow.cli import main
from runtime import SolveOverrides, create_backend, prepare
from runtime.compare import load_golden


@pytest.fixture(scope="module")
def golden():
    return load_golden(TINY_GOLDEN)


def _infer(golden, settings: SolveOverrides | None = None, **kw):
    with create_backend("onnxruntime", TINY_ONNX, threads=1, settings=settings) as backend:
        batch = prepare(*golden.pairs[0])
        return backend.infer(batch.image1, batch.image2, **kw)


def test_torch_cannot_be_imported_in_the_torch_free_run(request):
    if not request.config.getoption("torch_free"):
        pytest.skip("only meaningful under `pytest --torch-free`")
    with pytest.raises(ImportError):
        import torch  # noqa: F401
    assert not [m for m in sys.modules if m.split(".")[0] == "torch"]


def test_fixture_is_small_and_describes_itself(golden):
    assert sum(p.stat().st_size for p in TINY_ONNX.parent.glob(f"{TINY_ONNX.stem}.*.onnx")) < 2_000_000
    assert golden.meta["settings"]["max_iter"] == TINY_ONNX_ITERS and golden.meta["settings"]["tol"] == 0.0
    assert golden.pairs[0][0].shape == (*TINY_ONNX_SIZE, 3)
    assert float(np.abs(golden.outputs[0]["flow"]).mean()) > 0.1  # a non-trivial flow to compare


def test_split_export_reproduces_the_torch_golden_outputs(golden):
    ref = golden.outputs[0]
    r = _infer(golden)  # the export's own defaults: its iteration count, no early stop
    assert r.iterations == TINY_ONNX_ITERS
    assert float(np.abs(r.flow - ref["flow"]).max()) <= 1e-4
    assert float(np.abs(r.flow_low - ref["flow_low"]).max()) <= 1e-4
    assert r.residual[0] == pytest.approx(float(ref["residual"][0]), rel=1e-4)


def test_host_solver_settings_and_warm_start(golden):
    """Fewer iterations follow the same trajectory; a warm start from the result continues from its state."""
    full = _infer(golden)
    short = _infer(golden, SolveOverrides(max_iter=2, tol=0.0))
    assert short.iterations == 2
    np.testing.assert_allclose(short.rel_trace, full.rel_trace[:, :2], rtol=1e-5)
    warm = _infer(golden, SolveOverrides(max_iter=2, tol=0.0), state=short.state)
    assert warm.iterations == 2 and np.isfinite(warm.flow).all()
    assert float(np.abs(warm.flow - full.flow).max()) <= 1e-3  # 2 + 2 warm steps = 4 cold steps


def test_infer_and_compare_commands(golden, tmp_path, capsys):
    from deqflow.image_io import write_image

    a, b = golden.pairs[0]
    write_image(tmp_path / "a.png", a)
    write_image(tmp_path / "b.png", b)
    out = tmp_path / "out"
    assert main(["infer", "--model", str(TINY_ONNX), "--image1", str(tmp_path / "a.png"), "--image2",
                 str(tmp_path / "b.png"), "--output", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == TINY_ONNX_ITERS and (out / "flow.flo").stat().st_size > 0
    assert main(["compare", "--golden", str(TINY_GOLDEN), "--candidate", f"onnxruntime={TINY_ONNX}",
                 "--output", str(tmp_path / "cmp"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["passed"]


@pytest.mark.parametrize("output", ["flow", "residual"])
def test_non_finite_outputs_are_refused_unless_allowed(golden, output):
    """A NaN in the flow or the residual is an error naming the model and its weights digest; with
    allow_nonfinite (--allow-nonfinite) the result comes back as it is."""
    from deqflow.errors import NonFiniteOutputError

    batch = prepare(*golden.pairs[0])
    for allow in (False, True):
        with create_backend("onnxruntime", TINY_ONNX, threads=1, allow_nonfinite=allow) as backend:
            real = backend._infer

            def poisoned(*args, _real=real):
                result = _real(*args)
                getattr(result, output).flat[0] = np.nan
                return result

            backend._infer = poisoned
            if allow:
                assert np.isnan(getattr(backend.infer(batch.image1, batch.image2), output)).sum() == 1
                continue
            with pytest.raises(NonFiniteOutputError) as err:
                backend.infer(batch.image1, batch.image2)
            message = str(err.value)
            assert str(TINY_ONNX) in message and backend.identity[:12] in message
            assert f"{output} has 1 NaN" in message and "\n" not in message


def test_the_model_file_digest_identifies_the_weights():
    from runtime.modelfile import open_model_file

    file = open_model_file(TINY_ONNX)
    assert set(file.weights_digest) == {"encoder", "step", "decode"}
    assert all(len(d) == 64 for d in file.weights_digest.values()) and len(file.digest) == 3 * 12 + 2


def test_one_backend_choice_with_its_label_known_before_opening():
    """infer and serve choose the backend through one function (compare and bench through its spec form); the
    label a bench case or a failed candidate gets before opening is the one the opened backend reports."""
    import argparse

    from deqflow.errors import InputError
    from runtime.backends import default_backend
    from runtime.commands.common import choose_backend, spec_choice

    assert [default_backend(None, m) for m in ("m.engine", "m.PLAN", "m.onnx")] == ["tensorrt", "tensorrt",
                                                                                     "onnxruntime"]
    assert default_backend("ckpt.pth", None) == "torch"
    flags = dict(backend=None, iters=None, tol=None, stop_mode=None, solver=None, threads=1)
    args = argparse.Namespace(checkpoint=None, model=str(TINY_ONNX), **flags)
    choice = choose_backend(args)
    assert choice == spec_choice(("onnxruntime", {}, str(TINY_ONNX)), args, choice.settings)
    with choice.open() as backend:
        assert choice.label == backend.label == "onnxruntime:cpu (split)"
    assert spec_choice(("torch", {"device": "cuda:1"}, "ckpt.pth"), args, choice.settings).label == "torch:cuda:1"
    with pytest.raises(InputError, match="--backend torch needs --checkpoint"):
        choose_backend(argparse.Namespace(checkpoint=None, model=str(TINY_ONNX), **{**flags, "backend": "torch"}))
    with pytest.raises(InputError, match="exactly one of --checkpoint"):
        choose_backend(argparse.Namespace(checkpoint="c.pth", model=str(TINY_ONNX), **flags))


def test_one_warm_start_rule_in_each_backend_s_words():
    """FlowEstimator and Backend.infer refuse a warm start through one rule, worded by the backend."""
    from deqflow.errors import InputError
    from runtime import FlowEstimator
    from runtime.serving.remote import ServerBackend
    from runtime.warm_start import check_warm_start

    server = ServerBackend.__new__(ServerBackend)  # not connected: only its class-level rule is read
    server.model_path = "http://host:8000"
    with pytest.raises(InputError, match=r"^server:http://host:8000: warm start \(--warm-start\) is not available"):
        FlowEstimator(server, warm_start=True)
    with create_backend("onnxruntime", TINY_ONNX, threads=1) as split:
        check_warm_start(split)  # the split layout warm-starts: no error
