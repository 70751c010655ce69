"""deqflow.fileio: targets are replaced only by complete files, all at once, and no temporary file stays."""

import pytest

from deqflow.fileio import atomic_outputs, atomic_write_bytes, temporary_sibling


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["a.bin"]


def test_several_outputs_are_renamed_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"old a")
    with pytest.raises(OSError, match="disk full"):
        with atomic_outputs(a, b) as (ta, tb):
            ta.write_bytes(b"new a")
            raise OSError("disk full")  # before b is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"] and a.read_bytes() == b"old a"
    with atomic_outputs(a, b) as (ta, tb):
        ta.write_bytes(b"new a")
        tb.write_bytes(b"new b")
        assert not b.exists()  # nothing is visible before the block completes
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def test_temporary_names_are_hidden_unique_and_keep_the_suffix(tmp_path):
    first, second = temporary_sibling(tmp_path / "flow.mp4"), temporary_sibling(tmp_path / "flow.mp4")
    assert first != second and first.parent == tmp_path
    assert first.name.startswith(".flow.") and first.suffix == ".mp4"
