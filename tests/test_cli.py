"""The `deqflow` command line: help without PyTorch, info, infer on a real photographed pair, error
handling, demo with and without a checkpoint."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, blocking_prelude, subprocess_env

from deqflow.cli import main
from deqflow.flow_io import read_flo, write_flow
from deqflow.image_io import write_image

DEQFLOW = Path(sys.executable).with_name("deqflow")
COMMANDS = ("demo", "infer", "info", "train", "evaluate")


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


NO_TORCH = blocking_prelude("torch") + """
import deqflow.cli

deqflow.cli.build_parser()
print("torch imported:", "torch" in sys.modules)
try:
    deqflow.cli.main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code)
"""


def test_help_works_without_torch():
    help_run = subprocess.run([sys.executable, "-c", NO_TORCH, "--help"], cwd=ROOT, env=subprocess_env(),
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr
    assert "torch imported: False" in help_run.stdout and "exit 0" in help_run.stdout
    for name in COMMANDS:
        assert name in help_run.stdout
    # a torch-backed command says what is missing, in one line, instead of a traceback
    train_run = subprocess.run([sys.executable, "-c", NO_TORCH, "train", "--help"], cwd=ROOT, env=subprocess_env(),
                               capture_output=True, text=True, timeout=60)
    assert "exit 2" in train_run.stdout and "Traceback" not in train_run.stderr
    assert "this command needs PyTorch" in train_run.stderr


def test_console_script_help_and_train_help():
    top = subprocess.run([str(DEQFLOW), "--help"], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and all(name in top.stdout for name in COMMANDS)
    train = subprocess.run([str(DEQFLOW), "train", "--help"], env=subprocess_env(), capture_output=True, text=True,
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
                           "--output", str(tmp_path / "o")], env=subprocess_env(), capture_output=True, text=True,
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
    for name in ("error.png", "flow.png", "flow.flo", "panel.png"):
        assert (out / name).is_file(), name
    flow = read_flo(out / "flow.flo")
    assert flow.shape == (500, 741, 2)
    # the printed EPE is the written flow's against the pair's ground truth (-disparity, 0), to its 3 decimals
    from skimage import data

    from deqflow.metrics import flow_metrics

    disp = data.stereo_motorcycle()[2]
    valid = np.isfinite(disp)
    gt = np.stack([np.where(valid, -disp, 0), np.zeros_like(disp)], axis=-1).astype(np.float32)
    assert epe == pytest.approx(flow_metrics(flow, gt, valid)["epe"], abs=5e-4)
