"""The `deqflow` command line: help without PyTorch, info, infer on a real photographed pair, error
handling, demo with and without a checkpoint."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deqflow.cli import main
from deqflow.flow_io import read_flo, write_flow
from deqflow.image_io import write_image
from training.checkpoint import save_model
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.model.deq_flow import DEQFlow

ROOT = Path(__file__).resolve().parents[1]
DEQFLOW = Path(sys.executable).with_name("deqflow")
COMMANDS = ("demo", "infer", "info", "train", "evaluate")



@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(variant="T", encoder_dims=(16, 24, 32), deq=DEQConfig(f_solver="fixed_point", f_max_iter=4))
    path = tmp_path_factory.mktemp("ckpt") / "tiny-T.pth"
    save_model(path, DEQFlow(cfg), {"stage": "test"})
    return path


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory):
    """A 128x160 crop of the Middlebury motorcycle pair (real photographs) and its ground truth as flow."""
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    rows, cols = slice(200, 328), slice(300, 460)
    base = tmp_path_factory.mktemp("pair")
    write_image(base / "left.png", np.ascontiguousarray(left[rows, cols]))
    write_image(base / "right.png", np.ascontiguousarray(right[rows, cols]))
    d = disp[rows, cols]
    valid = np.isfinite(d)
    flow = np.stack([np.where(valid, -d, 0), np.zeros_like(d)], axis=-1).astype(np.float32)
    write_flow(base / "gt.flo", flow, valid)
    return base


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


NO_TORCH = """
import sys

sys.modules["torch"] = None  # `import torch` now fails as it does where PyTorch is not installed
import deqflow.cli

deqflow.cli.build_parser()
print("torch imported:", sys.modules["torch"] is not None)
print("exit", deqflow.cli.main(sys.argv[1:]))
"""


def _without_torch(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)


def test_help_works_without_torch():
    help_run = _without_torch("--help")
    assert help_run.returncode == 0, help_run.stderr
    assert "torch imported: False" in help_run.stdout and "exit 0" in help_run.stdout
    for name in COMMANDS:
        assert name in help_run.stdout


@pytest.mark.parametrize("verb", ["train", "evaluate", "export", "info", "demo", "infer", "compare", "bench", "build"])
def test_every_verb_help_works_without_torch(verb):
    run = _without_torch(verb, "--help")
    assert run.returncode == 0 and "exit 0" in run.stdout and "Traceback" not in run.stderr, run.stderr
    assert f"usage: deqflow {verb}" in run.stdout and "torch imported: False" in run.stdout


@pytest.mark.parametrize("argv", [
    ["train", "--num-steps", "1"],
    ["train", "--tiny", "--f_thres", "4"],  # model flags are listed only with PyTorch: still the install message
    ["evaluate", "--checkpoint", "x.pth", "--dataset", "synthetic"],
    ["export", "--checkpoint", "x.pth", "--output", "x.onnx"],
    ["info", "x.pth"],
    ["demo"],
])
def test_torch_verbs_without_torch_say_what_to_install(argv):
    run = _without_torch(*argv)
    assert run.returncode == 0 and "exit 2" in run.stdout, run.stderr  # main returned 2
    assert "Traceback" not in run.stderr
    assert run.stderr.strip() == (f"deqflow {argv[0]}: error: this command needs PyTorch (pip install torch), "
                                  "which is not installed here")


def test_torch_free_paths_without_torch(real_pair, tmp_path):
    """export --check needs no PyTorch; infer/compare with a checkpoint name the torch backend's install."""
    check = _without_torch("export", "--check", str(tmp_path / "missing.onnx"))
    assert "exit 2" in check.stdout and "Traceback" not in check.stderr
    assert "ONNX file not found" in check.stderr
    infer = _without_torch("infer", "--checkpoint", "x.pth", "--image1", str(real_pair / "left.png"), "--image2",
                           str(real_pair / "right.png"), "--output", str(tmp_path / "o"))
    assert "exit 2" in infer.stdout and "Traceback" not in infer.stderr
    assert len(infer.stderr.strip().splitlines()) == 1 and "pip install torch" in infer.stderr
    assert not (tmp_path / "o").exists()


