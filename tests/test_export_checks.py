"""Export checks without torch: TensorRT compatibility report on hand-made graphs, corrupt files, metadata,
settings validation, and `deqflow export --check`."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deqflow.cli import main
from deqflow.errors import FileFormatError, InputError
from deqflow.model_metadata import ModelMetadata, read_metadata, split_paths
from deqflow.shapes import ImageShape
from export.checks import check_files, check_model
from export.config import ExportConfig, check_opset
from export.trt_compat import trt_compatibility

vi = helper.make_tensor_value_info


def _model(nodes, inputs, outputs, opset=17, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _gridsample_model(opset: int, mode: str | None, rank: int = 4):
    attrs = {"align_corners": 1} if mode is None else {"mode": mode, "align_corners": 1}
    x_shape = [1, 1, 8, 8] if rank == 4 else [1, 1, 4, 8, 8]
    g_shape = [1, 9, 9, 2] if rank == 4 else [1, 9, 9, 9, 3]
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="corr_lookup_level0", **attrs)
    return _model([node], [vi("x", TensorProto.FLOAT, x_shape), vi("grid", TensorProto.FLOAT, g_shape)],
                  [vi("y", TensorProto.FLOAT, [1, 1, 9, 9] + ([9] if rank == 5 else []))], opset=opset)


def test_opset17_bilinear_gridsample_passes():
    report = trt_compatibility(_gridsample_model(17, "bilinear"))
    assert report.ok, report.format()
    assert report.nodes_checked == 1


@pytest.mark.parametrize("mode", ["linear", None])  # explicit opset-20 name, and the opset-20 default
def test_opset20_gridsample_flagged_with_node_name(mode):
    report = trt_compatibility(_gridsample_model(20, mode))
    assert not report.ok
    assert report.offending_nodes == ["corr_lookup_level0"]
    assert "NEAREST" in report.errors[0].message


def test_5d_gridsample_flagged():
    report = trt_compatibility(_gridsample_model(20, "linear", rank=5))
    assert not report.ok and any("4-D" in i.message for i in report.errors)


def _col2im_model():
    shape = numpy_helper.from_array(np.array([6, 6], np.int64), "image_shape")
    block = numpy_helper.from_array(np.array([3, 3], np.int64), "block_shape")
    nodes = [helper.make_node("Col2Im", ["cols", "image_shape", "block_shape"], ["img"], name="upsample_fold"),
             helper.make_node("Relu", ["img"], ["out"], name="relu")]
    return _model(nodes, [vi("cols", TensorProto.FLOAT, [1, 9, 16])], [vi("out", TensorProto.FLOAT, [1, 1, 6, 6])],
                  opset=18, inits=[shape, block])


def test_col2im_and_custom_domain_flagged():
    report = trt_compatibility(_col2im_model())
    assert report.offending_nodes == ["upsample_fold"]
    custom = _model([helper.make_node("CorrLookup", ["x"], ["y"], name="my_corr", domain="custom_ops")],
                    [vi("x", TensorProto.FLOAT, [1, 4])], [vi("y", TensorProto.FLOAT, [1, 4])])
    custom.opset_import.append(helper.make_opsetid("custom_ops", 1))
    assert trt_compatibility(custom).offending_nodes == ["my_corr"]


def _loop_model(trip_const: bool, scan: bool, grow: bool):
    """A Loop whose body either keeps or changes the carried shape, with or without a scan output."""
    body_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond")]
    if grow:
        body_nodes.append(helper.make_node("Concat", ["x_in", "x_in"], ["x_out"], axis=0, name="grow"))
    else:
        body_nodes.append(helper.make_node("Relu", ["x_in"], ["x_out"], name="relu"))
    outputs = [vi("cond_out", TensorProto.BOOL, []), vi("x_out", TensorProto.FLOAT, [4, 3] if grow else [2, 3])]
    if scan:
        body_nodes.append(helper.make_node("Identity", ["x_out"], ["scan"], name="scan_out"))
        outputs.append(vi("scan", TensorProto.FLOAT, [2, 3]))
    body = helper.make_graph(body_nodes, "body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
                                                  vi("x_in", TensorProto.FLOAT, [2, 3])], outputs)
    inits = [numpy_helper.from_array(np.array(True), "cond0")]
    trip = "M"
    if trip_const:
        inits.append(numpy_helper.from_array(np.array(4, np.int64), "M"))
        inputs = [vi("x", TensorProto.FLOAT, [2, 3])]
    else:
        inputs = [vi("x", TensorProto.FLOAT, [2, 3]), vi("M", TensorProto.INT64, [])]
    outs = ["x_final"] + (["x_scan"] if scan else [])
    loop = helper.make_node("Loop", [trip, "cond0", "x"], outs, name="solver_loop", body=body)
    return _model([loop], inputs, [vi(o, TensorProto.FLOAT, ["d0", "d1"] if o == "x_final" else ["n", 2, 3])
                                   for o in outs], inits=inits)


def test_loop_rules():
    assert trt_compatibility(_loop_model(trip_const=True, scan=False, grow=False)).ok
    dyn_scan = trt_compatibility(_loop_model(trip_const=False, scan=True, grow=False))
    assert dyn_scan.offending_nodes == ["solver_loop"] and "scan" in dyn_scan.errors[0].message
    grow = trt_compatibility(_loop_model(trip_const=True, scan=False, grow=True))
    assert grow.offending_nodes == ["solver_loop"] and "shape" in grow.errors[0].message
    # a condition input means a while loop on TensorRT: a warning about the off-by-one, not an error
    assert any("one more" in w.message for w in trt_compatibility(_loop_model(True, False, False)).warnings)


def test_reduce_axes_must_be_constant():
    node = helper.make_node("ReduceMax", ["x", "axes"], ["y"], name="rmax", keepdims=0)
    m = _model([node], [vi("x", TensorProto.FLOAT, [2, 3]), vi("axes", TensorProto.INT64, [1])],
               [vi("y", TensorProto.FLOAT, ["d"])], opset=18)
    assert trt_compatibility(m).offending_nodes == ["rmax"]


def test_check_cli_reports_offending_nodes(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    good = tmp_path / "good.onnx"
    onnx.save(_gridsample_model(20, "linear"), bad)
    onnx.save(_gridsample_model(17, "bilinear"), good)
    assert main(["export", "--check", str(good)]) == 0
    assert main(["export", "--check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "corr_lookup_level0" in out and "FAILED" in out and "offending nodes: corr_lookup_level0" in out
    col = tmp_path / "col2im.onnx"
    onnx.save(_col2im_model(), col)
    assert main(["export", "--check", str(col)]) == 1
    assert "upsample_fold" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model at all \x00\x01\x02", b"\x08\x07\x12"])
def test_corrupt_files_give_file_format_error(tmp_path, content, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(FileFormatError):
        check_model(path)
    with pytest.raises(FileFormatError):
        read_metadata(path)
    assert main(["export", "--check", str(path)]) == 2  # the CLI prints the error, no traceback
    assert "error:" in capsys.readouterr().err
    with pytest.raises(FileFormatError, match="not found"):
        read_metadata(tmp_path / "missing.onnx")


def test_truncated_model_file(tmp_path):
    path = tmp_path / "t.onnx"
    data = _col2im_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError):
        check_model(path)


def test_metadata_roundtrip_and_foreign_file(tmp_path):
    meta = ModelMetadata(variant="T", layout="split", part="step", iterations=18, tolerance=1e-3,
                         shape_hints={"min": {"image1": [1, 3, 128, 128]}}, parts={"step": "m.step.onnx"},
                         context_names=["corr_rows", "inp", "coords0"], dynamic=True, checkpoint_sha256="ab" * 32)
    model = _gridsample_model(17, "bilinear")
    helper.set_model_props(model, meta.to_props())
    path = tmp_path / "m.step.onnx"
    onnx.save(model, path)
    got = read_metadata(path)
    assert got == meta
    assert split_paths(path)["step"] == path
    plain = tmp_path / "plain.onnx"
    onnx.save(_gridsample_model(17, "bilinear"), plain)
    with pytest.raises(FileFormatError, match="no deqflow export metadata"):
        read_metadata(plain)
    report = check_model(plain)  # checks still run on foreign files
    assert report.ok and report.metadata is None
    assert [r.path for r in check_files([plain])] == [str(plain)]


def test_settings_validation():
    for opset in (16, 20, 11):
        with pytest.raises(InputError, match="opset"):
            check_opset(opset)
    with pytest.raises(InputError, match="nearest"):
        ExportConfig(opset=20)
    with pytest.raises(InputError, match="multiple of 8"):
        ExportConfig(height=130, width=160)
    with pytest.raises(InputError, match="at least 128"):
        ExportConfig(height=120, width=160)
    with pytest.raises(InputError, match="layout loop"):
        ExportConfig(layout="unrolled", tolerance=1e-3)
    with pytest.raises(InputError, match="--dynamic"):
        ExportConfig(min_shape="128x128")
    with pytest.raises(InputError, match="min <= opt <= max"):
        ExportConfig(dynamic=True, height=256, width=256, max_shape="128x128")
    with pytest.raises(InputError, match="layout"):
        ExportConfig(layout="scan")
    hints = ExportConfig(dynamic=True, height=128, width=160, max_shape="2x3x256x320").shape_hints()
    assert (hints.min, hints.opt, hints.max) == (ImageShape(1, 128, 128), ImageShape(1, 128, 160),
                                                 ImageShape(2, 256, 320))
    assert hints.per_input()["max"]["flow_init"] == [2, 2, 32, 40]


def test_export_package_imports_without_torch():
    code = ("import sys, export, export.checks, export.trt_compat, export.config, export.compose;"
            "from export import read_metadata, check_model;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
