"""deqflow compare --trace on the committed tiny split export: planted faults are found where they were planted
(one weight of one step node; one weight of the encoder), a clean candidate passes, and nothing compared fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ROOT, TINY_ONNX, TINY_ONNX_ITERS, blocking_prelude, subprocess_env
from onnx import numpy_helper

from deqflow.cli import main
from deqflow.onnx_integrity import record_weights_digest

PARTS = ("encoder", "step", "decode")


def candidate_copy(folder, name: str = "cand") -> dict[str, object]:
    """A copy of the tiny split export in `folder` as <name>.<part>.onnx; returns part -> path and the base."""
    paths = {part: folder / f"{name}.{part}.onnx" for part in PARTS}
    for part, path in paths.items():
        shutil.copy(TINY_ONNX.with_name(f"{TINY_ONNX.stem}.{part}.onnx"), path)
    return {"base": folder / f"{name}.onnx", **paths}


def plant(path, node_name: str, value: float | None = None) -> str:
    """Double the largest weight of the Conv node `node_name` of the graph at `path` (or set the whole weight to
    `value`), re-stamp the weights digest as a deliberate edit would, save; returns the node's name."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    init = inits[node.input[1]]
    w = numpy_helper.to_array(init).copy()
    if value is None:
        w.flat[np.argmax(np.abs(w))] *= 2.0
    else:
        w[:] = value
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    record_weights_digest(model)
    onnx.save(model, str(path))
    return node.name


def trace(tmp_path, candidate, *extra) -> tuple[int, dict]:
    out = tmp_path / "report"
    rc = main(["compare", "--trace", "--reference", f"onnxruntime={TINY_ONNX}", "--candidate",
               f"onnxruntime={candidate}", "--iters", str(TINY_ONNX_ITERS), "--tier", "float32", "--threads", "1",
               "--output", str(out), *extra])
    report = json.loads((out / "trace.json").read_text()) if (out / "trace.json").is_file() else {}
    return rc, report


def test_a_perturbed_step_weight_is_located_at_its_node(tmp_path, capsys):
    cand = candidate_copy(tmp_path)
    node = plant(cand["step"], "/update_block/gru/convq1/Conv")
    rc, report = trace(tmp_path, cand["base"])
    assert rc == 1
    assert report["first_outside"] == 1  # the faulty step is used from the first iteration on
    assert not report["per_iteration"][0]["within_tier"]
    loc = report["nodes"]["location"]
    assert (loc["part"], loc["iteration"], loc["node"], loc["op"]) == ("step", 1, node, "Conv")
    assert loc["ratio"] > 1
    parts = report["nodes"]["parts"]
    assert parts["encoder"]["departed"] == 0 and parts["encoder"]["compared"] > 50
    assert parts["step"]["first"][0]["node"] == node
    md = (tmp_path / "report" / "trace.md").read_text()
    assert f"`{node}`" in md and "First departing node: **step** at iteration 1" in md
    assert f"first departing node: step (iteration 1) {node} (Conv)" in capsys.readouterr().out


def test_an_exact_step_with_a_perturbed_encoder_is_located_in_the_encoder_at_iteration_0(tmp_path):
    cand = candidate_copy(tmp_path)
    node = plant(cand["encoder"], "/fnet/layer1/layer1.0/conv1/Conv")
    rc, report = trace(tmp_path, cand["base"])
    assert rc == 1
    assert report["first_outside"] == 1
    loc = report["nodes"]["location"]
    assert (loc["part"], loc["iteration"], loc["node"]) == ("encoder", 0, node)
    # fed the reference's context and state, the candidate's step graph is exact: no step node departs
    step = report["nodes"]["parts"]["step"]
    assert step["departed"] == 0 and step["worst"][0]["max_abs_error"] == 0.0
    assert max(v["rel"] for v in report["context"].values()) > 1e-4  # the encoder outputs moved


