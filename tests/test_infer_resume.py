"""`deqflow infer` on sequences never gives a silent wrong answer: a rerun resumes only the run its manifest
describes (same model, settings and input), --overwrite recomputes, a killed run resumes exactly after its
finished frames with no temporary file left, and bad paths, ground truth or videos are refused before any
work. Through the real CLI on the committed tiny ONNX export (64x96 frames), with small synthetic videos."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_ONNX, TINY_ONNX_DIR, TINY_ONNX_SIZE, subprocess_env

H, W = TINY_ONNX_SIZE


def write_video(path: Path, frames: int, seed: int = 0) -> Path:
    """A small MJPG video of a smooth random texture drifting right (64x96)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = (cv2.resize(rng.random((16, 24, 3)).astype(np.float32), (W, H)) * 255).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(frames):
        writer.write(np.ascontiguousarray(np.roll(base, (i % 3, 2 * i), axis=(0, 1))))
    writer.release()
    return path


def infer(*args, model: Path = TINY_ONNX) -> int:
    from deqflow.cli import main

    return main(["infer", "--model", str(model), "--threads", "1", *map(str, args)])


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*.tmp*")]


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def video(tmp_path) -> Path:
    return write_video(tmp_path / "v.avi", 5)


def test_resume_with_identical_settings_skips_exactly_the_finished_frames(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer("--video", video, "--output", out, "--max-frames", "2") == 0  # "interrupted" after two frames
    first = {p.name: p.stat().st_mtime_ns for p in (out / "flow").iterdir()}
    assert sorted(first) == ["000000.flo", "000001.flo"]
    assert infer("--video", video, "--output", out) == 0
    assert "2 frame(s) computed, 2 already done" in capsys.readouterr().out
    s = summary_of(out)
    assert s["resumed"] and s["reused"] == ["000000", "000001"] and s["computed"] == ["000002", "000003"]
    assert s["frames_computed"] == 2 and s["frames_reused"] == 2 and len(s["iterations_per_frame"]) == 2
    assert {p.name: p.stat().st_mtime_ns for p in (out / "flow").iterdir() if p.name in first} == first
    log = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["name"] for r in log] == ["000000", "000001", "000002", "000003"]  # one line per frame
    assert infer("--video", video, "--output", out) == 0  # everything done: nothing computed
    assert summary_of(out)["computed"] == [] and summary_of(out)["frames_reused"] == 4
    assert infer("--video", video, "--output", out, "--max-frames", "1") == 0  # the other frames' lines stay
    assert summary_of(out)["reused"] == ["000000"] and len((out / "frames.jsonl").read_text().splitlines()) == 4


def other_model(tmp_path: Path) -> Path:
    """A copy of the tiny split export with one encoder weight changed (and its digest re-recorded)."""
    import onnx
    from onnx import numpy_helper

    from deqflow.onnx_integrity import record_weights_digest

    folder = tmp_path / "other"
    folder.mkdir()
    for part in TINY_ONNX_DIR.glob(f"{TINY_ONNX.stem}.*.onnx"):
        shutil.copy(part, folder / part.name)
    enc = folder / f"{TINY_ONNX.stem}.encoder.onnx"
    model = onnx.load(str(enc))
    init = next(t for t in model.graph.initializer if numpy_helper.to_array(t).size > 8)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    record_weights_digest(model)
    onnx.save(model, str(enc))
    return folder / TINY_ONNX.name


