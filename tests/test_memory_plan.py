"""The memory plan (deqflow.memory_plan): hand-computed byte counts, the limit, the mode `--corr auto` picks,
refusals before any model is loaded (also under an address-space limit), and the estimate against measured
peak resident memory of real `deqflow infer` runs (within 25%)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.errors import MemoryPlanError
from deqflow.memory_plan import (
    ALL_PAIRS_HEADROOM,
    FIT_SHARE,
    MemoryLimit,
    ModelDims,
    PlanRequest,
    allocation_failure,
    available_memory,
    choose_plan,
    correlation_bytes,
    dims_from_checkpoint,
    estimate,
    largest_fitting,
    level_sizes,
    parse_memory,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / SHIPPED_CHECKPOINT
sys.path.insert(0, str(ROOT / "scripts"))
T = ModelDims(variant="T", feature_dim=64, hidden_dim=32, context_dim=32, encoder_dims=(32, 48, 64),
              solver="fixed_point")


def test_correlation_bytes_by_hand():
    # 256x320: a 32x40 grid, P = 1280 pixels; levels 32x40, 16x20, 8x10, 4x5
    assert level_sizes(32, 40, 4) == [(32, 40), (16, 20), (8, 10), (4, 5)]
    assert level_sizes(13, 9, 3) == [(13, 9), (6, 4), (3, 2)]  # avg_pool2d floors
    torch = PlanRequest(T, 256, 320)
    # torch builds level 0 twice over (matmul, then its scaled copy): 2 * 1280^2 * 4; the pyramid is 1280*1700*4
    assert correlation_bytes(torch) == (2 * 1280 * 1280 * 4, 1280 * (1280 + 320 + 80 + 20) * 4)
    # the export's gather lookup pads each level by 2r+2 = 10: 52*60 + 36*40 + 28*30 + 24*25 = 6000 per pixel
    ort = PlanRequest(T, 256, 320, backend="onnxruntime", lookup="gather")
    assert correlation_bytes(ort) == (3 * 1280 * 6000 * 4, 1280 * 6000 * 4)
    # local: pooled second feature maps (1700 * 64 floats) plus the window samples, 1280 * 4 * 81 * 64 floats
    local = replace(torch, corr="local")
    assert correlation_bytes(local)[0] == 1700 * 64 * 4 + 1280 * 4 * 81 * 64 * 4
    # all-pairs grows with the square of the pixel count, local with the count: 4x the pixels
    big = replace(torch, height=512, width=640)
    assert correlation_bytes(big)[0] == 16 * correlation_bytes(torch)[0]
    assert estimate(replace(big, batch=2)).parts["correlation"] == 2 * estimate(big).parts["correlation"]


def test_parse_memory():
    assert parse_memory("8G") == 8 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1.5GB") == 3 << 29
    assert parse_memory("123456") == 123456 and parse_memory("2 GiB") == 2 << 30
    for bad in ("lots", "-1G", "0", "8Q"):
        with pytest.raises(ValueError, match="not understood|> 0"):
            parse_memory(bad)
    assert available_memory("torch", "3G") == MemoryLimit(3 << 30, "--memory-limit")
    assert available_memory("torch").bytes > 0


def test_auto_picks_all_pairs_when_comfortable_then_local_then_refuses():
    request = PlanRequest(T, 720, 1280)
    all_pairs, local = (estimate(replace(request, corr=m)).total for m in ("all-pairs", "local"))
    assert local < all_pairs
    roomy = MemoryLimit(int(all_pairs / ALL_PAIRS_HEADROOM) + 1, "test")
    assert choose_plan(request, roomy).request.corr == "all-pairs"
    tight = MemoryLimit(int(all_pairs / ALL_PAIRS_HEADROOM) - 1, "test")  # fits, but not comfortably
    assert choose_plan(request, tight).request.corr == "local"
    assert choose_plan(request, tight, "all-pairs").request.corr == "all-pairs"  # named: must only fit
    small = MemoryLimit(int(local / FIT_SHARE) - 1, "test")
    with pytest.raises(MemoryPlanError) as info:
        choose_plan(request, small)
    text = str(info.value)
    assert "720x1280 fits in no correlation mode" in text and "limit is" in text and "\n" not in text
    with pytest.raises(MemoryPlanError, match="--corr local"):
        choose_plan(request, tight.__class__(int(local / FIT_SHARE) + 1, "test"), "all-pairs")


def test_an_exported_mode_is_kept_and_its_refusal_says_re_export():
    request = PlanRequest(T, 720, 1280, backend="onnxruntime", lookup="gather")
    need = estimate(request).total
    limit = MemoryLimit(int(need / FIT_SHARE) - 1, "test")
    with pytest.raises(MemoryPlanError, match=r"deqflow export --lookup local.*--max-side"):
        choose_plan(request, limit, fixed="all-pairs", hint=" (--max-side)")
    assert choose_plan(request, MemoryLimit(need * 2, "t"), "local", fixed="all-pairs").request.corr == "all-pairs"


def test_largest_fitting_frame_is_the_boundary():
    request = PlanRequest(T, 1080, 1920)
    limit = MemoryLimit(4 << 30, "test")
    for mode in ("all-pairs", "local"):
        h, w = largest_fitting(request, limit, mode)
        assert h % 8 == 0 and w % 8 == 0 and abs(w / h - 16 / 9) < 0.02
        plan = estimate(replace(request, corr=mode, height=h, width=w), limit)
        assert plan.comfortable if mode == "all-pairs" else plan.fits
        h2 = h + 8
        bigger = estimate(replace(request, corr=mode, height=h2, width=int(round(h2 * 16 / 9 / 8)) * 8), limit)
        assert not (bigger.comfortable if mode == "all-pairs" else bigger.fits)
    assert largest_fitting(request, MemoryLimit(1 << 20, "t"), "local") is None


def test_checkpoint_dims_without_torch_or_weights():
    dims = dims_from_checkpoint(CHECKPOINT)
    assert (dims.variant, dims.feature_dim, dims.hidden_dim, dims.encoder_dims) == ("T", 64, 32, (32, 48, 64))
    assert dims.solver == "fixed_point" and 900_000 < dims.parameters < 1_000_000
    official = dims_from_checkpoint(ROOT / "tests" / "fixtures" / "official" / "official-T-seed2.pth")
    assert (official.variant, official.encoder_dims) == ("T", (64, 96, 128))


def test_allocation_failures_become_one_line():
    torch_text = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 67184640000 bytes. Error code 12 (Cannot allocate memory)")
    assert "62.6 GB" in allocation_failure(RuntimeError(torch_text))
    ort_text = ("Non-zero status code returned while running Concat node. BFCArena::AllocateRawInternal Failed to "
                "allocate memory for requested buffer of size 1731456000")
    message = allocation_failure(Exception(ort_text))
    assert "1.6 GB" in message and "\n" not in message and ".py" not in message
    assert allocation_failure(MemoryError()).startswith("out of memory")
    assert allocation_failure(RuntimeError("shape mismatch")) is None


# --- real runs ------------------------------------------------------------------------------------------------


def infer(args: list[str], as_limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["prlimit", f"--as={as_limit}", sys.executable, "-m", "deqflow", "infer", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_frame_too_large_for_an_address_space_limit_is_refused_before_loading(tmp_path):
    from calibrate_memory_plan import write_pair

    a, b = write_pair(tmp_path, 1080, 1920)
    pair = ["--image1", str(a), "--image2", str(b), "--output", str(tmp_path / "out")]
    done = infer(["--checkpoint", str(CHECKPOINT), *pair, "--corr", "all-pairs"], 3 << 30)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "frame 1080x1920: all-pairs needs about" in line and "address-space limit" in line and "--corr local" in line
    done = infer(["--checkpoint", str(CHECKPOINT), *pair, "--memory-limit", "400M"], 3 << 30)
    assert done.returncode == 2 and "fits in no correlation mode" in done.stderr and "400.0 MB" in done.stderr
    assert not (tmp_path / "out" / "flow.flo").exists()


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan-export") / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "deqflow", "export", "--checkpoint", str(CHECKPOINT), "--output",
                           str(out), "--layout", "split", "--height", "256", "--width", "320", "--dynamic",
                           "--min-shape", "1x128x128", "--opt-shape", "1x256x320", "--max-shape", "1x448x640"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_estimate_within_25_percent_of_measured_peak(backend, request):
    from calibrate_memory_plan import measure_infer, plan_for

    path = str(CHECKPOINT) if backend == "torch" else str(request.getfixturevalue("dynamic_export"))
    flag = "--checkpoint" if backend == "torch" else "--model"

    def peak(h: int, w: int) -> int:
        run = measure_infer([flag, path], h, w, iters=2, extra=["--memory-limit", "64G"])
        assert run["returncode"] == 0, run["stderr"]
        return run["peak_bytes"]

    # The resident size of the libraries themselves (RUNTIME_BYTES) depends on the machine's page cache (a freshly
    # installed torch maps more of its pages resident: 190-240 MB here), so the smallest frame measures this
    # machine's offset and the larger frames check what the plan models: what grows with the frame.
    offset = peak(128, 160) - plan_for(backend, path, 128, 160)
    assert abs(offset) < 200 << 20, offset
    for h, w in ((448, 640), (720, 1280)) if backend == "torch" else ((256, 320), (448, 640)):
        measured = peak(h, w)
        ratio = (plan_for(backend, path, h, w) + offset) / measured
        assert 0.75 <= ratio <= 1.25, (backend, h, w, ratio, measured, offset)
