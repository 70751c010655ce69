"""runtime.backends.onnxruntime_sessions: the session factory's errors and options, and a hand-built split
export (encoder, step, decode) driven by the shared host loop, whose iterates are known by hand. No torch."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deqflow.errors import FileFormatError, InputError
from deqflow.solver_spec import SolveSpec
from runtime.backends.onnxruntime_sessions import (
    SPLIT_PARTS,
    OrtStepParts,
    SessionConfig,
    create_session,
    open_session,
    run_export,
    run_split,
)

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, name):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def split_export():
    """(1,3,8,8) images -> coords0 = (mean of channels 0 and 1 of image1); the step halves the distance of
    (net, coords1) to (0, coords0); decode: flow = coords1 - coords0."""
    half = helper.make_tensor("half", FLOAT, [], [0.5])
    eps = helper.make_tensor("eps", FLOAT, [], [1e-8])
    encoder = _model([
        helper.make_node("AveragePool", ["image1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Slice", ["pooled", "starts", "ends", "axes"], ["coords0"]),
        helper.make_node("Identity", ["pooled"], ["inp"]),
    ], [("image1", [1, 3, 8, 8]), ("image2", [1, 3, 8, 8])], [("coords0", [1, 2, 1, 1]), ("inp", [1, 3, 1, 1])],
        "encoder")
    for name, value in (("starts", 0), ("ends", 2), ("axes", 1)):
        encoder.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [value]))
    step = _model([
        helper.make_node("Mul", ["net", "half"], ["net_next"]),
        helper.make_node("Sub", ["coords1", "coords0"], ["d"]),
        helper.make_node("Mul", ["d", "half"], ["d_half"]),
        helper.make_node("Add", ["coords0", "d_half"], ["coords1_next"]),
        helper.make_node("Concat", ["net", "coords1"], ["z"], axis=1),
        helper.make_node("Concat", ["net_next", "coords1_next"], ["fz"], axis=1),
        helper.make_node("Sub", ["fz", "z"], ["diff"]),
        helper.make_node("ReduceL2", ["diff"], ["residual"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceL2", ["fz"], ["norm"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Add", ["norm", "eps"], ["denominator"]),
        helper.make_node("Div", ["residual", "denominator"], ["residual_rel"]),
    ], [("inp", [1, 3, 1, 1]), ("coords0", [1, 2, 1, 1]), ("net", [1, 1, 1, 1]), ("coords1", [1, 2, 1, 1])],
        [("net_next", [1, 1, 1, 1]), ("coords1_next", [1, 2, 1, 1]), ("residual", [1]), ("residual_rel", [1])],
        "step")
    step.graph.initializer.extend([half, eps])
    decode = _model([helper.make_node("Sub", ["coords1", "coords0"], ["flow"]),
                     helper.make_node("Identity", ["flow"], ["flow_low"])],
                    [("net", [1, 1, 1, 1]), ("coords1", [1, 2, 1, 1]), ("coords0", [1, 2, 1, 1])],
                    [("flow", [1, 2, 1, 1]), ("flow_low", [1, 2, 1, 1])], "decode")
    for m in (encoder, step, decode):
        onnx.checker.check_model(m)
    return encoder, step, decode


def test_split_export_under_the_host_loop():
    parts = OrtStepParts.from_files(split_export(), SessionConfig(threads=1, inter_threads=1))
    assert parts.hidden_dim == 1 and sorted(parts.context) == ["coords0", "inp"]
    image = np.full((1, 3, 8, 8), 5.0, np.float32)
    feed = {"image1": image, "image2": image, "flow_init": np.array([8, 0], np.float32).reshape(1, 2, 1, 1)}
    # the flow halves each step: step k reports the residual 8 / 2^k
    out = run_split(parts, feed, SolveSpec.of(max_iter=20, tol=1.5, stop_mode="abs"))
    assert int(out["iterations"][0]) == 3
    np.testing.assert_allclose(out["residual"], [1.0], rtol=1e-6)
    np.testing.assert_allclose(out["flow"].ravel(), [1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["residual_rel"], [1.0 / np.hypot(5 + 1, 5)], rtol=1e-5)
    capped = run_split(parts, feed, SolveSpec.of(max_iter=2, tol=0.0))
    assert int(capped["iterations"][0]) == 2 and capped["flow"].ravel()[0] == pytest.approx(2.0)
    # the same through run_export, which takes the parts by name
    via_export = run_export(dict(zip(SPLIT_PARTS, split_export())), feed, SolveSpec.of(max_iter=2, tol=0.0))
    np.testing.assert_array_equal(via_export["flow"], capped["flow"])


def test_sessions_from_paths_bytes_and_protos(tmp_path):
    encoder = split_export()[0]
    path = tmp_path / "encoder.onnx"
    onnx.save(encoder, str(path))
    feed = {"image1": np.ones((1, 3, 8, 8), np.float32), "image2": np.ones((1, 3, 8, 8), np.float32),
            "unused": np.zeros(1)}
    for model in (path, str(path), encoder.SerializeToString(), encoder):
        session = open_session(model, SessionConfig(low_memory=True, spinning=False, optimization="basic"))
        out = session.run_host(feed)
        assert set(out) == {"coords0", "inp"} and out["coords0"].shape == (1, 2, 1, 1)


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        create_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FileFormatError, match="cannot load .*bad.onnx"):
        create_session(bad)
    with pytest.raises(InputError, match="optimization"):
        SessionConfig(optimization="max")
    with pytest.raises(InputError, match="threads"):
        SessionConfig(threads=-1)
