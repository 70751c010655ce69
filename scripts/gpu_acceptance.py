"""GPU acceptance in one command: what this box has installed is built, compared and timed, the rest is
skipped with its reason, and one JSON plus one Markdown report say which.

    python scripts/gpu_acceptance.py [--checkpoint PATH (default: the shipped checkpoint)] [--output DIR]

Stages (each runs the deqflow CLI in a subprocess, so a crash in a GPU library fails one stage, not the run):
1. the GPU tests (`pytest -m gpu`) and the TensorRT API conformance tests;
2. ONNX exports of the checkpoint (unrolled, Loop, split; float32 and mixed16) at the benchmark size;
3. TensorRT engines (`deqflow build`: float32, and mixed16 built with the graph's own precision);
4. accuracy: every candidate (TensorRT engines, ONNX Runtime CUDA / TensorRT providers, torch CUDA) against
   torch float32 on the real pairs, with the float32 / float16 tolerance tiers (`deqflow compare`);
5. latency: every candidate against torch eager CUDA (`deqflow bench`: median, p90, memory);
6. per-pair stopping in batches on CUDA (`scripts/bench_batching.py --gpu`): batch independence, and whether
   ONNX Runtime's CUDA provider should step only the unfinished pairs (compacted) or keep the batch's shape
   (masked, the default there, chosen on paper for CUDA graphs and fixed TensorRT profiles).
7. `compare --trace` of the split mixed16 export on TensorRT (issue 25);
8. high resolution on the GPU (issue 22): a 2160x3840 pair with known motion through `deqflow infer` with
   defaults on torch CUDA and on TensorRT from a dynamic split export with on-demand correlation
   (`--lookup local`), recording time, iterations, EPE and peak device memory. It settles what was decided on
   paper: whether the local graphs build and run as TensorRT engines, and how far the memory plan's host-side
   limit (it does not plan device memory) is from a GPU's real peak.
On a machine without a CUDA GPU every stage is skipped with its reason and the script exits 0; on a GPU box
it exits 1 when any stage that ran failed. Exports are only made when some stage will use them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("unrolled", "loop", "split")
PRECISIONS = ("fp32", "mixed16")


@dataclass
class Stage:
    """One acceptance step: ok / failed / skipped, with its reason, command and duration."""

    name: str
    status: str = "skipped"
    reason: str = ""
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    output_tail: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Environment:
    """What the box offers, probed without initialising anything that could crash the process."""

    cuda: bool
    cuda_reason: str
    gpu: str
    tensorrt: str | None
    ort_providers: list[str]

    @property
    def ort_gpu(self) -> list[str]:
        """ONNX Runtime GPU providers usable here (only with a CUDA device)."""
        names = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
        return [p for p, full in names.items() if self.cuda and full in self.ort_providers]


def probe() -> Environment:
    cuda, reason, gpu = False, "torch is not installed", ""
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
        reason = "" if cuda else f"torch {torch.__version__} sees no CUDA device"
        gpu = torch.cuda.get_device_name(0) if cuda else ""
    trt = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            trt = tensorrt.__version__
        except Exception as exc:  # noqa: BLE001 - an unusable install is reported, not raised
            trt = None
            reason = reason or f"tensorrt does not import: {exc}"
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    return Environment(cuda, reason, gpu, trt, providers)


def run_stage(stage: Stage, command: list[str], timeout: float) -> Stage:
    """Run one CLI command for `stage`; the stage fails on a non-zero exit or a timeout."""
    stage.command = command
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
        stage.status = "ok" if proc.returncode == 0 else "failed"
        stage.reason = "" if proc.returncode == 0 else f"exit status {proc.returncode}"
        stage.output_tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        stage.status, stage.reason = "failed", f"timed out after {timeout:.0f} s"
    stage.seconds = round(time.perf_counter() - start, 1)
    return stage


class Acceptance:
    """The stages in order, sharing the exports, engines and the remaining time budget."""

    def __init__(self, args: argparse.Namespace, env: Environment) -> None:
        self.args, self.env = args, env
        self.out: Path = args.output
        self.deadline = time.monotonic() + args.budget_s
        self.stages: list[Stage] = []
        self.exports: dict[tuple[str, str], Path] = {}
        self.engines: dict[tuple[str, str], Path] = {}
        self.deqflow = [sys.executable, "-m", "deqflow"]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, stage: Stage, command: list[str] | None = None, share: float = 0.25) -> Stage:
        """Record `stage`; run `command` when given and time is left (at most `share` of what is left)."""
        if command is not None:
            if self.left() < 10:
                stage.reason = "time budget spent"
            else:
                run_stage(stage, command, self.left() * share)
        self.stages.append(stage)
        print(f"[{stage.status:>7}] {stage.name} {stage.reason}".rstrip(), flush=True)
        return stage

    def gpu_tests(self) -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               "tests/test_runtime_gpu.py"]
        if not self.env.cuda:
            self.add(Stage("gpu tests", reason=self.env.cuda_reason))
        else:
            self.add(Stage("gpu tests"), cmd)
        conformance = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tensorrt_api.py"]
        self.add(Stage("tensorrt api conformance"), conformance if self.env.tensorrt or self.env.cuda else None)
        if not (self.env.tensorrt or self.env.cuda):
            self.stages[-1].reason = "no GPU: `make test` runs it"

    def export_all(self) -> None:
        users = self.env.cuda and (self.env.tensorrt or self.env.ort_gpu)
        h, w = self.args.size
        for layout in LAYOUTS:
            for precision in PRECISIONS:
                name = f"export {layout} {precision}"
                if not users:
                    self.add(Stage(name, reason="no TensorRT or ONNX Runtime GPU provider on a CUDA device uses it"))
                    continue
                path = self.out / "onnx" / f"{layout}-{precision}.onnx"
                cmd = [*self.deqflow, "export", "--checkpoint", str(self.args.checkpoint), "--output", str(path),
                       "--layout", layout, "--precision", precision, "--height", str(h), "--width", str(w)]
                if self.add(Stage(name), cmd, share=0.1).status == "ok":
                    self.exports[(layout, precision)] = path

    def build_engines(self) -> None:
        for (layout, precision), onnx in self.exports.items():
            name = f"tensorrt build {layout} {precision}"
            if not (self.env.cuda and self.env.tensorrt):
                self.add(Stage(name, reason="tensorrt is not installed" if self.env.cuda else self.env.cuda_reason))
                continue
            engine = onnx.with_suffix(".engine")
            cmd = [*self.deqflow, "build", "--onnx", str(onnx), "--output", str(engine),
                   "--engine-precision", "graph" if precision == "mixed16" else "fp32"]
            if self.add(Stage(name), cmd, share=0.15).status == "ok":
                self.engines[(layout, precision)] = engine

    def candidates(self) -> list[tuple[str, str]]:
        """(label, backend spec) of everything to compare and time against torch."""
        specs = [(f"tensorrt {lay} {prec}", f"tensorrt={path}") for (lay, prec), path in self.engines.items()]
        for provider in self.env.ort_gpu:
            specs += [(f"onnxruntime:{provider} {lay} {prec}", f"onnxruntime:{provider}={path}")
                      for (lay, prec), path in self.exports.items()]
        if self.env.cuda:
            specs.append(("torch cuda", f"torch:cuda={self.args.checkpoint}"))
        return specs

    def compare(self) -> None:
        if not self.env.cuda:
            self.add(Stage("compare against torch float32", reason=self.env.cuda_reason))
            return
        for label, spec in self.candidates():
            out = self.out / "compare" / label.replace(" ", "_").replace(":", "-")
            cmd = [*self.deqflow, "compare", "--checkpoint", str(self.args.checkpoint), "--candidate", spec,
                   "--inputs", "real", "--output", str(out)]
            stage = self.add(Stage(f"compare {label}"), cmd, share=0.15)
            report = out / "compare.json"
            if report.is_file():
                stage.data = json.loads(report.read_text())

    def bench(self) -> None:
        if not self.env.cuda:
            self.add(Stage("bench against torch eager cuda", reason=self.env.cuda_reason))
            return
        h, w = self.args.size
        report = self.out / "bench.json"
        cmd = [*self.deqflow, "bench", "--size", f"{h}x{w}", "--runs", str(self.args.runs), "--output", str(report),
               "--markdown", str(self.out / "bench.md")]
        for _, spec in self.candidates()[::-1]:  # torch cuda first: the anchor of the ratios
            cmd += ["--candidate", spec]
        stage = self.add(Stage("bench against torch eager cuda"), cmd, share=0.9)
        if report.is_file():
            stage.data = json.loads(report.read_text())

    def batching(self) -> None:
        if not self.env.cuda:
            self.add(Stage("per-pair stopping in batches (cuda)", reason=self.env.cuda_reason))
            return
        out = self.out / "batching"
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_batching.py"), "--gpu", "--output", str(out)]
        stage = self.add(Stage("per-pair stopping in batches (cuda)"), cmd, share=0.5)
        if out.with_suffix(".json").is_file():
            stage.data = json.loads(out.with_suffix(".json").read_text())

    def trace_mixed16(self) -> None:
        """compare --trace of the split mixed16 export on TensorRT (untested on a GPU so far)."""
        name = "trace tensorrt split mixed16 against float32"
        cmd = self.trace_command()
        if cmd is None:
            reason = self.env.cuda_reason if not self.env.cuda else "tensorrt is not installed" \
                if not self.env.tensorrt else "the split float32 / mixed16 exports are missing"
            self.add(Stage(name, reason=reason))
            return
        stage = self.add(Stage(name), cmd, share=0.5)
        report = self.out / "trace" / "trace.json"
        if report.is_file():
            stage.data = json.loads(report.read_text())

    def trace_command(self) -> list[str] | None:
        """The command of the trace stage, or None when this box cannot run it."""
        fp32, mixed16 = self.exports.get(("split", "fp32")), self.exports.get(("split", "mixed16"))
        if not (self.env.cuda and self.env.tensorrt and fp32 and mixed16):
            return None
        return [*self.deqflow, "compare", "--trace", "--checkpoint", str(self.args.checkpoint), "--candidate",
                f"tensorrt={mixed16}", "--node-reference", str(fp32), "--inputs", "real", "--tier", "float16",
                "--output", str(self.out / "trace")]

    def highres(self) -> None:
        """Stage 8: the 4K pair through `deqflow infer` with defaults on torch CUDA and TensorRT (local export)."""
        names = ("4k infer torch cuda", "export split local dynamic", "4k infer tensorrt split local")
        if not self.env.cuda:
            for name in names:
                self.add(Stage(name, reason=self.env.cuda_reason))
            return
        commands = self.highres_commands(self.out / "highres")
        for name, cmd in zip(names, commands):
            if name.startswith("4k infer tensorrt") and not self.env.tensorrt:
                self.add(Stage(name, reason="tensorrt is not installed"))
                continue
            stage = self.add(Stage(name), cmd, share=0.3)
            summary = Path(cmd[cmd.index("--output") + 1]) / "summary.json" if "infer" in cmd else None
            if summary is not None and summary.is_file():
                stage.data = json.loads(summary.read_text())

    def highres_commands(self, folder: Path) -> list[list[str]]:
        """torch CUDA infer, the local split export, TensorRT infer: each on the 4K pair written into `folder`."""
        from bench_highres import pair_4k  # the script's own folder is on sys.path

        folder.mkdir(parents=True, exist_ok=True)
        a, b, gt = pair_4k(folder)
        pair = ["--image1", str(a), "--image2", str(b), "--gt", str(gt)]
        onnx = folder / "split-local.onnx"
        return [[*self.deqflow, "infer", "--checkpoint", str(self.args.checkpoint), "--device", "cuda", *pair,
                 "--output", str(folder / "torch-cuda")],
                [*self.deqflow, "export", "--checkpoint", str(self.args.checkpoint), "--output", str(onnx), "--layout",
                 "split", "--lookup", "local", "--dynamic", "--height", "1080", "--width", "1920", "--min-shape",
                 "128x128", "--max-shape", "2160x3840"],
                [*self.deqflow, "infer", "--model", str(onnx), "--backend", "tensorrt", *pair,
                 "--output", str(folder / "tensorrt")]]

    def report(self) -> int:
        failed = [s for s in self.stages if s.status == "failed"]
        body = {"environment": asdict(self.env), "size": list(self.args.size), "checkpoint": str(self.args.checkpoint),
                "stages": [asdict(s) for s in self.stages], "failed": len(failed),
                "ran": sum(s.status != "skipped" for s in self.stages)}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_acceptance.json").write_text(json.dumps(body, indent=2))
        rows = [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.reason} |" for s in self.stages]
        env = self.env
        md = [f"# GPU acceptance ({env.gpu or 'no CUDA GPU'}; TensorRT {env.tensorrt or 'not installed'}; "
              f"ONNX Runtime providers: {', '.join(env.ort_providers) or 'none'})", "",
              "| stage | status | seconds | reason |", "|---|---|---:|---|", *rows, ""]
        (self.out / "gpu_acceptance.md").write_text("\n".join(md))
        print(f"{body['ran']} stages ran, {len(failed)} failed, "
              f"{sum(s.status == 'skipped' for s in self.stages)} skipped; report: {self.out / 'gpu_acceptance.md'}")
        return 1 if failed else 0


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 440x1024, got {text!r}") from None
    if h % 8 or w % 8 or h < 128 or w < 128:
        raise argparse.ArgumentTypeError(f"--size {text}: height and width must be multiples of 8, at least 128")
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / SHIPPED_CHECKPOINT)
    ap.add_argument("--output", type=Path, default=ROOT / "outputs" / "gpu_acceptance")
    ap.add_argument("--size", type=parse_size, default=(440, 1024), help="benchmark size HxW")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per backend")
    ap.add_argument("--budget-s", type=float, default=540.0, help="time budget for all stages")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        ap.error(f"checkpoint not found: {args.checkpoint}")
    # never a previous run's
    for stale in ("compare", "trace", "highres", "bench.json", "bench.md", "batching.json", "batching.md"):
        target = args.output / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    acceptance = Acceptance(args, probe())
    for stage in (acceptance.gpu_tests, acceptance.export_all, acceptance.build_engines, acceptance.compare,
                  acceptance.bench, acceptance.batching, acceptance.trace_mixed16, acceptance.highres):
        stage()
    return acceptance.report()


if __name__ == "__main__":
    sys.exit(main())
