"""Integrity of model files and outputs: damaged checkpoints and ONNX files are refused with one line that
names the file and what is wrong, non-finite outputs are an error, and a checkpoint write killed midway
leaves the previous checkpoint loadable and no orphan behind once the next write ran."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deqflow.checkpoint import (
    DIGEST_KEY,
    SHIPPED_CHECKPOINT,
    make_payload,
    read_checkpoint_file,
    split_checkpoint,
    weights_digest,
    write_checkpoint,
)
from deqflow.errors import CheckpointError, FileFormatError, NonFiniteOutputError
from deqflow.fileio import STALE_SECONDS, remove_stale_temps, writer_tag
from deqflow.finite_check import check_finite_outputs, count_nonfinite
from deqflow.onnx_integrity import DIGEST_PROP, record_weights_digest, recorded_digest, verify_onnx_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / SHIPPED_CHECKPOINT


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def load(path) -> tuple[dict, dict | None, dict]:
    return split_checkpoint(read_checkpoint_file(path), str(path))


def small_payload(seed: int = 0, **meta) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
             "bn.num_batches_tracked": torch.tensor(3)}
    return make_payload(state, {"variant": "T"}, meta)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_without_digest_still_loads(tmp_path):
    """Files written before digests existed (deqflow's earlier files, official checkpoints) load unchecked."""
    obj = read_checkpoint_file(SHIPPED)
    assert DIGEST_KEY in obj["meta"]
    del obj["meta"][DIGEST_KEY]
    legacy = tmp_path / "legacy.pth"
    torch.save(obj, legacy)
    state, config, meta = split_checkpoint(read_checkpoint_file(legacy), str(legacy))
    assert config["variant"] == "T" and state and DIGEST_KEY not in meta


def test_checkpoint_with_randomised_middle_fails_its_crc(tmp_path):
    bad = tmp_path / "damaged.pth"
    shutil.copy(SHIPPED, bad)
    size = bad.stat().st_size
    with open(bad, "r+b") as fh:
        fh.seek(size // 2 - 32768)
        fh.write(np.random.default_rng(0).integers(0, 256, 65536, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint_file(bad)
    msg = one_line(exc)
    assert str(bad) in msg and "corrupt" in msg and "fails its CRC check" in msg and "/data/" in msg


def test_checkpoint_refused_before_the_model_is_built(tmp_path):
    from training.checkpoint import load_model

    bad = tmp_path / "damaged.pth"
    data = bytearray(SHIPPED.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit in a weight
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_model(bad)


def test_checkpoint_with_damaged_member_header(tmp_path):
    import zipfile

    path = write_checkpoint(tmp_path / "a.pth", small_payload())
    data = bytearray(path.read_bytes())
    member = zipfile.ZipFile(path).infolist()[1]
    data[member.header_offset:member.header_offset + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint_file(path)
    assert "header of archive member" in one_line(exc) and member.filename in str(exc.value)


@pytest.mark.parametrize("value, words", [(float("nan"), "holds 1 NaN and 0 Inf"),
                                          (float("inf"), "holds 0 NaN and 1 Inf")])
def test_checkpoint_with_a_non_finite_tensor(tmp_path, value, words):
    payload = small_payload()
    payload["state_dict"]["conv.weight"][1, 2, 0, 0] = value
    del payload["meta"][DIGEST_KEY]  # an older deqflow file: only the finiteness check applies
    path = write_checkpoint(tmp_path / "nan.pth", payload)
    with pytest.raises(CheckpointError) as exc:
        load(path)
    msg = one_line(exc)
    assert str(path) in msg and "tensor 'conv.weight'" in msg and words in msg and "of 288 values" in msg


def test_official_state_dict_with_inf_is_refused(tmp_path):
    state = {"module.fnet.conv1.weight": torch.zeros(4, 3), "module.fnet.conv1.bias": torch.full((4,), -np.inf)}
    path = tmp_path / "official.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"tensor 'fnet.conv1.bias' holds 0 NaN and 4 Inf"):
        load(path)


def test_digest_recorded_and_verified(tmp_path):
    payload = small_payload()
    assert payload["meta"][DIGEST_KEY] == weights_digest(payload["state_dict"])
    path = write_checkpoint(tmp_path / "ok.pth", payload)
    state, _, meta = load(path)
    assert meta[DIGEST_KEY] == weights_digest(state)


def test_digest_mismatch_after_editing_a_tensor(tmp_path):
    path = write_checkpoint(tmp_path / "edited.pth", small_payload())
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["conv.bias"][0] += 1e-3  # finite, and re-saved: every CRC is valid
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as exc:
        load(path)
    msg = one_line(exc)
    assert str(path) in msg and "modified or damaged" in msg and "recorded digest" in msg and DIGEST_KEY in msg


def test_digest_ignores_dict_order_and_memory_layout_but_not_shape():
    payload = small_payload()
    state = payload["state_dict"]
    reordered = dict(reversed(list(state.items())))
    transposed = dict(state, **{"conv.weight": state["conv.weight"].transpose(0, 1).contiguous().transpose(0, 1)})
    assert weights_digest(reordered) == weights_digest(state) == weights_digest(transposed)
    reshaped = dict(state, **{"conv.bias": state["conv.bias"].reshape(2, 4)})
    assert weights_digest(reshaped) != weights_digest(state)
    prefixed = make_payload({"module." + k: v for k, v in state.items()}, {"variant": "T"})
    assert prefixed["meta"][DIGEST_KEY] == payload["meta"][DIGEST_KEY]


class _RunsCode:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("call, name", [((print, ("must never run",)), "print"),
                                        ((os.system, ("echo must never run",)), "system")])
def test_zipped_pickle_with_code_is_refused_not_called_corrupt(tmp_path, call, name):
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(call)}, path)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint_file(path)
    msg = one_line(exc)
    assert "refuses to unpickle" in msg and "GLOBAL" in msg and name in msg
    assert "corrupt" not in msg and "\x1b" not in msg


def test_folder_given_as_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        read_checkpoint_file(tmp_path)


# ------------------------------------------------------------------ killed checkpoint writes
_KILLED_WRITER = """
import io, sys, time
import torch
from deqflow.checkpoint import make_payload, write_checkpoint

real_save = torch.save

def half_then_hang(obj, target):  # torch.save that is killed halfway through the file
    buf = io.BytesIO()
    real_save(obj, buf)
    with open(target, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
    print("half written", flush=True)
    time.sleep(600)

torch.save = half_then_hang
state = {"w": torch.randn(512, 1024)}
write_checkpoint(sys.argv[1], make_payload(state, {"variant": "T"}))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_during_write_keeps_previous_checkpoint_and_next_write_cleans_up(tmp_path):
    target = tmp_path / "last.pth"
    write_checkpoint(target, small_payload(seed=1, step=100))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "half written", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    orphans = list(tmp_path.glob(".last.pth.*.tmp*"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0

    state, _, meta = load(target)  # the previous checkpoint, intact and digest-verified
    assert meta["step"] == 100 and set(state) == {"conv.weight", "conv.bias", "bn.num_batches_tracked"}

    write_checkpoint(target, small_payload(seed=2, step=200))
    assert not list(tmp_path.glob(".*.tmp*")), "the orphaned temp file of the killed writer is still there"
    assert load(target)[2]["step"] == 200


def test_temp_files_of_live_writers_and_recent_foreign_ones_are_kept(tmp_path):
    target = tmp_path / "last.pth"
    host = writer_tag().split("-")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".last.pth.{host}-{sleeper.pid}.abcd1234.tmp.pth"
        own = tmp_path / f".last.pth.{writer_tag()}.ef015678.tmp.pth"
        other_host_recent = tmp_path / ".last.pth.0badc0de-1.12345678.tmp.pth"
        other_host_old = tmp_path / ".last.pth.0badc0de-2.12345678.tmp.pth"
        unrelated = tmp_path / f".other.pth.{host}-{sleeper.pid}.abcd1234.tmp.pth"
        for p in (live, own, other_host_recent, other_host_old, unrelated):
            p.write_bytes(b"partial")
        old = os.stat(other_host_old).st_mtime - STALE_SECONDS - 60
        os.utime(other_host_old, (old, old))
        removed = remove_stale_temps(target)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert removed == [other_host_old]
    assert live.exists() and own.exists() and other_host_recent.exists() and unrelated.exists()
    remove_stale_temps(target)  # the sleeper is dead now: its temp file is an orphan
    assert not live.exists() and unrelated.exists()


def test_a_run_folder_is_cleaned_of_every_orphan(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = writer_tag().split("-")[0]
    orphans = [tmp_path / f".{name}.{host}-{dead.pid}.a1b2c3d4.tmp{Path(name).suffix}"
               for name in ("last.pth", "best.pt", "model.onnx")]
    kept = [tmp_path / ".model.onnx.a1b2c3d4.tmp", tmp_path / "last.pth.tmp", tmp_path / "notes.txt"]
    for p in orphans + kept:
        p.write_bytes(b"partial")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(orphans)
    assert all(p.exists() for p in kept)


# ------------------------------------------------------------------ ONNX files
def _tiny_onnx() -> onnx.ModelProto:
    """A Conv whose weight is 18 KiB, then a Loop whose body adds its own initializer, plus a Constant."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "conv.weight")
    step = numpy_helper.from_array(np.full((1, 32, 1, 1), 0.5, np.float32), "body.step")
    body = helper.make_graph(
        [helper.make_node("Add", ["x_in", "body.step"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)],
        initializer=[step])
    nodes = [helper.make_node("Conv", ["image", "conv.weight"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Constant", [], ["trips"], name="trips",
                              value=numpy_helper.from_array(np.array(3, np.int64))),
             helper.make_node("Constant", [], ["scale"], name="scale",
                              value=numpy_helper.from_array(np.array([2.0], np.float32))),
             helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("Loop", ["trips", "cond", "feat"], ["looped"], name="solver", body=body),
             helper.make_node("Mul", ["looped", "scale"], ["out"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 32, 8, 8])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)
    return path


@pytest.fixture
def exported(tmp_path) -> Path:
    """A tiny model saved as `deqflow export` would: with the weights digest in its metadata_props."""
    model = _tiny_onnx()
    digest = record_weights_digest(model)
    assert recorded_digest(model) == digest and record_weights_digest(model) == digest  # replaced, not added
    assert [p.key for p in model.metadata_props] == [DIGEST_PROP]
    return _save(model, tmp_path / "model.onnx")


def _rot(path: Path, start: int, payload: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[start:start + len(payload)] = payload
    path.write_bytes(bytes(data))
    return path


def _weight_offset(path: Path, name: str = "conv.weight") -> int:
    model = onnx.load(path)
    raw = next(t for t in model.graph.initializer if t.name == name).raw_data
    offset = path.read_bytes().find(raw)
    assert offset > 0 and len(raw) > 8192 + 2048
    return offset


def test_intact_export_verifies_and_returns_its_digest(exported):
    assert verify_onnx_file(exported) == recorded_digest(onnx.load(exported))


def test_onnx_without_digest_gets_the_finiteness_check_only(tmp_path):
    path = _save(_tiny_onnx(), tmp_path / "foreign.onnx")
    assert len(verify_onnx_file(path)) == 64


def test_bit_rot_with_random_bytes_gives_a_non_finite_initializer(exported):
    start = _weight_offset(exported) + 1024
    _rot(exported, start, np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(exported)
    msg = one_line(exc)
    assert str(exported) in msg and "is damaged" in msg and "initializer 'conv.weight'" in msg and "NaN" in msg


def test_bit_rot_with_finite_values_is_caught_by_the_digest(exported):
    start = _weight_offset(exported) + 1024
    finite = np.random.default_rng(1).uniform(-1, 1, 2048).astype(np.float32).tobytes()
    _rot(exported, start, finite)
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(exported)
    msg = one_line(exc)
    assert str(exported) in msg and "modified or damaged after export" in msg and DIGEST_PROP in msg


def test_bit_rot_over_the_file_structure_fails_to_parse(exported):
    start = _weight_offset(exported) - 16  # the random bytes also cover the field tags and lengths before it
    _rot(exported, start, np.random.default_rng(2).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(exported)
    assert "is not a readable ONNX model" in one_line(exc) and str(exported) in str(exc.value)


def test_non_finite_initializer_inside_a_loop_body(tmp_path):
    model = _tiny_onnx()
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    body.initializer[0].CopyFrom(numpy_helper.from_array(np.full((1, 32, 1, 1), np.inf, np.float32), "body.step"))
    path = _save(model, tmp_path / "loop.onnx")
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(path)
    assert "initializer 'solver/body/body.step' holds 0 NaN and 32 Inf of 32 values" in one_line(exc)


def test_non_finite_constant_node(tmp_path):
    model = _tiny_onnx()
    const = next(n for n in model.graph.node if n.name == "scale")
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([np.nan], np.float32)))
    path = _save(model, tmp_path / "const.onnx")
    with pytest.raises(FileFormatError, match=r"constant 'scale/value' holds 1 NaN"):
        verify_onnx_file(path)


def test_external_data_is_checked_and_digested(tmp_path):
    model = _tiny_onnx()
    digest = record_weights_digest(model)
    path = _save(model, tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").is_file() and path.stat().st_size < 8192
    assert verify_onnx_file(path) == digest  # the same digest as the inline model
    data = tmp_path / "ext.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100:104] = np.array([np.nan], np.float32).tobytes()
    data.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match=r"ext.onnx is damaged: ONNX initializer 'conv.weight' holds 1 NaN"):
        verify_onnx_file(path)
    data.unlink()
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(path)
    assert "cannot read ONNX initializer 'conv.weight'" in one_line(exc)


def test_missing_and_garbage_onnx_files(tmp_path):
    with pytest.raises(FileFormatError, match="ONNX file not found"):
        verify_onnx_file(tmp_path / "none.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(FileFormatError) as exc:
        verify_onnx_file(garbage)
    assert "is not a readable ONNX model" in one_line(exc)


def test_integrity_modules_import_and_run_without_torch(exported):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import deqflow.checkpoint, deqflow.finite_check\n"
            "from deqflow.onnx_integrity import verify_onnx_file\n"
            f"print(verify_onnx_file({str(exported)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == recorded_digest(onnx.load(exported))


# ------------------------------------------------------------------ outputs
def test_finite_outputs_pass():
    check_finite_outputs({"flow": np.zeros((1, 2, 8, 8), np.float32), "residual": np.array([0.1]),
                          "iterations": np.array([3]), "extra": None}, "model.onnx", "ab" * 32)


def test_non_finite_outputs_are_an_error_naming_model_digest_and_counts():
    flow = np.zeros((1, 2, 8, 8), np.float32)
    flow[0, 0, :3, 0] = np.nan
    flow[0, 1, 0, 0] = -np.inf
    residual = np.array([np.nan], np.float32)
    with pytest.raises(NonFiniteOutputError) as exc:
        check_finite_outputs({"flow": flow, "residual": residual, "flow_low": np.ones(4, np.float16)},
                             "runs/model.onnx", "0123456789abcdef" * 4, where="frame 7")
    msg = one_line(exc)
    assert msg.startswith("runs/model.onnx (weights 0123456789ab) produced non-finite output for frame 7")
    assert "flow has 3 NaN and 1 Inf of 128 values" in msg and "residual has 1 NaN and 0 Inf of 1 values" in msg
    assert "flow_low" not in msg and "Nothing was written" in msg


def test_count_nonfinite():
    assert count_nonfinite(np.array([1.0, 2.0])) is None
    assert count_nonfinite(np.array([1, 2])) is None
    assert count_nonfinite(np.array([np.nan, np.inf, -np.inf, 1.0])) == (1, 2)
    assert count_nonfinite(np.full(10, 60000, np.float16)) is None  # the float16 sum would overflow
    assert count_nonfinite(np.array([1 + 1j, complex(np.nan, 0)])) == (1, 0)