@pytest.mark.parametrize("change, words", [
    ("model", ["model (weights", "differs"]),
    ("settings", ["solver setting max_iter (4, now 3)"]),
    ("options", ["option pad_mode"]),
    ("video", ["input video", "sha256"]),
])
def test_resume_with_anything_else_is_refused_naming_the_difference(video, tmp_path, capsys, change, words):
    out = tmp_path / "out"
    assert infer("--video", video, "--output", out, "--max-frames", "2") == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    args, model = ["--video", video, "--output", out], TINY_ONNX
    if change == "model":
        model = other_model(tmp_path)
    elif change == "settings":
        args += ["--iters", "3"]
    elif change == "options":
        args += ["--pad-mode", "kitti"]
    else:
        args[1] = write_video(tmp_path / "v2.avi", 5, seed=1)
    assert infer(*args, model=model) == 2
    one_line_error(capsys, "holds results of another run", "--overwrite", *words)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_of_a_folder_whose_frame_changed_is_refused(tmp_path, capsys):
    from deqflow.image_io import write_image
    from runtime.preprocessing import frame_source

    frames = tmp_path / "frames"
    for f in frame_source(write_video(tmp_path / "v.avi", 3)):
        write_image(frames / f"{f.index:03d}.png", f.rgb)
    out = tmp_path / "out"
    assert infer("--folder", frames, "--output", out) == 0
    write_image(frames / "001.png", np.zeros((H, W, 3), np.uint8))
    capsys.readouterr()
    assert infer("--folder", frames, "--output", out) == 2
    one_line_error(capsys, "input frames changed", "001.png")


