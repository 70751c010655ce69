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
from training.deq.config import DEQConfig

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
print("torch imported:", sys.modules.get("torch") is not None)
print("exit", deqflow.cli.main(sys.argv[1:]))
"""


def _without_torch(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], cwd=ROOT, env=subprocess_env(), capture_output=True,
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
    assert run.stderr.strip() == (f"deqflow {argv[0]}: error: this command needs PyTorch (pip install "
                                  "'deqflow[train]'), which is not installed here")


def test_torch_free_paths_without_torch(real_pair, tmp_path):
    """export --check needs no PyTorch; infer/compare with a checkpoint name the torch backend's install."""
    check = _without_torch("export", "--check", str(tmp_path / "missing.onnx"))
    assert "exit 2" in check.stdout and "Traceback" not in check.stderr
    assert "ONNX file not found" in check.stderr
    infer = _without_torch("infer", "--checkpoint", "x.pth", "--image1", str(real_pair / "left.png"), "--image2",
                           str(real_pair / "right.png"), "--output", str(tmp_path / "o"))
    assert "exit 2" in infer.stdout and "Traceback" not in infer.stderr
    assert len(infer.stderr.strip().splitlines()) == 1 and "pip install 'deqflow[train]'" in infer.stderr
    assert not (tmp_path / "o").exists()


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
    import runtime.commands.demo as demo

    monkeypatch.chdir(tmp_path)  # no checkpoints/ here, and the shipped name is not in the checkout either
    monkeypatch.setattr(demo, "DEFAULT_CHECKPOINT", "checkpoints/not-shipped-in-this-test.pth")
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not-shipped-in-this-test.pth is not in this checkout" in err[0]
    assert not (tmp_path / "outputs").exists()


def test_the_shipped_checkpoint_is_in_the_repository():
    """make demo, the export parity tests and the golden regression tests all run on it."""
    from runtime.commands.demo import DEFAULT_CHECKPOINT, shipped_checkpoint
    from training.checkpoint import load_model

    path = shipped_checkpoint()
    assert path is not None, f"{DEFAULT_CHECKPOINT} is missing"
    model, meta = load_model(path)
    assert model.cfg.variant == "T" and meta["stage"] == "synthetic"
    assert [p["phase"] for p in meta["training_phases"]] == [1, 2, 3, 4, 5, 6, 7]
    presets = [p.get("synthetic_preset") for p in meta["training_phases"][2:]]
    assert presets == ["realistic", "realistic-mix", "realistic-mix", "realistic-precise", "realistic-precise"]
    assert meta["stop_rule"]["tol"] == 5e-3 and meta["stop_rule"]["stall_window"] == 10  # docs/stop_rule.md
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


# --- one vocabulary: aliases, defaults in --help, parse-time validation ------------------------------------------


def _parse(*argv: str):
    from deqflow.cli import build_parser

    return build_parser().parse_args(list(argv))


def _settings(*argv: str) -> dict:
    """The parsed options of a verb, without the run hooks."""
    return {k: v for k, v in vars(_parse(*argv)).items() if not k.startswith("_")}


@pytest.mark.parametrize("verb,base", [
    ("evaluate", ["--checkpoint", "c.pth"]),
    ("infer", ["--output", "o"]),
    ("compare", []),
])
def test_official_solver_names_are_aliases(verb, base):
    official = _settings(verb, *base, "--f_eps", "0.01", "--f_solver", "naive_solver", "--f_stop_mode", "rel")
    shared = _settings(verb, *base, "--tol", "0.01", "--solver", "fixed_point", "--stop-mode", "rel")
    assert official == shared
    assert (shared["tol"], shared["solver"], shared["stop_mode"]) == (0.01, "fixed_point", "rel")


def test_runtime_solver_settings_from_either_name():
    from runtime.commands.common import settings_from_args

    a = settings_from_args(_parse("infer", "--output", "o", "--f_eps", "0.01", "--iters", "7"))
    b = settings_from_args(_parse("infer", "--output", "o", "--tol", "0.01", "--iters", "7"))
    assert a == b and a.tol == 0.01 and a.max_iter == 7


def test_export_tolerance_is_the_solver_tolerance():
    values = {_parse("export", flag, "0.02").tol for flag in ("--tol", "--tolerance", "--f_eps")}
    assert values == {0.02}
    assert _parse("export").tol == 0.0  # default: run every iteration


def test_train_keeps_the_official_semantics():
    """--tol/--solver/--stop-mode set the forward solver (f_eps, f_solver, f_stop_mode); --f_thres stays the
    training cap and the stage fills what is not given."""
    from training.deq.args import deq_config_from_args

    official = _parse("train", "--f_eps", "0.01", "--f_solver", "naive_solver", "--f_stop_mode", "rel",
                      "--f_thres", "12")
    shared = _parse("train", "--tol", "0.01", "--solver", "fixed_point", "--stop-mode", "rel", "--f_thres", "12")
    assert deq_config_from_args(official) == deq_config_from_args(shared)
    cfg = deq_config_from_args(shared)
    assert (cfg.f_tol, cfg.f_solver, cfg.f_stop_mode, cfg.f_max_iter) == (0.01, "fixed_point", "rel", 12)
    plain = _parse("train")
    assert (plain.f_thres, plain.n_losses, plain.phantom_grad) == (None, None, None)  # the stage's
    assert deq_config_from_args(plain) == DEQConfig()


