"""runtime on real exports of the official-format fixture checkpoint (128x160, CPU): the golden regression
files, torch vs ONNX Runtime parity for every layout, the host solver (tolerance, warm start, Anderson) against
PyTorch's, clear errors, and the build / infer / compare / bench commands end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import OFFICIAL_CKPT, OFFICIAL_GOLDEN, SHIPPED_CKPT, SHIPPED_GOLDEN, export_layouts, subprocess_env

from deqflow.cli import main
from deqflow.errors import InputError, ProfileError
from deqflow.extras import optional
from runtime import SolveOverrides, WarmState, create_backend, prepare
from runtime.compare import load_golden

ITERS = 8  # the golden files' iteration count (the shipped checkpoint's golden file: same pair, size, settings)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    return export_layouts(OFFICIAL_CKPT, tmp_path_factory.mktemp("onnx"), iters=ITERS)


@pytest.fixture(scope="module")
def video():
    from training.data.synthetic import make_synthetic_video

    return make_synthetic_video(4, (128, 160), seed=1)


def _ort(path, **kw):
    return create_backend("onnxruntime", path, threads=1, **kw)


# --- golden regression ---------------------------------------------------------------------------------


def test_golden_file_is_small_and_self_describing():
    assert OFFICIAL_GOLDEN.stat().st_size < 1_000_000
    g = load_golden(OFFICIAL_GOLDEN)
    assert g.meta["settings"]["max_iter"] == ITERS and g.meta["settings"]["tol"] == 0.0
    assert g.meta["reference"]["checkpoint_sha256"].startswith("072d1c52")
    assert g.meta["versions"]["onnxruntime"] and g.meta["versions"]["toolkit"]
    assert g.pairs[0][0].shape == (128, 160, 3) and g.outputs[0]["flow"].shape == (1, 2, 128, 160)
    assert float(np.abs(g.outputs[0]["flow"]).mean()) > 0.3  # a non-trivial flow


def _run_golden(backend: str, checkpoint: Path, exports: dict[str, Path], golden: Path):
    """Run `backend` ('torch' or 'onnxruntime-<layout>') on a golden file's pair: (result, reference outputs)."""
    g = load_golden(golden)
    (a, b), ref = g.pairs[0], g.outputs[0]
    settings = SolveOverrides(max_iter=ITERS, tol=0.0)
    if backend == "torch":
        be = create_backend("torch", checkpoint, settings=settings)
    else:
        layout = backend.split("-")[1]
        be = _ort(exports[layout], settings=settings if layout == "split" else None)
    with be:
        batch = prepare(a, b)
        return be.infer(batch.image1, batch.image2), ref


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-split", "onnxruntime-unrolled"])
def test_backends_reproduce_the_golden_outputs(backend, exports):
    r, ref = _run_golden(backend, OFFICIAL_CKPT, exports, OFFICIAL_GOLDEN)
    assert r.iterations == ITERS
    err = float(np.abs(r.flow - ref["flow"]).max())
    assert err <= 1e-4, f"{backend}: max |flow - golden| = {err:.3g} px"  # measured: 0 (torch), 8e-6 (ORT)
    assert float(np.abs(r.flow_low - ref["flow_low"]).max()) <= 1e-4
    assert r.residual[0] == pytest.approx(float(ref["residual"][0]), rel=1e-4)


@pytest.fixture(scope="module")
def shipped_exports(tmp_path_factory) -> dict[str, Path]:
    return export_layouts(SHIPPED_CKPT, tmp_path_factory.mktemp("onnx_shipped"), iters=ITERS)


