"""Bad inputs through the real command line, every verb: each case gives a clear one-line error (or the right
exit code), never a Python traceback, and names what is wrong in the user's terms.

The cases run `deqflow.cli.main` in this process (stdout/stderr captured); the few whose damaged input reaches a
native library run in a child process, so a crash there cannot take pytest down. The inputs are built once per
module from the tiny fixtures and the shipped checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import SHIPPED_CKPT, TINY_GOLDEN, TINY_ONNX, save_tiny_checkpoint, subprocess_env

from deqflow.cli import main
from deqflow.image_io import write_image

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # permissions do not stop root: read-only cases are moot


class _Exploit:
    """Unpickling this would run a shell command: checkpoints must never execute code."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


def _randomise(data: bytes, start: int, length: int, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    return data[:start] + noise + data[start + length:]


def _bit_rot_onnx(folder: Path) -> Path:
    """A copy of the tiny split export with 8 KiB randomised inside the largest weight of its step graph."""
    import onnx

    stem = TINY_ONNX.name.removesuffix(".onnx")
    for part in ("encoder", "step", "decode"):
        shutil.copy(TINY_ONNX.with_name(f"{stem}.{part}.onnx"), folder / f"{stem}.{part}.onnx")
    step = folder / f"{stem}.step.onnx"
    data = step.read_bytes()
    biggest = max(onnx.load(step).graph.initializer, key=lambda t: len(t.raw_data))
    offset = data.find(biggest.raw_data)
    assert offset > 0 and len(biggest.raw_data) > 16384
    step.write_bytes(_randomise(data, offset + len(biggest.raw_data) // 2 - 4096, 8192))
    return folder / TINY_ONNX.name


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every damaged or unusual input of the table, keyed by a short name."""
    import torch

    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d / "a_folder", "file": d / "a_file.txt", "ro": d / "read_only"}
    f["dir"].mkdir()
    f["file"].write_text("not a folder")
    f["ro"].mkdir()
    f["ro"].chmod(0o555)
    def put(table, key, path, data):
        (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
        table[key] = path

    f["tiny"] = save_tiny_checkpoint(d / "tiny.pth")
    shipped = SHIPPED_CKPT.read_bytes()
    put(f, "corrupt", d / "corrupt.pth", _randomise(shipped, len(shipped) // 2, 64 * 1024))
    put(f, "truncated", d / "truncated.pth", shipped[: len(shipped) // 2])
    put(f, "garbage", d / "garbage.pth", np.random.default_rng(1).bytes(4096))
    put(f, "empty", d / "empty.pth", b"")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": print}, f.setdefault("zip_pickle", d / "zip.pth"))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Exploit()}, f.setdefault("zip_exploit", d / "ze.pth"))
    put(f, "raw_pickle", d / "raw.pth", pickle.dumps(_Exploit(), protocol=2))
    rot = d / "rot"
    rot.mkdir()
    f["rot_onnx"] = _bit_rot_onnx(rot)
    put(f, "trunc_onnx", d / "trunc.onnx", TINY_ONNX.with_name("tiny-T-64x96.step.onnx").read_bytes()[:5000])
    put(f, "garbage_onnx", d / "garbage.onnx", np.random.default_rng(2).bytes(5000))
    put(f, "bad_flo", d / "bad.flo", b"\x89PNG" + bytes(100))
    put(f, "bad_json", d / "baseline.json", "{not json")
    f["other_baseline"] = d / "other.json"
    f["other_baseline"].write_text(json.dumps({"results": [{"label": "some other backend", "size": [64, 96],
                                                            "batch": 1, "latency_ms": {"median": 1.0}}]}))
    rng = np.random.default_rng(3)
    for i in (1, 2):
        write_image(f.setdefault(f"img{i}", d / f"img{i}.png"), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    f["nonexistent"] = d / "missing" / "nothing.pth"
    yield f
    f["ro"].chmod(0o755)


@dataclass
class Case:
    name: str
    argv: list[str]  # {name} is replaced by files[name]
    code: int  # expected exit status
    words: tuple[str, ...] = ()  # key words of the message (case-insensitive), in stdout or stderr
    subprocess: bool = False  # run in a child process (the input reaches a native library)
    read_only: bool = False  # needs permissions to matter (skipped as root)


TINY = str(TINY_ONNX)
ORT = f"onnxruntime={TINY}"
BENCH = ["bench", "--runs", "1", "--warmup", "0", "--inputs", "random", "--threads", "1"]
PAIR = ["--image1", "{img1}", "--image2", "{img2}"]
COMPARE = ["compare", "--golden", str(TINY_GOLDEN), "--threads", "1"]

CASES = [
    # --- info: every way a checkpoint can be unusable ---------------------------------------------------------
    Case("info: missing checkpoint", ["info", "{nonexistent}"], 2, ("not found",)),
    Case("info: a folder as checkpoint", ["info", "{dir}"], 2, ("is a folder", "not a checkpoint file")),
    Case("info: empty file", ["info", "{empty}"], 2, ("empty", "0 bytes")),
    Case("info: random bytes", ["info", "{garbage}"], 2, ("not a pytorch checkpoint",)),
    Case("info: truncated checkpoint", ["info", "{truncated}"], 2, ("truncated",)),
    Case("info: 64 KiB randomised in the middle", ["info", "{corrupt}"], 2, ("corrupt", "crc")),
    Case("info: zipped pickle with a code reference", ["info", "{zip_pickle}"], 2, ("refuses", "print")),
    Case("info: zipped pickle that runs a command", ["info", "{zip_exploit}"], 2, ("refuses", "system")),
    Case("info: raw pickle that runs a command", ["info", "{raw_pickle}"], 2, ("refuses",)),
    Case("info: a good checkpoint states its format", ["info", "{tiny}"], 0, ('"format": "deqflow"',)),
    # --- evaluate --------------------------------------------------------------------------------------------
    Case("evaluate: missing checkpoint", ["evaluate", "--checkpoint", "{nonexistent}", "--dataset", "synthetic"], 2,
         ("not found",)),
    Case("evaluate: corrupt checkpoint", ["evaluate", "--checkpoint", "{corrupt}", "--dataset", "synthetic"], 2,
         ("crc",)),
    Case("evaluate: --tol nan", ["evaluate", "--checkpoint", "{tiny}", "--tol", "nan"], 2, ("--tol", "finite")),
    Case("evaluate: --f_eps -1", ["evaluate", "--checkpoint", "{tiny}", "--f_eps", "-1"], 2, (">= 0",)),
    Case("evaluate: --iters 1000000", ["evaluate", "--checkpoint", "{tiny}", "--iters", "1000000"], 2,
         ("between 1 and", "--tol")),
    Case("evaluate: --iters 0", ["evaluate", "--checkpoint", "{tiny}", "--iters", "0"], 2, ("between 1 and",)),
    Case("evaluate: --max-samples 0", ["evaluate", "--checkpoint", "{tiny}", "--max-samples", "0"], 2, (">= 1",)),
    Case("evaluate: nothing to evaluate", ["evaluate", "--checkpoint", "{tiny}"], 2, ("nothing to evaluate",)),
    Case("evaluate: --output is a folder", ["evaluate", "--checkpoint", "{tiny}", "--dataset", "synthetic",
                                           "--output", "{dir}"], 2, ("is a folder",)),
    Case("evaluate: --output under a file", ["evaluate", "--checkpoint", "{tiny}", "--dataset", "synthetic",
                                             "--output", "{file}/r.json"], 2, ("is a file",)),
    Case("evaluate: --output in a read-only folder", ["evaluate", "--checkpoint", "{tiny}", "--dataset",
                                                      "synthetic", "--output", "{ro}/r.json"], 2,
         ("cannot write",), read_only=True),
    Case("evaluate: unknown dataset", ["evaluate", "--checkpoint", "{tiny}", "--dataset", "foo"], 2,
         ("unknown evaluation set", "synthetic")),
    Case("evaluate: stereo files missing", ["evaluate", "--checkpoint", "{tiny}", "--stereo", "{nonexistent}",
                                            "{nonexistent}", "{nonexistent}"], 2, ("not found",)),
    # --- train: settings and outputs, refused before any step ----------------------------------------------------
    Case("train: --num-steps 0", ["train", "--num-steps", "0"], 2, ("--num-steps", ">= 1")),
    Case("train: --num-steps -3", ["train", "--num-steps", "-3"], 2, ("--num-steps", ">= 1")),
    Case("train: --batch-size 0", ["train", "--batch-size", "0"], 2, ("--batch-size", ">= 1")),
    Case("train: --lr nan", ["train", "--lr", "nan"], 2, ("--lr", "finite")),
    Case("train: --lr -1", ["train", "--lr", "-1"], 2, ("--lr", "> 0")),
    Case("train: --clip 0", ["train", "--clip", "0"], 2, ("--clip", "> 0")),
    Case("train: --image-size 100 120", ["train", "--image-size", "100", "120"], 2, ("multiple of 8", "96 or 104")),
    Case("train: --f_thres 1000000", ["train", "--f_thres", "1000000"], 2, ("between 1 and",)),
    Case("train: --b_eps nan", ["train", "--b_eps", "nan"], 2, ("--b_eps", "finite")),
    Case("train: --b_thres 0", ["train", "--b_thres", "0"], 2, ("--b_thres", "between 1 and")),
    Case("train: --eval_factor inf", ["train", "--eval_factor", "inf"], 2, ("--eval_factor", "finite")),
    Case("train: --eval_f_thres -2", ["train", "--eval_f_thres", "-2"], 2, ("--eval_f_thres", ">= 0")),
    Case("train: --tau -1", ["train", "--tau", "-1"], 2, ("--tau", "> 0")),
    Case("train: --anderson_m 0", ["train", "--anderson_m", "0"], 2, ("--anderson_m", ">= 1")),
    Case("train: --anderson_lam nan", ["train", "--anderson_lam", "nan"], 2, ("--anderson_lam", "finite")),
    Case("train: --n_losses 0", ["train", "--n_losses", "0"], 2, ("--n_losses", ">= 1")),
    Case("train: --output is a file", ["train", "--num-steps", "1", "--output", "{file}"], 2,
         ("existing file", "not a folder")),
    Case("train: --output under a file", ["train", "--num-steps", "1", "--output", "{file}/run"], 2, ("is a file",)),
    Case("train: --output read-only", ["train", "--num-steps", "1", "--output", "{ro}/run"], 2, ("cannot write",),
         read_only=True),
    Case("train: --resume missing", ["train", "--num-steps", "1", "--tiny", "--output", "{dir}/r1", "--resume",
                                     "{nonexistent}"], 2, ("--resume", "no such checkpoint")),
    Case("train: --resume a folder", ["train", "--num-steps", "1", "--tiny", "--output", "{dir}/r2", "--resume",
                                      "{dir}"], 2, ("is a folder",)),
    Case("train: --init corrupt checkpoint", ["train", "--num-steps", "1", "--output", "{dir}/r3", "--tiny",
                                              "--init", "{corrupt}"], 2, ("crc",)),
    Case("train: dataset folder missing", ["train", "--stage", "chairs", "--tiny", "--num-steps", "1",
                                           "--data-root", "{dir}", "--output", "{dir}/r4"], 2,
         ("does not exist", "FlyingChairs")),
    # --- demo ----------------------------------------------------------------------------------------------------
    Case("demo: missing checkpoint", ["demo", "--checkpoint", "{nonexistent}", "--output", "{dir}/demo1"], 2,
         ("not found",)),
    Case("demo: corrupt checkpoint", ["demo", "--checkpoint", "{corrupt}", "--output", "{dir}/demo2"], 2,
         ("crc",)),
    Case("demo: --output is a file", ["demo", "--checkpoint", "{tiny}", "--output", "{file}"], 2,
         ("existing file",)),
    Case("demo: --output read-only", ["demo", "--checkpoint", "{tiny}", "--output", "{ro}/demo"], 2,
         ("cannot write",), read_only=True),
    Case("demo: --iters 0", ["demo", "--iters", "0"], 2, ("between 1 and",)),
    # --- export ----------------------------------------------------------------------------------------------------
    Case("export: no checkpoint", ["export", "--output", "{dir}/m.onnx"], 2, ("needs --checkpoint",)),
    Case("export: missing checkpoint", ["export", "--checkpoint", "{nonexistent}", "--output", "{dir}/m.onnx"], 2,
         ("not found",)),
    Case("export: corrupt checkpoint", ["export", "--checkpoint", "{corrupt}", "--output", "{dir}/c.onnx"], 2,
         ("crc",)),
    Case("export: --height 100", ["export", "--height", "100"], 2, ("--height 96 or 104",)),
    Case("export: --batch 0", ["export", "--batch", "0"], 2, (">= 1",)),
    Case("export: --iters 1000000", ["export", "--iters", "1000000"], 2, ("between 1 and",)),
    Case("export: --tol nan", ["export", "--tol", "nan"], 2, ("finite",)),
    Case("export: --opset 5", ["export", "--checkpoint", "{tiny}", "--output", "{dir}/o.onnx", "--opset", "5"], 2,
         ("opset 5", "17-19")),
    Case("export: --output not .onnx", ["export", "--checkpoint", "{tiny}", "--output", "{dir}/m.txt"], 2,
         (".onnx",)),
    Case("export: --output is a folder", ["export", "--checkpoint", "{tiny}", "--output", "{dir}"], 2,
         ("is a folder",)),
    Case("export: --output under a file", ["export", "--checkpoint", "{tiny}", "--output", "{file}/m.onnx"], 2,
         ("is a file",)),
    Case("export: --output read-only", ["export", "--checkpoint", "{tiny}", "--output", "{ro}/m.onnx"], 2,
         ("cannot write",), read_only=True),
    Case("export --check: bit-rotted ONNX", ["export", "--check", "{rot_onnx}"], 2, ("damaged", "nan"),
         subprocess=True),
    Case("export --check: truncated ONNX", ["export", "--check", "{trunc_onnx}"], 2, ("corrupt or truncated",)),
    Case("export --check: missing ONNX", ["export", "--check", "{nonexistent}"], 2, ("not found",)),
    # --- build (validated before TensorRT is looked for) -------------------------------------------------------------
    Case("build: missing ONNX", ["build", "--onnx", "{nonexistent}", "--output", "{dir}/m.engine"], 2,
         ("not found",)),
    Case("build: a checkpoint as --onnx", ["build", "--onnx", "{tiny}", "--output", "{dir}/m.engine"], 2,
         ("--onnx",)),
    Case("build: --output suffix", ["build", "--onnx", TINY, "--output", "{dir}/m.txt"], 2, (".engine",)),
    Case("build: --output under a file", ["build", "--onnx", TINY, "--output", "{file}/m.engine"], 2,
         ("is a file",)),
    Case("build: --workspace-mb -5", ["build", "--onnx", TINY, "--output", "m.engine", "--workspace-mb", "-5"], 2,
         ("--workspace-mb", ">= 1")),
    Case("build: --optimization-level 9", ["build", "--onnx", TINY, "--output", "m.engine",
                                           "--optimization-level", "9"], 2, ("--optimization-level", "0 to 5")),
    Case("build: --device-id -1", ["build", "--onnx", TINY, "--output", "m.engine", "--device-id", "-1"], 2,
         ("--device-id", ">= 0")),
    Case("build: --shape garbage", ["build", "--onnx", TINY, "--output", "{dir}/g.engine", "--shape", "garbage"], 2,
         ("must look like hxw",)),
    Case("build: bit-rotted ONNX", ["build", "--onnx", "{rot_onnx}", "--output", "{dir}/r.engine"], 2,
         ("damaged",), subprocess=True),
    # --- infer (the cases that worked before this issue stay working) ------------------------------------------------
    Case("export: a size whose all-pairs trace cannot fit in memory",
         ["export", "--checkpoint", "{tiny}", "--output", "{dir}/e4k.onnx", "--height", "2160", "--width", "3840"],
         2, ("2160x3840", "needs about", "--lookup local")),
    Case("infer: a frame whose memory plan exceeds --memory-limit",
         ["infer", "--checkpoint", "{tiny}", *PAIR, "--output", "{dir}/i10", "--memory-limit", "100M"],
         2, ("needs about", "the limit is 100.0 MB (--memory-limit", "--max-side")),
    Case("infer: --memory-limit lots", ["infer", "--checkpoint", "{tiny}", *PAIR, "--output", "{dir}/i11",
                                        "--memory-limit", "lots"], 2, ("--memory-limit", "not understood")),
    Case("infer: --corr sideways", ["infer", "--checkpoint", "{tiny}", *PAIR, "--output", "{dir}/i12", "--corr",
                                    "sideways"], 2, ("--corr", "invalid choice")),
    Case("plan: no --size", ["plan", "--checkpoint", "{tiny}"], 2, ("--size",)),
    Case("plan: missing checkpoint", ["plan", "--checkpoint", "{nonexistent}", "--size", "64x64"], 2, ("not found",)),
    Case("infer: missing checkpoint", ["infer", "--checkpoint", "{nonexistent}", *PAIR, "--output", "{dir}/i1"], 2,
         ("not found",)),
    Case("infer: corrupt checkpoint", ["infer", "--checkpoint", "{corrupt}", *PAIR, "--output", "{dir}/i2"], 2,
         ("crc",)),
    Case("infer: --iters 1000000", ["infer", "--checkpoint", "{tiny}", *PAIR, "--output", "{dir}/i3", "--iters",
                                    "1000000"], 2, ("between 1 and",)),
    Case("infer: missing image", ["infer", "--model", TINY, "--image1", "{nonexistent}", "--image2", "{img2}",
                                  "--output", "{dir}/i4"], 2, ("not found",)),
    Case("infer: bit-rotted ONNX", ["infer", "--model", "{rot_onnx}", *PAIR, "--output", "{dir}/i5"], 2,
         ("damaged",), subprocess=True),
    Case("infer: --gt that is not a .flo", ["infer", "--model", TINY, *PAIR, "--gt", "{bad_flo}", "--output",
                                            "{dir}/i6"], 2, ("not a middlebury .flo", "PIEH")),
    Case("infer: --scale 0", ["infer", "--model", TINY, *PAIR, "--scale", "0", "--output", "{dir}/i7"], 2,
         ("--scale", "(0, 1]")),
    Case("infer: --scale 1.5", ["infer", "--model", TINY, *PAIR, "--scale", "1.5", "--output", "{dir}/i8"], 2,
         ("--scale", "(0, 1]")),
    Case("infer: --max-side 4", ["infer", "--model", TINY, *PAIR, "--max-side", "4", "--output", "{dir}/i9"], 2,
         ("--max-side", ">= 8")),
    Case("infer: --scale with --max-side", ["infer", "--model", TINY, *PAIR, "--scale", "0.5", "--max-side", "64",
                                            "--output", "{dir}/i10"], 2, ("not allowed with",)),
    Case("infer: --max-side below the model's minimum", ["infer", "--model", TINY, *PAIR, "--max-side", "16",
                                                         "--output", "{dir}/i11"], 2,
         ("--max-side 16 runs the model at 8x16", "minimum 32x32", "--max-side 48")),
    Case("infer: --scale not the static export's size", ["infer", "--model", TINY, *PAIR, "--scale", "0.5",
                                                          "--output", "{dir}/i12"], 2,
         ("--scale 0.5 runs the model at 32x48", "exported for 64x96 only", "--dynamic")),
    # --- compare: a requested backend that cannot run fails the gate ----------------------------------------------
    Case("compare: no reference", ["compare", "--candidate", ORT], 2, ("give a reference",)),
    Case("compare: missing candidate file", [*COMPARE, "--candidate", "onnxruntime={nonexistent}", "--output",
                                             "{dir}/c1"], 1, ("not found", "nothing was compared")),
    Case("compare: --pairs 0", ["compare", "--pairs", "0"], 2, (">= 1",)),
    Case("compare: golden file is garbage", ["compare", "--golden", "{garbage}", "--candidate", ORT], 2,
         ("not a deqflow golden file",)),
    Case("compare: --output is a file", [*COMPARE, "--candidate", ORT, "--output", "{file}"], 2, ("existing file",)),
    Case("compare: tensorrt candidate skipped", [*COMPARE, "--candidate", f"tensorrt={TINY}", "--output",
                                                 "{dir}/c2"], 1, ("skipped", "tensorrt", "nothing was compared")),
    Case("compare: one candidate skipped, another measured", [*COMPARE, "--candidate", f"tensorrt={TINY}",
                                                               "--candidate", ORT, "--output", "{dir}/c6"], 1,
         ("skipped", "--allow-skip")),
    Case("compare: skipped with --allow-skip, another measured",
         [*COMPARE, "--candidate", f"tensorrt={TINY}", "--candidate", ORT, "--allow-skip", "--output", "{dir}/c3"],
         0, ("skipped", "pass")),
    Case("compare: bit-rotted candidate", [*COMPARE, "--candidate", "onnxruntime={rot_onnx}", "--output",
                                           "{dir}/c4"], 1, ("damaged", "skipped"), subprocess=True),
    Case("compare: golden against the tiny export", [*COMPARE, "--candidate", ORT, "--output", "{dir}/c5"], 0,
         ("pass",)),
    # --- bench: a gate that measured nothing fails ------------------------------------------------------------------
    Case("bench: tensorrt missing", [*BENCH, "--candidate", f"tensorrt={TINY}", "--output", "{dir}/b1.json"], 1,
         ("skipped", "nothing was measured")),
    Case("bench: a size the static export lacks", [*BENCH, "--candidate", ORT, "--size", "128x160", "--output",
                                                   "{dir}/b2.json"], 1, ("skipped", "128x160")),
    Case("bench: skipped backend allowed, another measured",
         [*BENCH, "--candidate", ORT, "--candidate", f"tensorrt={TINY}", "--allow-skip", "--output",
          "{dir}/b3.json"], 0,
         ("skipped", "allowed")),
    Case("bench: everything skipped, even with --allow-skip",
         [*BENCH, "--candidate", f"tensorrt={TINY}", "--allow-skip", "--output", "{dir}/b4.json"], 1,
         ("nothing was measured",)),
    Case("bench: bad checkpoint skipped", [*BENCH, "--candidate", "torch={corrupt}", "--candidate", ORT, "--output",
                                           "{dir}/b5.json"], 1, ("skipped", "crc")),
    Case("bench: nothing comparable in the baseline", [*BENCH, "--candidate", ORT, "--baseline", "{other_baseline}",
                                                       "--output", "{dir}/b6.json"], 1,
         ("nothing comparable", "--allow-skip")),
    Case("bench: nothing comparable, allowed", [*BENCH, "--candidate", ORT, "--baseline", "{other_baseline}",
                                                "--allow-skip", "--output", "{dir}/b7.json"], 0,
         ("nothing comparable",)),
    Case("bench: baseline is not JSON", [*BENCH, "--candidate", ORT, "--baseline", "{bad_json}"], 2,
         ("cannot read baseline",)),
    Case("bench: --output is a folder", [*BENCH, "--candidate", ORT, "--output", "{dir}"], 2, ("is a folder",)),
    Case("bench: --markdown under a file", [*BENCH, "--candidate", ORT, "--output", "{dir}/b8.json", "--markdown",
                                            "{file}/t.md"], 2, ("--markdown", "is a file")),
    Case("bench: unknown backend", ["bench", "--candidate", "foo=bar"], 2, ("unknown backend 'foo'",)),
    Case("bench: --anchor not among the backends", [*BENCH, "--candidate", ORT, "--anchor", "nope"], 2,
         ("--anchor", "not one of")),
    Case("bench: --runs 0", [*BENCH, "--candidate", ORT, "--runs", "0"], 2, (">= 1",)),
    Case("bench: bit-rotted ONNX", [*BENCH, "--candidate", "onnxruntime={rot_onnx}", "--output", "{dir}/b9.json"], 2,
         ("damaged",), subprocess=True),
]


def _argv(case: Case, files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in case.argv]


def _run(case: Case, files: dict[str, Path], capsys) -> tuple[int, str]:
    argv = _argv(case, files)
    if case.subprocess:
        proc = subprocess.run([sys.executable, "-m", "deqflow", *argv], capture_output=True, text=True,
                              env=subprocess_env(), timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    try:
        code = main(argv)
    except Exception as exc:  # an escaped exception is what a user sees as a traceback
        out = capsys.readouterr()
        return -1, f"{out.out}{out.err}Traceback (escaped from main): {type(exc).__name__}: {exc}"
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_table_is_large_and_covers_every_verb():
    verbs = {c.argv[0] for c in CASES}
    assert len(CASES) >= 60
    assert verbs == {"train", "evaluate", "export", "build", "info", "demo", "infer", "compare", "bench", "plan"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, files, capsys, monkeypatch, tmp_path):
    if case.read_only and AS_ROOT:
        pytest.skip("running as root: a read-only folder is writable")
    monkeypatch.chdir(tmp_path)  # relative default outputs (bench.json, compare/) land in a scratch folder
    code, text = _run(case, files, capsys)
    assert "Traceback" not in text, text
    assert code == case.code, text
    for word in case.words:
        assert word.lower() in text.lower(), (word, text)


# --- results never lost, leftovers of killed runs, file modes -----------------------------------------------------


def _fail_writes_to(monkeypatch, name: str) -> None:
    """Make the atomic write of files called `name` fail, as a full disk would, after the output was checked."""
    import deqflow.fileio as fileio

    real = fileio.atomic_write_bytes

    def write(path, data):
        if Path(path).name == name:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(fileio, "atomic_write_bytes", write)


def _fallback_file(text: str) -> Path:
    path = Path(text.split("saved to ", 1)[1].split(" instead", 1)[0])
    assert path.is_file(), text
    return path


def test_bench_keeps_its_results_when_the_report_cannot_be_written(tmp_path, monkeypatch, capsys):
    _fail_writes_to(monkeypatch, "full.json")
    code = main([*BENCH, "--candidate", ORT, "--output", str(tmp_path / "full.json")])
    text = capsys.readouterr().err
    assert code == 2 and "no space left" in text.lower() and "not lost" in text
    fallback = _fallback_file(text)
    assert json.loads(fallback.read_text())["results"][0]["latency_ms"]["median"] > 0
    fallback.unlink()


def test_evaluate_keeps_its_results_when_the_json_cannot_be_written(files, tmp_path, monkeypatch, capsys):
    _fail_writes_to(monkeypatch, "eval.json")
    code = main(["evaluate", "--checkpoint", str(files["tiny"]), "--dataset", "synthetic", "--max-samples", "1",
                 "--iters", "2", "--output", str(tmp_path / "eval.json")])
    out = capsys.readouterr()
    assert code == 2 and "1 sample(s)" in out.out and "or 2 iterations" in out.out  # its length, up front
    fallback = _fallback_file(out.err)
    assert "synthetic" in json.loads(fallback.read_text())["results"]
    fallback.unlink()


class _Killed(Exception):
    """Stands for a SIGKILL: the run stops between two statements, nothing is cleaned up."""


def test_a_killed_train_leaves_no_orphans_and_its_log_no_repeated_steps(tmp_path, capsys):
    from helpers import TINY_ENCODER_DIMS

    from deqflow.fileio import writer_tag
    from training.config import ModelConfig
    from training.deq.config import DEQConfig
    from training.train import TrainConfig, Trainer

    def config(**kw):
        deq = DEQConfig(f_solver="fixed_point", f_max_iter=2, n_states=1)
        return TrainConfig(stage="synthetic", output=str(tmp_path / "run"), num_steps=4, batch_size=1,
                           image_size=(64, 64), ckpt_every=2, log_every=1, val_every=1000,
                           model=ModelConfig(variant="T", encoder_dims=TINY_ENCODER_DIMS, corr_levels=2,
                                             corr_radius=2, deq=deq), **kw)

    first = Trainer(config())
    save = first.save

    def killed_at_step_4(name="last.pth", metrics=None):
        if first.step == 4:  # steps 3 and 4 are logged, the checkpoint still says step 2
            raise _Killed
        return save(name, metrics)

    first.save = killed_at_step_4
    with pytest.raises(_Killed):
        first.fit()
    out = Path(first.cfg.output)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = out / f".last.pth.{writer_tag().split('-')[0]}-{int(dead.stdout)}.0badc0de.tmp.pth"
    orphan.write_bytes(b"half a checkpoint")  # what a kill during torch.save leaves
    log = out / "train_log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]

    resumed = Trainer(config(resume="auto"))
    assert not orphan.exists() and resumed.step == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    resumed.fit()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["final.pth", "last.pth", "train_log.jsonl"]
    text = capsys.readouterr().out
    assert "2 step(s) to go (steps 3..4)" in text


def test_exported_onnx_files_have_the_usual_mode_and_no_temporary_files(files, tmp_path, capsys):
    out = tmp_path / "export"
    code = main(["export", "--checkpoint", str(files["tiny"]), "--output", str(out / "m.onnx"), "--layout", "split",
                 "--height", "128", "--width", "128", "--iters", "1"])
    assert code == 0, capsys.readouterr()
    umask = os.umask(0)
    os.umask(umask)
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["m.decode.onnx", "m.encoder.onnx", "m.step.onnx"]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
