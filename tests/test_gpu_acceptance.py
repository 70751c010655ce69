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
