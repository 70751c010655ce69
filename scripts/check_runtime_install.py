"""Check deqflow as a deployment installs it: `pip install deqflow` with no extras, in a clean environment.

Builds the project's wheel once (`pip wheel --no-deps` from a clean copy of the sources, in a temporary folder),
installs it into a fresh virtual environment under build/ (pip's cache is reused, so a second run downloads
nothing), and checks:
- PyTorch and the training-only libraries (scipy, scikit-image, matplotlib, tqdm, onnxslim) are not importable;
- `deqflow infer --model` runs the committed tiny export on a committed real pair (tests/fixtures/pair), and on
  a short sequence of those frames with the forward-warp warm start;
- `deqflow compare --golden` reproduces the committed golden file with ONNX Runtime;
- `deqflow bench` times the tiny export;
- `deqflow export` and `bench --inputs real` (the Middlebury pair comes with scikit-image) say in one line
  which extra to install.
Prints the environment's size and the time each step took; exits 1 if a check fails. `make test` runs it.

    python scripts/check_runtime_install.py [--venv build/runtime-venv] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_ONNX = FIXTURES / "tiny" / "tiny-T-64x96.onnx"  # tests/helpers.py's tiny split export and its golden file
TINY_GOLDEN = FIXTURES / "tiny" / "tiny-T-64x96-it4.npz"
PAIR = FIXTURES / "pair"
SOURCES = ("pyproject.toml", "README.md", "deqflow", "training", "export", "runtime")
NOT_INSTALLED = ("torch", "scipy", "skimage", "matplotlib", "tqdm", "onnxslim", "tensorrt")
TRAIN_HINT = "pip install 'deqflow[train]'"


@dataclass
class Checks:
    """What ran, how long it took, and what failed."""

    failures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, cmd: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        self.timings[name] = time.perf_counter() - t0
        print(f"  {name}: exit {proc.returncode} ({self.timings[name]:.1f} s)", flush=True)
        return proc

    def expect(self, ok: bool, what: str, proc: subprocess.CompletedProcess | None = None) -> None:
        if ok:
            return
        detail = "" if proc is None else f"\n    stdout: {proc.stdout.strip()[-1500:]}\n    stderr: " \
                                          f"{proc.stderr.strip()[-1500:]}"
        self.failures.append(what)
        print(f"  FAILED: {what}{detail}", flush=True)


def build_wheel(checks: Checks, work: Path) -> Path:
    """The project's wheel, built from a clean copy of its sources (no stale build/ files get in)."""
    src, wheels = work / "src", work / "wheel"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    isolation = ["--no-build-isolation"] if _can_build_here() else []  # else pip fetches setuptools
    proc = checks.step("build wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                                       "--quiet", "-w", str(wheels), str(src)])
    found = sorted(wheels.glob("deqflow-*.whl"))
    checks.expect(proc.returncode == 0 and len(found) == 1, "pip wheel --no-deps builds one deqflow wheel", proc)
    if not found:
        raise SystemExit(1)
    return found[0]


def install(checks: Checks, wheel: Path, venv: Path) -> Path:
    """A fresh environment with the wheel and its core dependencies only; returns its python."""
    shutil.rmtree(venv, ignore_errors=True)
    proc = checks.step("create venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    checks.expect(proc.returncode == 0, "python -m venv creates the environment", proc)
    python = venv / "bin" / "python"
    proc = checks.step("pip install (no extras)", [sys.executable, "-m", "pip", "--python", str(python), "install",
                                                   "--quiet", "--prefer-binary", str(wheel)])
    checks.expect(proc.returncode == 0, "pip install deqflow (no extras) succeeds", proc)
    if proc.returncode != 0:
        raise SystemExit(1)
    return python


def check_imports(checks: Checks, python: Path, env: dict, cwd: Path) -> None:
    code = ("import importlib.util as u\n"
            f"print(' '.join(m for m in {NOT_INSTALLED!r} if u.find_spec(m) is not None))\n"
            "import deqflow, runtime, onnxruntime, cv2, onnx, numpy\n"
            "print('ok', onnxruntime.__version__)\n")
    proc = checks.step("imports", [str(python), "-c", code], env=env, cwd=cwd)
    present = proc.stdout.splitlines()[0].split() if proc.stdout else ["?"]
    checks.expect(proc.returncode == 0 and not present, f"not importable: {', '.join(NOT_INSTALLED)} "
                  f"(found: {' '.join(present) or 'none'}); runtime and its libraries import", proc)


def check_infer(checks: Checks, deqflow: Path, env: dict, out: Path) -> None:
    """infer --model on the committed real pair, and on a short sequence with the forward-warp warm start."""
    pair = [str(PAIR / f"motorcycle-64x96-{name}.png") for name in ("1", "2", "gt")]
    proc = checks.step("deqflow infer", [str(deqflow), "infer", "--model", str(TINY_ONNX), "--image1", pair[0],
                                         "--image2", pair[1], "--gt", pair[2], "--threads", "1", "--output",
                                         str(out / "infer")], env=env, cwd=out)
    written = {p.name for p in (out / "infer").glob("*")}
    checks.expect(proc.returncode == 0 and {"flow.flo", "flow.png", "residual.png", "summary.json"} <= written,
                  "deqflow infer --model writes flow.flo, flow.png, residual.png, summary.json", proc)
    frames = out / "frames"
    frames.mkdir()
    for k, image in enumerate((pair[0], pair[1], pair[0])):
        shutil.copy(image, frames / f"{k}.png")
    proc = checks.step("deqflow infer --folder (forward warm start)", [
        str(deqflow), "infer", "--model", str(TINY_ONNX), "--folder", str(frames), "--warm-start",
        "--warm-start-mode", "forward", "--threads", "1", "--output", str(out / "sequence")], env=env, cwd=out)
    log = out / "sequence" / "frames.jsonl"
    checks.expect(proc.returncode == 0 and log.is_file() and '"warm": true' in log.read_text(),
                  "deqflow infer --warm-start-mode forward runs a sequence (no scipy)", proc)


def check_verbs(checks: Checks, deqflow: Path, env: dict, out: Path) -> None:
    """compare --golden and bench run; the verbs that need the train extra say so in one line."""
    model = str(TINY_ONNX)
    proc = checks.step("deqflow compare --golden", [str(deqflow), "compare", "--golden", str(TINY_GOLDEN),
                                                    "--candidate", f"onnxruntime={model}", "--threads", "1",
                                                    "--output", str(out / "compare")], env=env, cwd=out)
    checks.expect(proc.returncode == 0 and "PASS" in proc.stdout, "deqflow compare --golden passes", proc)
    proc = checks.step("deqflow bench", [str(deqflow), "bench", "--candidate", f"onnxruntime={model}", "--inputs",
                                         "random", "--warmup", "1", "--runs", "3", "--threads", "1", "--output",
                                         str(out / "bench.json")], env=env, cwd=out)
    checks.expect(proc.returncode == 0 and (out / "bench.json").is_file(), "deqflow bench writes its report",
                  proc)
    for name, argv in (("deqflow export", ["export", "--checkpoint", "x.pth", "--output", "x.onnx"]),
                       ("deqflow bench --inputs real", ["bench", "--candidate", f"onnxruntime={model}", "--runs",
                                                        "1", "--output", str(out / "real.json")])):
        proc = checks.step(name, [str(deqflow), *argv], env=env, cwd=out)
        lines = proc.stderr.strip().splitlines()
        checks.expect(proc.returncode == 2 and len(lines) == 1 and TRAIN_HINT in lines[0]
                      and "Traceback" not in proc.stderr, f"{name} names the train extra in one line", proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=ROOT / "build" / "runtime-venv", help="environment to (re)create")
    p.add_argument("--keep", action="store_true", help="keep the environment afterwards (default: remove it)")
    args = p.parse_args(argv)
    checks, t0 = Checks(), time.perf_counter()
    print(f"runtime-only install check in {args.venv}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory(prefix="deqflow-runtime-") as tmp:
        wheel = build_wheel(checks, Path(tmp) / "build")
        python = install(checks, wheel, args.venv)
        out = Path(tmp) / "run"
        out.mkdir()
        check_imports(checks, python, env, out)
        check_infer(checks, args.venv / "bin" / "deqflow", env, out)
        check_verbs(checks, args.venv / "bin" / "deqflow", env, out)
    size = _size_mb(args.venv)
    total = time.perf_counter() - t0
    print(f"runtime-only environment: {size:.0f} MB installed; wheel {wheel.name}; total {total:.1f} s "
          f"(build {checks.timings.get('build wheel', 0):.1f} s, install "
          f"{checks.timings.get('pip install (no extras)', 0):.1f} s)")
    if not args.keep:
        shutil.rmtree(args.venv, ignore_errors=True)
    if checks.failures:
        print(f"runtime-only install check FAILED: {'; '.join(checks.failures)}")
        return 1
    print("runtime-only install check: every check passed")
    return 0


def _can_build_here() -> bool:
    """Whether this interpreter's setuptools builds wheels by itself (70.1+ holds bdist_wheel): then the build
    needs no isolated environment, and no download."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def _size_mb(path: Path) -> float:
    """Disk use of a folder (as du counts it: allocated blocks), in MB."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_blocks * 512
    return total / 2**20


if __name__ == "__main__":
    sys.exit(main())