def test_console_script_help_and_train_help():
    top = subprocess.run([str(DEQFLOW), "--help"], env=_env(), capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and all(name in top.stdout for name in COMMANDS)
    train = subprocess.run([str(DEQFLOW), "train", "--help"], env=_env(), capture_output=True, text=True,
                           timeout=60)
    assert train.returncode == 0
    for flag in ("--stage", "--resume", "--tensorboard", "--tiny", "--encoder-dims", "--f_thres", "--n_losses",
                 "--phantom_grad"):
        assert flag in train.stdout


def test_info_on_the_official_fixture(official_T_path, capsys):
    assert main(["info", str(official_T_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "T"
    assert abs(info["parameters"] - 2.491e6) < 1e3  # the official --tiny count
    assert info["model_config"]["wnorm"] is True
    assert info["meta"]["source_format"] == "official"


def test_infer_on_a_real_pair(tiny_checkpoint, real_pair, tmp_path, capsys):
    out = tmp_path / "infer"
    rc = main(["infer", "--checkpoint", str(tiny_checkpoint), "--image1", str(real_pair / "left.png"),
               "--image2", str(real_pair / "right.png"), "--output", str(out), "--iters", "3",
               "--gt", str(real_pair / "gt.flo")])
    assert rc == 0
    printed = capsys.readouterr().out
    iterations = int(re.search(r"(\d+) solver iterations", printed).group(1))
    assert 1 <= iterations <= 3
    assert re.search(r"EPE \d+\.\d+ px \(zero flow: \d+\.\d+ px\)", printed)
    for name in ("flow.flo", "flow.png", "panel.png", "residual.png", "error.png", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    flow = read_flo(out / "flow.flo")
    assert flow.shape == (128, 160, 2) and np.isfinite(flow).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == iterations and summary["size"] == [128, 160]
    # the zero-flow EPE of the summary is the mean |gt| over the valid (finite-disparity) pixels
    from skimage import data

    d = data.stereo_motorcycle()[2][200:328, 300:460]
    assert summary["zero_flow_epe"] == pytest.approx(float(np.abs(d[np.isfinite(d)]).mean()), rel=1e-5)


def test_infer_with_a_wrong_image_path_fails_in_one_line(tiny_checkpoint, real_pair, tmp_path):
    proc = subprocess.run([str(DEQFLOW), "infer", "--checkpoint", str(tiny_checkpoint),
                           "--image1", str(tmp_path / "nope.png"), "--image2", str(real_pair / "right.png"),
                           "--output", str(tmp_path / "o")], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deqflow infer: error:") and "nope.png" in lines[0]
    assert not (tmp_path / "o").exists()


def test_demo_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    import training.commands.demo as demo

    monkeypatch.chdir(tmp_path)  # no checkpoints/ here, and the shipped name is not in the checkout either
    monkeypatch.setattr(demo, "DEFAULT_CHECKPOINT", "checkpoints/not-shipped-in-this-test.pth")
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not-shipped-in-this-test.pth is not in this checkout" in err[0]
    assert not (tmp_path / "outputs").exists()


def test_the_shipped_checkpoint_is_in_the_repository():
    """make demo, the export parity tests and the golden regression tests all run on it."""
    from training.checkpoint import load_model
    from training.commands.demo import DEFAULT_CHECKPOINT, shipped_checkpoint

    path = shipped_checkpoint()
    assert path is not None, f"{DEFAULT_CHECKPOINT} is missing"
    model, meta = load_model(path)
    assert model.cfg.variant == "T" and meta["stage"] == "synthetic"
    assert [p["phase"] for p in meta["training_phases"]] == [1, 2]
    assert path.stat().st_size < 8_000_000


def test_demo_with_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--iters", "2"]) == 0
    printed = capsys.readouterr().out
    assert "DEQ-Flow-T" in printed and "Middlebury motorcycle 741x500" in printed
    epe = float(re.search(r"EPE (\d+\.\d+) px", printed).group(1))
    assert 0 < epe < 500
    for name in ("error.png", "flow.png", "flow.flo", "panel.png"):
        assert (out / name).is_file(), name
    assert read_flo(out / "flow.flo").shape == (500, 741, 2)