def test_shipped_golden_file_belongs_to_the_shipped_checkpoint():
    from deqflow.checkpoint import sha256_file

    assert SHIPPED_GOLDEN.stat().st_size < 1_000_000
    g = load_golden(SHIPPED_GOLDEN)
    assert g.meta["reference"]["checkpoint_sha256"] == sha256_file(SHIPPED_CKPT), "regenerate it (docs/runtime.md)"
    assert g.meta["settings"]["max_iter"] == ITERS and g.meta["settings"]["tol"] == 0.0


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-split", "onnxruntime-unrolled"])
def test_backends_reproduce_the_shipped_golden_outputs(backend, shipped_exports):
    """The trained model's flow on the real pair, frozen: any change to the model code, the export or the
    runtime that moves it by more than 1e-4 px fails here."""
    from deqflow.metrics import flow_metrics

    r, ref = _run_golden(backend, SHIPPED_CKPT, shipped_exports, SHIPPED_GOLDEN)
    assert r.iterations == ITERS
    err = float(np.abs(r.flow - ref["flow"]).max())
    assert err <= 1e-4, f"{backend}: max |flow - golden| = {err:.3g} px"
    assert float(np.abs(r.flow_low - ref["flow_low"]).max()) <= 1e-4
    # a trained model: the flow is the scene's mostly-horizontal disparity (to the left), not noise
    flow = r.flow[0].transpose(1, 2, 0)
    assert float(np.median(flow[..., 0])) < -3.0 and abs(float(np.median(flow[..., 1]))) < 1.0
    assert flow_metrics(flow, ref["flow"][0].transpose(1, 2, 0))["epe"] <= 1e-4


# --- host solver on the split export vs PyTorch ------------------------------------------------------------


def test_split_warm_start_matches_torch_and_saves_iterations(exports, video):
    settings = SolveOverrides(max_iter=30, tol=3e-3, stop_mode="rel")
    runs = {}
    for name, be in (("torch", create_backend("torch", OFFICIAL_CKPT, settings=settings)),
                     ("ort", _ort(exports["split"], settings=settings))):
        from runtime.pipeline import FlowEstimator

        with be:
            est = FlowEstimator(be, warm_start=True)
            runs[name] = [est(video.frames[i], video.frames[i + 1]) for i in range(3)]
    its = {k: [p.iterations for p in v] for k, v in runs.items()}
    assert its["torch"] == its["ort"], its
    assert [p.warm for p in runs["ort"]] == [False, True, True]
    assert its["ort"][0] >= 5 and max(its["ort"][1:]) <= its["ort"][0] // 2  # measured 6 -> 3, 3
    for t, o in zip(runs["torch"], runs["ort"]):
        assert float(np.abs(t.flow - o.flow).max()) <= 1e-3
        assert o.result.rel_trace[0, -1] < 3e-3 <= o.result.rel_trace[0, -2]


def test_split_anderson_and_flow_init_match_torch(exports):
    from runtime.preprocessing import real_pair

    a, b, _, _ = real_pair((128, 160))
    batch = prepare(a, b)
    init = np.full((1, 2, 16, 20), 1.5, np.float32)
    s = SolveOverrides(max_iter=20, tol=3e-3, stop_mode="rel", method="anderson")
    with create_backend("torch", OFFICIAL_CKPT, settings=s) as t, _ort(exports["split"], settings=s) as o:
        rt, ro = t.infer(batch.image1, batch.image2, init), o.infer(batch.image1, batch.image2, init)
    assert rt.iterations == ro.iterations and 2 <= ro.iterations < 20
    np.testing.assert_allclose(ro.rel_trace, rt.rel_trace, rtol=1e-3)
    assert float(np.abs(rt.flow - ro.flow).max()) <= 1e-3


def test_split_sessions_do_not_spin_between_runs(exports):
    """The split layout's three sessions must not busy-wait after a run (their spinning pools stole the next
    session's cores: 2x slower on 2 cores); single-graph layouts keep ONNX Runtime's default unless asked."""
    key = "session.intra_op.allow_spinning"

    def entry(options):
        try:
            return options.get_session_config_entry(key)
        except Exception:  # not set: ONNX Runtime's default
            return None

    def spinning(backend):
        return {part: entry(s.options) for part, s in backend.sessions.items()}

    with _ort(exports["split"]) as split, _ort(exports["unrolled"]) as unrolled, \
            _ort(exports["unrolled"], spinning=False) as quiet, _ort(exports["split"], spinning=True) as busy:
        assert spinning(split) == {"encoder": "0", "step": "0", "decode": "0"}
        assert spinning(unrolled) == {"model": None}
        assert spinning(quiet) == {"model": "0"}
        assert set(spinning(busy).values()) == {"1"}