def test_bench_max_slowdown_and_no_tolerance(capsys):
    assert _parse("bench", "--candidate", "torch=c.pth").max_slowdown == 0.15
    assert _parse("bench", "--candidate", "torch=c.pth", "--max-slowdown", "0.3").max_slowdown == 0.3
    # --tolerance is the solver tolerance (export); bench no longer takes it, nor an abbreviation such as --tol
    for flag in ("--tolerance", "--tol"):
        assert main(["bench", "--candidate", "torch=c.pth", flag, "0.3"]) == 2
        assert f"unrecognized arguments: {flag} 0.3" in capsys.readouterr().err


def test_renamed_flags_keep_their_settings():
    """bench --candidate, compare --golden-inputs, triton-repo --instance-kind and build --engine-precision fill
    the settings the old spellings filled."""
    assert _parse("bench", "--candidate", "torch=c.pth", "--candidate", "onnxruntime=m.onnx").backend == \
        ["torch=c.pth", "onnxruntime=m.onnx"]
    assert _parse("compare", "--golden-inputs", "g.npz").inputs == "g.npz"
    assert _parse("compare", "--inputs", "random").inputs == "random"
    assert _parse("triton-repo", "--model", "m.onnx", "--output", "r", "--instance-kind", "cpu").device == "cpu"
    assert _parse("build", "--onnx", "m.onnx", "--output", "m.engine", "--engine-precision", "graph").precision == \
        "graph"
    assert _parse("train", "--batch-size", "3").batch_size == _parse("train", "--batch", "3").batch_size == 3


def _verb_parsers():
    import argparse

    from deqflow.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("verb", ["train", "evaluate", "export", "info", "demo", "infer", "compare", "bench", "build"])
def test_help_states_every_default(verb):
    import argparse

    from deqflow.cli_args import DefaultsHelpFormatter

    parser = _verb_parsers()[verb]
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.required or action.help == argparse.SUPPRESS:
            continue
        formatter = parser.formatter_class(prog=parser.prog)
        formatter.add_argument(action)
        shown = " ".join(formatter.format_help().split())
        assert "(default: " in shown or "default: " in (action.help or ""), shown
        if verb != "build":  # the verbs of this vocabulary say what a None default means
            assert DefaultsHelpFormatter.UNSET not in shown, shown


def test_help_shows_the_values():
    verbs = _verb_parsers()
    assert "(default: 440)" in verbs["export"].format_help() and "(default: 0.0)" in verbs["export"].format_help()
    assert "(default: 0.15)" in verbs["bench"].format_help()
    assert "(default: 0.001)" in verbs["train"].format_help() and "(default: anderson)" in verbs["train"].format_help()
    assert "the model's own" in verbs["infer"].format_help()


@pytest.mark.parametrize("argv,words", [
    (["evaluate", "--checkpoint", "c.pth", "--f_eps", "nan"], "argument --tol/--f_eps: must be a finite number"),
    (["infer", "--output", "o", "--tol", "-1"], "must be a finite number >= 0, got -1"),
    (["infer", "--output", "o", "--iters", "1000000"], "must be between 1 and 10000 iterations, got 1000000"),
    (["infer", "--output", "o", "--threads", "-3"], "argument --threads: must be a whole number >= 0, got -3"),
    (["infer", "--output", "o", "--fps", "inf"], "argument --fps: must be a finite number"),
    (["infer", "--output", "o", "--solver", "newton"], "argument --solver/--f_solver: invalid choice: 'newton'"),
    (["export", "--height", "130"], "argument --height: 130 is not a positive multiple of 8; use --height 128 or 136"),
    (["export", "--width", "4"], "4 is not a positive multiple of 8; use --width 8"),
    (["export", "--batch", "0"], "argument --batch: must be a whole number >= 1, got 0"),
    (["train", "--num-steps", "0"], "argument --num-steps: must be a whole number >= 1, got 0"),
    (["train", "--num-steps", "-3"], "must be a whole number >= 1, got -3"),
    (["train", "--batch-size", "0"], "argument --batch/--batch-size: must be a whole number >= 1"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["train", "--image-size", "130", "128"], "130 is not a positive multiple of 8; use 128 or 136"),
    (["train", "--f_thres", "0"], "argument --f_thres: must be between 1 and 10000"),
    (["bench", "--candidate", "torch=c.pth", "--max-slowdown", "-0.1"], "argument --max-slowdown: must be a finite"),
    (["bench", "--candidate", "torch=c.pth", "--size", "12"], "argument --size: size '12' must look like HxW"),
    (["compare", "--pairs", "0"], "argument --pairs: must be a whole number >= 1, got 0"),
    (["compare", "--inputs", "photos"], "argument --inputs: invalid choice: 'photos'"),
    (["compare", "--golden-inputs", "g.json"], "argument --golden-inputs: must be a .npz file, got 'g.json'"),
    (["infer", "--output", "o", "--device", "gpu"], "argument --device: must be a torch device (cpu, cuda, cuda:N"),
    (["triton-repo", "--model", "m.onnx", "--output", "r", "--max-batch", "0"], "argument --max-batch: must be a "
     "whole number >= 1, got 0"),
    (["triton-repo", "--model", "m.onnx", "--output", "r", "--stream-idle-timeout", "-1"],
     "argument --stream-idle-timeout: must be a finite number > 0"),
    (["export", "--variant", "X"], "argument --variant: invalid choice: 'X'"),
])
def test_bad_settings_are_refused_while_parsing(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"deqflow {argv[0]}: error: ") and words in err, err


@pytest.mark.parametrize("verb", ["infer", "compare", "bench", "build"])
def test_runtime_verbs_parse_without_importing_torch(verb):
    """Only the verb being run builds its options: a runtime verb never imports PyTorch to parse."""
    code = (f"import sys, deqflow.cli; deqflow.cli.main([{verb!r}, '--help']); "
            "print('torch loaded:', 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                         timeout=60)
    assert "torch loaded: False" in run.stdout, run.stderr