def test_a_clean_candidate_passes_with_zero_deviation(tmp_path):
    cand = candidate_copy(tmp_path)
    rc, report = trace(tmp_path, cand["base"])
    assert rc == 0 and report["passed"]
    rows = report["per_iteration"]
    assert len(rows) == TINY_ONNX_ITERS and all(r["within_tier"] for r in rows)
    assert all(r["flow_max_abs"] == 0.0 and r["hidden_rel"] == 0.0 for r in rows)
    assert report["first_outside"] is None
    assert report["fixed_point"]["verdict"] == "same" and report["fixed_point"]["distance"] == 0.0
    assert report["nodes"]["location"] is None
    assert all(p["departed"] == 0 for p in report["nodes"]["parts"].values())
    assert (tmp_path / "report" / "trace.png").stat().st_size > 1000 or "matplotlib" not in sys.modules


def test_nothing_compared_fails_closed(tmp_path, capsys):
    cand = candidate_copy(tmp_path)
    plant(cand["step"], "/update_block/encoder/convc1/Conv", value=3e38)  # finite weights; Inf/NaN from step 1
    rc, report = trace(tmp_path, cand["base"], "--nodes", "0")
    assert rc == 1 and not report["passed"]
    assert report["verdict"].startswith("FAIL: nothing compared: every iteration is NaN/Inf")
    assert report["nodes_skipped"] == "--nodes 0"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("compare --trace: FAIL: nothing compared")


