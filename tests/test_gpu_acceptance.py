"""scripts/gpu_acceptance.py on a machine without a GPU: it runs, skips every GPU stage with its reason, and
exits 0; its reports say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_acceptance_skips_every_gpu_stage_with_a_reason_on_cpu(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the script really runs there")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_acceptance.py"), "--output", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    stages = report["stages"]
    assert {s["name"] for s in stages} >= {"gpu tests", "export split mixed16", "compare against torch float32",
                                           "bench against torch eager cuda"}
    assert all(s["status"] == "skipped" and s["reason"] for s in stages), stages
    assert report["ran"] == 0 and report["failed"] == 0
    assert "no CUDA GPU" in (tmp_path / "gpu_acceptance.md").read_text()


def test_the_high_resolution_stage_writes_a_4k_pair_and_commands_the_cli_parses(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as when the script runs: its folder is on sys.path
    from argparse import Namespace

    import gpu_acceptance as ga

    from deqflow.cli import build_parser
    from deqflow.flow_io import read_flow

    args = Namespace(output=tmp_path, budget_s=60.0, checkpoint=ROOT / "ckpt.pth", size=(128, 160), runs=1)
    cpu = ga.Acceptance(args, ga.Environment(False, "no CUDA device", "", None, []))
    cpu.highres()
    assert [s.status for s in cpu.stages] == ["skipped"] * 3 and cpu.stages[0].reason == "no CUDA device"
    torch_cuda, export, tensorrt = cpu.highres_commands(tmp_path / "highres")
    flow, _ = read_flow(tmp_path / "highres" / "4k_gt.flo")
    assert flow.shape == (2160, 3840, 2) and 20 < float(abs(flow).max()) <= 40.0
    for cmd in (torch_cuda, export, tensorrt):
        verb = cmd[3]
        parsed = build_parser([verb]).parse_args(cmd[3:])
        assert parsed is not None
    assert "--device" in torch_cuda and torch_cuda[torch_cuda.index("--device") + 1] == "cuda"
    assert export[export.index("--lookup") + 1] == "local" and "--dynamic" in export
    assert tensorrt[tensorrt.index("--backend") + 1] == "tensorrt"