def test_low_memory_sessions_give_the_same_flow(exports):
    from runtime.preprocessing import real_pair

    a, b, _, _ = real_pair((128, 160))
    batch = prepare(a, b)
    with _ort(exports["split"]) as normal, _ort(exports["split"], low_memory=True) as low:
        assert all(not s.options.enable_cpu_mem_arena and not s.options.enable_mem_pattern
                   for s in low.sessions.values())
        assert all(s.options.enable_cpu_mem_arena for s in normal.sessions.values())
        r_normal, r_low = normal.infer(batch.image1, batch.image2), low.infer(batch.image1, batch.image2)
    assert r_low.iterations == r_normal.iterations
    assert float(np.abs(r_low.flow - r_normal.flow).max()) <= 1e-5


def test_graph_without_flow_init_refuses_one(tmp_path):
    from export import export_onnx

    path = tmp_path / "no_init.onnx"
    export_onnx(OFFICIAL_CKPT, path, layout="unrolled", height=128, width=160, iters=2, flow_init=False)
    image = np.zeros((1, 3, 128, 160), np.float32)
    with _ort(path) as backend:
        assert [i.name for i in backend.inputs] == ["image1", "image2"]
        assert backend.infer(image, image).iterations == 2
        with pytest.raises(InputError, match="without a flow_init input"):
            backend.infer(image, image, np.zeros((1, 2, 16, 20), np.float32))


def test_clear_errors_for_what_a_model_cannot_do(exports):
    with pytest.raises(InputError, match="re-export with --iters 5"):
        _ort(exports["unrolled"], settings=SolveOverrides(max_iter=5))
    with pytest.raises(InputError, match="split layout"):
        _ort(exports["unrolled"], settings=SolveOverrides(method="anderson"))
    with _ort(exports["unrolled"]) as be:
        big = np.zeros((1, 3, 136, 168), np.float32)
        with pytest.raises(ProfileError, match=r"exported for 1x3x128x160"):
            be.infer(big, big)
        img = np.zeros((1, 3, 128, 160), np.float32)
        with pytest.raises(InputError, match="warm start"):
            be.infer(img, img, state=WarmState(np.zeros((1, 32, 16, 20)), np.zeros((1, 2, 16, 20))))
        with pytest.raises(InputError, match="cannot stop at tolerance"):
            be.configure(SolveOverrides(tol=1e-3))
    with _ort(exports["split"]) as be:  # the split layout takes any settings, defaults from its metadata
        assert be.resolved.stop.max_iter == ITERS and be.resolved.stop.tol == 0.0
        assert be.configure(SolveOverrides(max_iter=3, method="anderson")).stop.max_iter == 3
        img = np.zeros((1, 3, 128, 160), np.float32)
        assert be.infer(img, img).iterations == 3
    with pytest.raises(InputError, match="onnxruntime backend runs ONNX exports"):
        _ort(OFFICIAL_CKPT)
    from deqflow.errors import FileFormatError

    with pytest.raises(FileFormatError, match="not found"):
        _ort(exports["split"].with_name("nothing.onnx"))


# --- commands ----------------------------------------------------------------------------------------------


