"""deqflow compare --trace with the torch float32 reference: the model's own step under the host loop
(runtime.backends.torch_backend.TorchStepParts) against the committed tiny split export of the same weights."""

from __future__ import annotations

import json

import pytest
from helpers import TINY_ONNX, TINY_ONNX_ITERS, TINY_ONNX_MODEL, save_tiny_checkpoint

from deqflow.cli import main

pytest.importorskip("torch")


def test_torch_reference_against_its_split_export_stays_in_the_float32_tier(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth", **TINY_ONNX_MODEL)  # the fixture's weights
    out = tmp_path / "report"
    rc = main(["compare", "--trace", "--checkpoint", str(ckpt), "--candidate", f"onnxruntime={TINY_ONNX}",
               "--node-reference", str(TINY_ONNX), "--iters", str(TINY_ONNX_ITERS + 2), "--tier", "float32",
               "--threads", "1", "--output", str(out)])
    report = json.loads((out / "trace.json").read_text())
    assert rc == 0, report["verdict"]
    rows = report["per_iteration"]
    assert len(rows) == TINY_ONNX_ITERS + 2 and all(r["within_tier"] for r in rows)
    assert max(r["flow_max_abs"] for r in rows) < 1e-3 and max(r["hidden_rel"] for r in rows) < 1e-4
    # the same residuals as the export's step graph computes, step by step
    for r in rows:
        assert r["residual_candidate"] == pytest.approx(r["residual_reference"], rel=1e-4)
    assert report["reference"]["label"] == "torch:cpu" and report["fixed_point"]["verdict"] == "same"
    assert report["nodes"]["location"] is None  # the candidate is the node reference itself
    assert "compare --trace: PASS" in capsys.readouterr().out