def test_overwrite_recomputes_everything(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer("--video", video, "--output", out) == 0
    assert infer("--video", video, "--output", out, "--iters", "3", "--overwrite") == 0
    s = summary_of(out)
    assert s["frames_computed"] == 4 and s["reused"] == [] and not s["resumed"]
    assert s["iterations_per_frame"] == [3, 3, 3, 3] and s["settings"]["max_iter"] == 3
    assert len((out / "frames.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "manifest.json").read_text())["settings"]["max_iter"] == 3


def test_results_without_a_manifest_are_not_resumed(video, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "flow").mkdir(parents=True)
    (out / "flow" / "000000.flo").write_bytes(b"old")
    assert infer("--video", video, "--output", out) == 2
    one_line_error(capsys, "without a manifest.json", "--overwrite")


def test_sigkill_during_video_inference_then_resume(tmp_path):
    video = write_video(tmp_path / "long.avi", 40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deqflow.cli", "infer", "--model", str(TINY_ONNX), "--video", str(video),
           "--output", str(out), "--iters", "60", "--tol", "0", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        log = out / "frames.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: kill it mid-sequence
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(json.loads(line)["name"] for line in (out / "frames.jsonl").read_text().splitlines()
                      if line.endswith("}") and all((out / d / f"{json.loads(line)['name']}{x}").is_file()
                                                    for d, x in (("flow", ".flo"), ("color", ".png"))))
    assert len(finished) >= 2
    from deqflow.fileio import writer_tag

    host = writer_tag().split("-")[0]
    orphan = out / "flow" / f".{39 - 1:06d}.flo.{host}-{proc.pid}.0123abcd.tmp.flo"  # as the killed writer leaves
    orphan.write_bytes(b"partial")
    run = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    s = summary_of(out)
    assert s["reused"] == finished and len(s["computed"]) == 39 - len(finished)
    assert not set(s["computed"]) & set(finished)
    assert temporaries(out) == []
    names = [json.loads(line)["name"] for line in (out / "frames.jsonl").read_text().splitlines()]
    assert names == [f"{i:06d}" for i in range(39)]
    assert len(list((out / "flow").iterdir())) == 39 and len(list((out / "color").iterdir())) == 39


def test_output_that_is_an_existing_file(video, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert infer("--video", video, "--output", target) == 2
    one_line_error(capsys, "--output", "existing file")
    assert target.read_text() == "x"


def test_video_out_inside_a_file_path(video, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "out"
    assert infer("--video", video, "--output", out, "--video-out", tmp_path / "afile" / "flow.avi") == 2
    one_line_error(capsys, "--video-out", "is a file")
    assert not out.exists()


def test_video_out_with_an_unknown_extension_is_refused_first(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer("--video", video, "--output", out, "--video-out", tmp_path / "flow.webm") == 2
    one_line_error(capsys, "--video-out", ".webm", ".mp4")
    assert not out.exists()


def test_video_out_is_relative_to_the_current_directory(video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert infer("--video", "v.avi", "--output", "o_vo", "--video-out", "o_vo/flow.avi") == 0
    assert (tmp_path / "o_vo" / "flow.avi").stat().st_size > 0 and not (tmp_path / "o_vo" / "o_vo").exists()
    assert summary_of(tmp_path / "o_vo")["video"] == str(Path("o_vo") / "flow.avi")


def test_ground_truth_of_the_wrong_size(tmp_path, capsys):
    from deqflow.flow_io import write_flo
    from deqflow.image_io import write_image

    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.zeros((H, W, 3), np.uint8))
    write_flo(tmp_path / "gt.flo", np.zeros((H // 2, W // 2, 2), np.float32))
    out = tmp_path / "out"
    assert infer("--image1", tmp_path / "a.png", "--image2", tmp_path / "b.png", "--gt", tmp_path / "gt.flo",
                 "--output", out) == 2
    one_line_error(capsys, "--gt", f"{H // 2}x{W // 2}", f"{H}x{W}")
    assert not out.exists()


@pytest.mark.parametrize("codec, span, words", [
    ("MJPG", (0.3, 0.6), ["of the 40 frames it announces", "FFmpeg reports"]),  # decoding stops early
    ("mp4v", (0.3, 0.35), ["its 40 frames decode", "FFmpeg reports"]),  # FFmpeg conceals the damage
])
def test_a_damaged_video_is_refused_before_any_work(tmp_path, capsys, codec, span, words):
    import cv2

    good = tmp_path / ("v.avi" if codec == "MJPG" else "v.mp4")
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*codec), 10.0, (W, H))
    base = (cv2.resize(np.random.default_rng(0).random((16, 24, 3)).astype(np.float32), (W, H)) * 255)
    for i in range(40):
        writer.write(np.ascontiguousarray(np.roll(base.astype(np.uint8), (i % 3, 2 * i), axis=(0, 1))))
    writer.release()
    data = bytearray(good.read_bytes())
    a, b = int(len(data) * span[0]), int(len(data) * span[1])
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = good.with_name("bad" + good.suffix)
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert infer("--video", bad, "--output", out) == 2
    one_line_error(capsys, "is damaged", "--folder", *words)
    assert not out.exists()


def test_a_late_summary_failure_keeps_the_frames_and_prints_the_summary(video, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "summary.json").mkdir(parents=True)  # summary.json cannot be written
    assert infer("--video", video, "--output", out) == 2
    captured = capsys.readouterr()
    assert '"frames_computed": 4' in captured.out and len(list((out / "flow").iterdir())) == 4
    assert "summary is printed above" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_a_late_pair_report_failure_saves_the_flow_elsewhere(tmp_path, capsys):
    from deqflow.flow_io import read_flo
    from deqflow.image_io import write_image

    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.zeros((H, W, 3), np.uint8))
    out = tmp_path / "out"
    (out / "panel.png").mkdir(parents=True)  # a late write of the report fails
    assert infer("--image1", tmp_path / "a.png", "--image2", tmp_path / "b.png", "--output", out) == 2
    err = one_line_error(capsys, "cannot write the report", "saved in")
    kept = Path(err.split("saved in ")[1].split(" instead")[0])
    try:
        assert read_flo(kept / "flow.flo").shape == (H, W, 2) and (kept / "summary.json").is_file()
    finally:
        shutil.rmtree(kept)


def test_too_small_images_are_described_in_cli_terms(tmp_path, capsys):
    from deqflow.image_io import write_image

    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.zeros((20, 30, 3), np.uint8))
    assert infer("--image1", tmp_path / "a.png", "--image2", tmp_path / "b.png", "--output", tmp_path / "o") == 2
    err = one_line_error(capsys, "20x30", "at least 32x32")
    assert "InputPadder" not in err and "24x32" not in err


def test_help_states_the_path_rule_and_the_split_base_name(capsys):
    from deqflow.cli import main

    assert main(["infer", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "relative to the current directory" in text and "base name" in text
    # the split export is named by its base name in every test above: TINY_ONNX has no file of its own
    assert not TINY_ONNX.exists() and TINY_ONNX.with_suffix(".step.onnx").exists()
