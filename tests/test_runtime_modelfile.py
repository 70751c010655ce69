"""The shared model-file contracts without a model: image shapes and profiles (deqflow.shapes), the typed
metadata schema (deqflow.model_metadata), engine sets named by their base name, device-memory selection."""

import json

import pytest
from fakes import image_profiles

from deqflow.errors import FileFormatError, InputError, MissingDependencyError
from deqflow.model_metadata import ModelMetadata, split_part_names
from deqflow.shapes import ImageShape, ShapeHints, parse_shape_arg, parse_size


def test_one_shape_parser_for_every_form():
    assert ImageShape.parse("440x1024") == ImageShape(1, 440, 1024)
    assert ImageShape.parse("2x440x1024") == ImageShape.parse("2x3x440x1024") == ImageShape.parse([2, 3, 440, 1024])
    assert ImageShape.parse("128, 160", default_batch=4) == ImageShape(4, 128, 160)
    assert str(ImageShape(1, 128, 160)) == "1x3x128x160" and ImageShape(2, 128, 160).flow_shape() == [2, 2, 16, 20]
    assert parse_size("128x160") == (128, 160)
    for bad, match in (("128", "must look like"), ("1x4x128x160", "3 channels"), ("0x128", "positive"),
                       ("1x2x3x4x5", "must look like")):
        with pytest.raises(InputError, match=match):
            ImageShape.parse(bad)
    with pytest.raises(InputError, match="HxW"):
        parse_size("1x128x160")
    with pytest.raises(InputError, match="multiples of 8"):
        parse_shape_arg("130x160")


def test_one_profile_builder():
    hints = ShapeHints(ImageShape(1, 128, 128), ImageShape(1, 128, 160), ImageShape(2, 256, 320))
    assert image_profiles([1, 3, 128, 128], [1, 3, 128, 160], [2, 3, 256, 320]) == hints.per_input()
    assert "flow_init" not in hints.per_input(flow_init=False)["opt"]
    assert ShapeHints.static(ImageShape(1, 128, 160)).per_input()["max"]["image1"] == [1, 3, 128, 160]
    with pytest.raises(InputError, match="min <= opt <= max"):
        ShapeHints(hints.max, hints.opt, hints.min).check_order()


def _meta(**changes) -> ModelMetadata:
    return ModelMetadata(**{"variant": "T", "layout": "split", "part": "step", "iterations": 8, **changes})


def test_metadata_schema_is_typed():
    meta = _meta(dynamic=True, shape_hints={"opt": {"image1": [1, 3, 128, 160]}}, context_names=["inp"])
    got = ModelMetadata.from_props(meta.to_props())
    assert got == meta and got.dynamic is True and isinstance(got.iterations, int)
    for key, raw in (("iterations", "eight"), ("dynamic", "maybe"), ("shape_hints", "[1, 2]"), ("parts", '"x"')):
        with pytest.raises(FileFormatError, match=f"deqflow.{key}"):
            ModelMetadata.from_props({**meta.to_props(), f"deqflow.{key}": raw}, "m.onnx")
    with pytest.raises(FileFormatError, match="newer"):
        ModelMetadata.from_props({**meta.to_props(), "deqflow.format_version": "99"})


def test_split_engine_set_by_its_base_name(tmp_path):
    from runtime.modelfile import open_model_file
    from runtime.tensorrt.cache import SIDECAR_FORMAT, split_engine_paths, write_engine

    assert split_part_names("out/m.onnx")["step"] == "m.step.onnx"
    paths = split_engine_paths(tmp_path / "m.plan")
    assert paths["decode"] == tmp_path / "m.decode.plan"
    for part, path in paths.items():
        write_engine(path, b"plan", {"format": SIDECAR_FORMAT, "metadata": _meta(part=part).to_props()})
    file = open_model_file(tmp_path / "m.plan")
    assert file.kind == "engine" and file.is_split and file.parts == paths
    assert file.exported().part == "step" and set(file.metadata) == {"encoder", "step", "decode"}
    (tmp_path / "m.step.plan.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(FileFormatError, match="not a deqflow engine description"):
        open_model_file(tmp_path / "m.plan")


def test_device_memory_choice_errors(monkeypatch):
    import sys

    from runtime.tensorrt.memory import device_memory

    with pytest.raises(InputError, match="memory must be one of"):
        device_memory("opencl")
    for name in ("torch", "cuda", "cuda.bindings", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)  # nothing installed
    with pytest.raises(MissingDependencyError) as exc:
        device_memory("auto")
    assert "cuda-python" in str(exc.value) and "\n" not in str(exc.value)