def test_trace_refuses_a_non_split_candidate_and_two_candidates(tmp_path, capsys):
    rc = main(["compare", "--trace", "--reference", f"onnxruntime={TINY_ONNX}", "--candidate",
               f"onnxruntime={TINY_ONNX}", "--candidate", f"onnxruntime={TINY_ONNX}", "--output", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "compares one candidate" in err and "Traceback" not in err
    assert not (tmp_path / "trace.json").exists()


def test_missing_polygraphy_names_the_debug_extra(tmp_path):
    code = blocking_prelude("polygraphy", "onnx_graphsurgeon") + (
        "from deqflow.cli import main\n"
        f"raise SystemExit(main(['compare', '--trace', '--reference', 'onnxruntime={TINY_ONNX}', '--candidate', "
        f"'onnxruntime={TINY_ONNX}', '--iters', '2', '--output', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'deqflow[debug]'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-c", code.replace("'--iters', '2'", "'--iters', '2', '--nodes', '0'")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the trajectory alone needs neither


@pytest.mark.parametrize("name,expected", [("/fnet/inner/conv1/Conv_output_0", "/fnet/conv1/Conv_output_0"),
                                           ("/update_block/inner/gru/inner/x", "/update_block/gru/x"),
                                           ("/inner_x/Conv", "/inner_x/Conv")])
def test_canonical_names_drop_the_mixed16_wrapper_scope(name, expected):
    from runtime.node_diff import canonical_name

    assert canonical_name(name) == expected


class _FakeTrt:
    """Stands in for polygraphy.backend.trt: 'builds' the marked network by running the ONNX model on ONNX
    Runtime, so the TensorRT node runner's wiring (marking, feeds, outputs) is exercised without a GPU."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def NetworkFromOnnxBytes(self, data, strongly_typed=None):  # noqa: N802 - Polygraphy's names
        self.calls.append(f"parse strongly_typed={strongly_typed}")
        return onnx.load_from_string(data)

    def ModifyNetworkOutputs(self, network, outputs=None):  # noqa: N802
        self.calls.append(f"mark {outputs}")
        return network

    def CreateConfig(self):  # noqa: N802
        return None

    def EngineFromNetwork(self, network, config):  # noqa: N802
        return network

    def TrtRunner(self, engine):  # noqa: N802
        from runtime.node_diff import onnxruntime_outputs

        class Runner:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def get_input_metadata(self):
                return {i.name: None for i in engine.graph.input}

            def infer(self, feeds):
                assert set(feeds) == {i.name for i in engine.graph.input}
                return onnxruntime_outputs(engine, feeds)

        return Runner()


def test_the_tensorrt_node_runner_marks_every_tensor_and_compares_like_onnxruntime(monkeypatch):
    import runtime.node_diff as nd

    fake = _FakeTrt()
    monkeypatch.setattr(nd, "require", lambda module, *a, **k: fake if module == "polygraphy.backend.trt"
                        else __import__("importlib").import_module(module))
    model = nd.load_graph(TINY_ONNX.with_name(f"{TINY_ONNX.stem}.encoder.onnx"))
    rng = np.random.default_rng(0)
    feeds = {"image1": rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32),
             "image2": rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32),
             "flow_init": np.zeros((1, 2, 8, 12), np.float32)}
    report, outputs = nd.compare_nodes(model, model, feeds, "float32", runner="tensorrt")
    assert fake.calls == ["parse strongly_typed=True", "mark mark-all"]
    assert report["runner"] == "tensorrt" and report["departed"] == 0 and report["compared"] > 50
    assert report["worst"][0]["max_abs_error"] == 0.0 and "coords0" in outputs


def test_gpu_acceptance_trace_stage_command_parses_and_skips_without_a_gpu(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_acceptance as ga
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from argparse import Namespace

    from deqflow.cli import build_parser

    args = Namespace(output=tmp_path, budget_s=60.0, checkpoint=ROOT / "ckpt.pth", size=(128, 160), runs=1)
    cpu = ga.Acceptance(args, ga.Environment(False, "no CUDA device", "", None, []))
    cpu.trace_mixed16()
    assert cpu.stages[-1].status == "skipped" and cpu.stages[-1].reason == "no CUDA device"
    gpu = ga.Acceptance(args, ga.Environment(True, "", "fake GPU", "10.0", []))
    assert gpu.trace_command() is None  # no exports yet
    gpu.exports = {("split", "fp32"): tmp_path / "split-fp32.onnx", ("split", "mixed16"): tmp_path / "m16.onnx"}
    cmd = gpu.trace_command()
    parsed = build_parser(["compare"]).parse_args(cmd[3:])
    assert parsed.trace and parsed.candidate == [f"tensorrt={tmp_path / 'm16.onnx'}"]
    assert parsed.node_reference == str(tmp_path / "split-fp32.onnx") and parsed.tier == "float16"


def _trajectory(residual, hidden_value: float):
    from runtime.trace import Trajectory

    k = len(residual)
    states = [(np.full((1, 1, 1, 1), hidden_value, np.float32), np.zeros((1, 2, 1, 1), np.float32))] * (k + 1)
    return Trajectory("t", np.asarray(residual, np.float64), np.asarray(residual, np.float64), states,
                      [np.zeros((1, 2, 8, 8), np.float32)] * k, np.zeros((1, 2, 1, 1), np.float32), requested=k)


@pytest.mark.parametrize("residual,offset,verdict,radius", [
    ([8, 4, 2, 1], 0.5, "same", None),  # closer than one step (1)
    ([8, 4, 2, 1], 3.0, "same", 4.0),  # rate 0.5: each within 1 / (1 - 0.5) = 2 of its fixed point
    ([8, 4, 2, 1], 5.0, "different", 4.0),
    ([1, 1, 1, 1], 2.0, "undetermined", None),  # not contracting
])
def test_fixed_point_verdict_compares_the_distance_with_the_step_and_the_contraction(residual, offset, verdict,
                                                                                      radius):
    from runtime.trace import fixed_point_verdict

    got = fixed_point_verdict(_trajectory(residual, 0.0), _trajectory(residual, offset))
    assert got["verdict"] == verdict and got["distance"] == pytest.approx(offset)
    assert got["radius"] == (pytest.approx(radius) if radius else None)
    assert got["distance_in_steps"] == pytest.approx(offset / residual[-1])