def test_infer_pair_with_onnxruntime(exports, tmp_path, capsys):
    from deqflow.flow_io import read_flo, write_flow
    from deqflow.image_io import write_image
    from runtime.preprocessing import real_pair

    a, b, gt, valid = real_pair((128, 160))
    write_image(tmp_path / "a.png", a)
    write_image(tmp_path / "b.png", b)
    write_flow(tmp_path / "gt.flo", gt, valid)
    out = tmp_path / "out"
    rc = main(["infer", "--model", str(exports["split"]), "--image1", str(tmp_path / "a.png"), "--image2",
               str(tmp_path / "b.png"), "--output", str(out), "--gt", str(tmp_path / "gt.flo"), "--iters", "5",
               "--tol", "0", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "5 solver iterations" in printed and "onnxruntime:cpu (split)" in printed and "EPE" in printed
    for name in ("flow.flo", "flow.png", "panel.png", "residual.png", "error.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert read_flo(out / "flow.flo").shape == (128, 160, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 5 and summary["settings"]["max_iter"] == 5


def test_infer_folder_warm_start_resumes_and_writes_a_video(exports, video, tmp_path, capsys):
    from deqflow.flow_io import read_flow
    from deqflow.image_io import write_image

    frames = tmp_path / "frames"
    for i, f in enumerate(video.frames):
        write_image(frames / f"{i:03d}.png", f)
    out = tmp_path / "out"
    args = ["infer", "--model", str(exports["split"]), "--folder", str(frames), "--output", str(out), "--warm-start",
            "--iters", "30", "--tol", "3e-3", "--stop-mode", "rel", "--format", "flo,kitti,color", "--threads", "1"]
    assert main([*args, "--max-frames", "1"]) == 0  # "interrupted" after one frame
    assert sorted(p.name for p in (out / "flow").iterdir()) == ["000.flo"]
    assert main([*args, "--video-out", str(out / "flow.avi")]) == 0
    printed = capsys.readouterr().out
    assert "2 frame(s) computed, 1 already done (skipped)" in printed
    log = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["name"] for r in log] == ["000", "001", "002"]
    assert [r["warm"] for r in log] == [False, False, True]  # the chain restarts cold after a skipped frame
    assert log[2]["iterations"] <= log[1]["iterations"] // 2
    assert len(list((out / "kitti").glob("*.png"))) == 3 and len(list((out / "color").glob("*.png"))) == 3
    assert (out / "flow.avi").stat().st_size > 1000
    flow, _ = read_flow(out / "flow" / "001.flo")
    kitti, _ = read_flow(out / "kitti" / "001.png")
    assert flow.shape == (128, 160, 2) and np.abs(flow - kitti).max() <= 1 / 64


def test_infer_video_with_the_torch_backend(video, tmp_path, capsys):
    import cv2

    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 128))
    for f in video.frames[:3]:
        w.write(np.ascontiguousarray(f[:, :, ::-1]))
    w.release()
    rc = main(["infer", "--checkpoint", str(OFFICIAL_CKPT), "--video", str(path), "--output", str(tmp_path / "o"),
               "--warm-start", "--iters", "20", "--tol", "3e-3", "--stop-mode", "rel", "--threads", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["frames_computed"] == 2 and summary["iterations_per_frame"][1] < summary["iterations_per_frame"][0]


def test_compare_command_reports_and_golden(exports, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--checkpoint", str(OFFICIAL_CKPT), "--candidate", f"onnxruntime={exports['split']}",
               "--candidate", f"onnxruntime={exports['unrolled']}", "--pairs", "1", "--output", str(out),
               "--save-golden", str(tmp_path / "g.npz"), "--threads", "1"])
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["passed"] and report["inputs"]["size"] == [128, 160] and report["settings"]["max_iter"] == ITERS
    for c in report["candidates"]:
        assert c["tier"] == "float32" and c["passed"] and c["nonfinite"] == 0
        assert c["metrics"]["flow"]["max_abs"] <= 1e-4 and c["iterations_candidate"] == [ITERS]
        assert c["min_tolerance"]["flow.max_abs"] == c["metrics"]["flow"]["max_abs"]
    md = (out / "compare.md").read_text()
    assert "| onnxruntime:cpu (split) | float32 | PASS |" in md
    # against the committed golden file (another machine's reference)
    rc = main(["compare", "--golden", str(OFFICIAL_GOLDEN), "--candidate", f"onnxruntime={exports['split']}",
               "--output", str(tmp_path / "cmp2"), "--threads", "1"])
    assert rc == 0
    assert "vs golden torch:cpu: PASS" in capsys.readouterr().out


def test_bench_command_and_regression_gate(exports, tmp_path, capsys):
    common = ["bench", "--candidate", f"torch={OFFICIAL_CKPT}", "--candidate", f"onnxruntime={exports['unrolled']}",
              "--warmup", "1", "--runs", "2", "--threads", "1"]
    rc = main([*common, "--output", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    assert rc == 0
    report = json.loads((tmp_path / "b.json").read_text())
    labels = [e["label"] for e in report["results"]]
    assert labels == ["torch:cpu", "onnxruntime:cpu (unrolled)"]
    for e in report["results"]:
        assert e["iterations"] == ITERS and e["latency_ms"]["median"] > 0 and e["throughput_pairs_per_s"] > 0
        assert e["peak_host_rss_mb"] > 50 and e["runs"] == 2
    assert "| onnxruntime:cpu (unrolled) | 128x160 | 1 | 8 |" in (tmp_path / "b.md").read_text()
    # a baseline where ONNX Runtime was 100x faster than torch: a regression, exit 1
    fast = json.loads(json.dumps(report))
    fast["results"][1]["latency_ms"]["median"] = fast["results"][0]["latency_ms"]["median"] / 100
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    assert main([*common, "--output", str(tmp_path / "b2.json"), "--baseline", str(tmp_path / "fast.json")]) == 1
    gate = json.loads((tmp_path / "b2.json").read_text())["gate"]
    assert not gate["passed"] and gate["checks"][0]["measure"] == "median / torch:cpu"
    # a baseline where it was 100x slower: passes
    slow = json.loads(json.dumps(report))
    slow["results"][1]["latency_ms"]["median"] = slow["results"][0]["latency_ms"]["median"] * 100
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    assert main([*common, "--output", str(tmp_path / "b3.json"), "--baseline", str(tmp_path / "slow.json")]) == 0


def test_build_command_without_tensorrt(exports, tmp_path, capsys):
    if optional("tensorrt") is not None:
        pytest.skip("tensorrt is installed: the GPU tests cover deqflow build")
    rc = main(["build", "--onnx", str(exports["unrolled"]), "--output", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs tensorrt" in err and "pip install tensorrt" in err
    assert not (tmp_path / "m.engine").exists()
    # input errors come first, even without TensorRT
    assert main(["build", "--onnx", str(exports["unrolled"]), "--output", str(tmp_path / "m.engine"),
                 "--shape", "256x320"]) == 2
    assert "exported for 1x3x128x160" in capsys.readouterr().err
    assert main(["build", "--onnx", str(tmp_path / "none.onnx"), "--output", str(tmp_path / "m.engine")]) == 2
    assert "not found" in capsys.readouterr().err


def test_onnxruntime_backend_runs_without_torch(exports, tmp_path):
    """A deployment machine without PyTorch: load the split export, infer on the golden pair, warm start."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from runtime import SolveOverrides, create_backend, prepare\n"
        "from runtime.compare import load_golden\n"
        f"g = load_golden({str(OFFICIAL_GOLDEN)!r})\n"
        f"be = create_backend('onnxruntime', {str(exports['split'])!r}, threads=1)\n"
        "batch = prepare(*g.pairs[0])\n"
        "r = be.infer(batch.image1, batch.image2)\n"
        "r2 = be.infer(batch.image1, batch.image2, state=r.state)\n"
        "print('maxdiff', float(np.abs(r.flow - g.outputs[0]['flow']).max()), r.iterations, r2.iterations)\n"
        "print('torch loaded', [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] == 'torch'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    diff, its, its_warm = lines["maxdiff"].split()
    assert float(diff) <= 1e-4 and int(its) == ITERS and int(its_warm) == ITERS
    assert lines["torch"] == "loaded []"


def test_tiny_onnx_fixture_matches_the_model_code(tmp_path):
    """The torch-free tests run the committed tiny export (tests/torchfree): its golden outputs must still be
    what today's model code computes from the same seeded weights. Regenerate: PYTHONPATH=. python tests/helpers.py"""
    from helpers import TINY_GOLDEN, TINY_ONNX_ITERS, TINY_ONNX_MODEL, save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth", **TINY_ONNX_MODEL)
    g = load_golden(TINY_GOLDEN)
    settings = SolveOverrides(max_iter=TINY_ONNX_ITERS, tol=0.0)
    with create_backend("torch", ckpt, settings=settings) as be:
        batch = prepare(*g.pairs[0])
        r = be.infer(batch.image1, batch.image2)
    assert float(np.abs(r.flow - g.outputs[0]["flow"]).max()) <= 1e-4, "stale tests/fixtures/tiny: regenerate it"
