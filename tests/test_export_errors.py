"""Bad input to the exporter gives clear errors, a failed export leaves no half-written file, and the
`deqflow export` command works end to end."""

import os
from pathlib import Path

import onnx
import pytest
from helpers import OFFICIAL_CKPT

import export.exporter as exporter
from deqflow.cli import main
from deqflow.errors import CheckpointError, InputError
from export import export_onnx, read_metadata, split_paths

SMALL = {"height": 128, "width": 160, "iters": 2}


def test_variant_mismatch_is_refused(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="DEQ-Flow-T model, not the requested variant B"):
        export_onnx(OFFICIAL_CKPT, tmp_path / "m.onnx", variant="B", **SMALL)
    assert main(["export", "--checkpoint", str(OFFICIAL_CKPT), "--output", str(tmp_path / "m.onnx"),
                 "--variant", "L", "--height", "128", "--width", "160"]) == 2
    err = capsys.readouterr().err
    assert "not the requested variant L" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [16, 20, 21])
def test_unsupported_opset(tmp_path, opset, capsys):
    with pytest.raises(InputError, match=f"opset {opset} is not supported"):
        export_onnx(OFFICIAL_CKPT, tmp_path / "m.onnx", opset=opset, **SMALL)
    assert main(["export", "--checkpoint", str(OFFICIAL_CKPT), "--output", str(tmp_path / "m.onnx"),
                 "--opset", str(opset)]) == 2
    assert "nearest" in capsys.readouterr().err


@pytest.mark.parametrize("height,width,match", [(130, 160, "not a multiple of 8"), (128, 100, "at least 128"),
                                                (96, 96, "at least 128")])
def test_bad_sizes(tmp_path, height, width, match):
    with pytest.raises(InputError, match=match):
        export_onnx(OFFICIAL_CKPT, tmp_path / "m.onnx", height=height, width=width, iters=2)


def test_bad_output_and_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="must end in .onnx"):
        export_onnx(OFFICIAL_CKPT, tmp_path / "m.pb", **SMALL)
    with pytest.raises(CheckpointError, match="not found"):
        export_onnx(tmp_path / "none.pth", tmp_path / "m.onnx", **SMALL)
    with pytest.raises(InputError, match="--checkpoint and --output"):
        main_raise(["export", "--output", str(tmp_path / "m.onnx")])


def main_raise(argv):
    """Run a sub-command like the CLI, but let the DeqflowError through."""
    from deqflow.cli import build_parser

    args = build_parser().parse_args(argv)
    return args._run(args)


def _no_onnx_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.suffix in (".onnx", ".tmp") or p.name.endswith(".tmp")]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(proto, path, *a, **k):
        Path(path).write_bytes(proto.SerializeToString()[:1000])  # a half-written file...
        raise OSError("disk full")  # ...then the failure

    monkeypatch.setattr(exporter.onnx, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(OFFICIAL_CKPT, tmp_path / "m.onnx", layout="split", **SMALL)
    assert _no_onnx_left(tmp_path), list(tmp_path.iterdir())


def test_failed_export_keeps_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    export_onnx(OFFICIAL_CKPT, out, layout="loop", **SMALL)
    before = out.read_bytes()

    original = exporter.build_unrolled

    def broken_build(parts, iters):
        model = original(parts, iters)
        node = next(n for n in model.graph.node if n.input)
        node.input[0] = "does_not_exist"  # an invalid graph: the checks must stop it
        return model

    monkeypatch.setattr(exporter, "build_unrolled", broken_build)
    with pytest.raises(exporter.ExportError, match="invalid"):
        export_onnx(OFFICIAL_CKPT, out, layout="unrolled", **SMALL)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export_split_then_check(tmp_path, capsys):
    out = tmp_path / "flow.onnx"
    assert main(["export", "--checkpoint", str(OFFICIAL_CKPT), "--output", str(out), "--layout", "split", "--height",
                 "128", "--width", "160", "--iters", "3", "--lookup", "grid_sample", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "verified on ONNX Runtime CPU" in text
    parts = split_paths(out)
    assert [p.name for p in parts.values()] == ["flow.encoder.onnx", "flow.step.onnx", "flow.decode.onnx"]
    assert split_paths(parts["decode"]) == parts
    assert main(["export", "--check", str(out)]) == 0  # the base name checks all three parts
    assert capsys.readouterr().out.count(".onnx: OK") == 3
    meta = read_metadata(parts["step"])
    assert meta.iterations == 3 and meta.lookup == "grid_sample" and meta.layout == "split"
    assert not out.exists()


def test_cli_simplify_and_opset18(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert main(["export", "--checkpoint", str(OFFICIAL_CKPT), "--output", str(out), "--layout", "loop", "--height",
                 "128", "--width", "160", "--iters", "2", "--opset", "18", "--simplify", "--no-flow-init"]) == 0
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["image1", "image2"]
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    meta = read_metadata(out)
    assert meta.opset == 18 and not meta.flow_init and meta.inputs == ["image1", "image2"]
    assert os.path.getsize(out) > 0
