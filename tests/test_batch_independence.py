"""Per-sample adaptive compute (issue 23): in a batch, every sample stops by its own rule and gets the answer it
gets alone, and the samples that have stopped are no longer stepped (compaction) where the map allows it."""

import numpy as np
import pytest
import torch
from helpers import SHIPPED_CKPT, HostStepParts

from deqflow.host_solver import solve
from deqflow.solver_spec import SolveOverrides, SolveSpec
from training.deq.registry import SOLVERS

RATES = (0.3, 0.9, 0.6, 0.8)  # per-sample contraction: very different stop steps at one tolerance


class Contraction:
    """z -> rho_i sin(z) + c_i, elementwise per sample (a contraction of rate at most rho_i, nonlinear so that
    Anderson and Broyden need different step counts too); `restrict` is the same map on some samples, and every
    call logs how many samples it stepped (the work)."""

    def __init__(self, rho: torch.Tensor, c: torch.Tensor, log: list[int]) -> None:
        self.rho, self.c, self.log = rho, c, log

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.log.append(len(z))
        return self.rho[:, None] * torch.sin(z) + self.c

    def restrict(self, rows: torch.Tensor) -> "Contraction":
        return Contraction(self.rho[rows], self.c[rows], self.log)


def contraction(log: list[int]) -> tuple[Contraction, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rho = torch.tensor(RATES, dtype=torch.float64)
    return Contraction(rho, 2 * torch.randn(len(RATES), 5, generator=g, dtype=torch.float64), log), \
        torch.zeros(len(RATES), 5, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("compact", [True, False])
def test_each_sample_stops_as_alone_and_stopped_samples_cost_nothing(name, compact):
    spec = SolveSpec.of(method=name, max_iter=200, tol=1e-8, return_final=False)
    log: list[int] = []
    f, z0 = contraction(log)
    batched = SOLVERS[name](f if compact else (lambda z: f(z)), z0, spec)
    alone = [SOLVERS[name](f.restrict(torch.tensor([i])), z0[i:i + 1], spec) for i in range(len(RATES))]
    counts = [int(r.stats.iterations) for r in alone]
    assert batched.stats.sample_iterations.tolist() == counts and len(set(counts)) == len(RATES)
    assert batched.stats.reasons == ["tolerance"] * len(RATES) and batched.stats.iterations == max(counts)
    for i, r in enumerate(alone):
        torch.testing.assert_close(batched.z[i], r.z[0], rtol=0, atol=1e-12)
    batch_work = sum(log) - sum(counts)  # the solo runs logged their own evaluations after the batch
    assert batch_work == (sum(counts) if compact else len(RATES) * max(counts))
    assert batched.stats.sample_work == sum(counts)


class HostContraction(HostStepParts):
    """A per-sample contraction like `Contraction`, as the host solver's StepParts on (net, coords1) = (1, 2)
    channels of a 1x1 grid; compactable, logging how many samples each step runs."""

    hidden_dim = 1

    def __init__(self, rows=None, compactable: bool = True) -> None:
        rows = np.arange(len(RATES)) if rows is None else np.asarray(rows)
        self.rho = np.asarray(RATES, np.float64)[rows]
        self.coords0 = np.zeros((len(rows), 2, 1, 1), np.float32)
        self.compactable, self.log = compactable, []

    def encode(self, image1, image2):
        return {"rho": self.rho}, self.coords0

    def step(self, ctx, net, coords1):
        self.log.append(len(net))
        rho = ctx["rho"][:, None, None, None]
        fnet, fcoords = (rho * np.sin(net) + 1).astype(np.float32), (rho * np.sin(coords1) - 2).astype(np.float32)
        z = np.concatenate([net, coords1], 1).astype(np.float64).reshape(len(net), -1)
        fz = np.concatenate([fnet, fcoords], 1).astype(np.float64).reshape(len(net), -1)
        res = np.linalg.norm(fz - z, axis=1)
        return fnet, fcoords, res, res / (np.linalg.norm(fz, axis=1) + 1e-8)

    def select(self, ctx, rows):
        return {"rho": ctx["rho"][rows]}

    def take(self, x, positions):
        return x[positions]


@pytest.mark.parametrize("method", ["fixed_point", "anderson"])
@pytest.mark.parametrize("compact,final", [(True, True), (False, True), (True, False)])
def test_host_solver_stops_each_sample_as_alone(method, compact, final):
    spec = SolveSpec.of(method=method, max_iter=300, tol=1e-5, return_final=final)
    img = np.zeros((len(RATES), 3, 8, 8), np.float32)
    parts = HostContraction(compactable=compact)
    batched = solve(parts, img, img, spec)
    alone = [solve(HostContraction([i]), img[:1], img[:1], spec) for i in range(len(RATES))]
    counts = [int(r.stats.iterations) for r in alone]
    assert batched.stats.sample_iterations.tolist() == counts and len(set(counts)) == len(RATES)
    assert sum(parts.log) == (sum(counts) if compact else len(RATES) * max(counts))
    for i, r in enumerate(alone):
        np.testing.assert_array_equal(batched.flow[i], r.flow[0])
        np.testing.assert_array_equal(batched.state.hidden[i], r.state.hidden[0])
        np.testing.assert_array_equal(batched.stats.final_abs[i], r.stats.final_abs[0])


def motorcycle_crops(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`n` 128x160 crops of the real pair, whose solves need from 11 to 39 steps at rel < 0.005."""
    from deqflow import middlebury

    left, right, _, _ = middlebury.motorcycle()
    corners = [(0, 0), (100, 200), (300, 400), (200, 550)][:n]
    crop = [np.stack([img[y:y + 128, x:x + 160] for y, x in corners]) for img in (left, right)]
    return tuple(c.transpose(0, 3, 1, 2).astype(np.float32) for c in crop)


MIXED = SolveOverrides(max_iter=40, tol=0.005, stop_mode="rel")


@pytest.mark.parametrize("method,invariant,tolerance", [
    ("fixed_point", False, 1e-4),  # oneDNN's convolutions differ in the last bits with the batch size
    ("fixed_point", True, 0.0),
    ("anderson", True, 0.0),
])
def test_torch_backend_pairs_are_batch_independent(method, invariant, tolerance):
    from runtime import create_backend

    image1, image2 = motorcycle_crops()
    settings = SolveOverrides(**{**MIXED.as_dict(), "method": method})
    with create_backend("torch", SHIPPED_CKPT, settings=settings, threads=1, batch_invariant=invariant) as be:
        batched = be.infer(image1, image2)
        alone = [be.infer(image1[i:i + 1], image2[i:i + 1]) for i in range(len(image1))]
    assert batched.sample_iterations.tolist() == [r.iterations for r in alone]
    assert len(set(batched.sample_iterations.tolist())) == len(image1)  # really mixed
    for i, r in enumerate(alone):
        assert float(np.abs(batched.flow[i] - r.flow[0]).max()) <= tolerance


@pytest.mark.slow
def test_onnxruntime_split_export_pairs_are_batch_independent_and_compacted(tmp_path):
    from export import export_onnx
    from runtime import create_backend

    image1, image2 = motorcycle_crops()
    path = tmp_path / "dyn.onnx"
    export_onnx(SHIPPED_CKPT, path, layout="split", height=128, width=160, iters=40, dynamic=True,
                max_shape="4x3x128x160")
    for method in ("fixed_point", "anderson"):
        settings = SolveOverrides(**{**MIXED.as_dict(), "method": method})
        with create_backend("onnxruntime", path, settings=settings, threads=1) as be:
            assert be.parts.compactable
            batched = be.infer(image1, image2)
            alone = [be.infer(image1[i:i + 1], image2[i:i + 1]) for i in range(len(image1))]
        assert batched.sample_iterations.tolist() == [r.iterations for r in alone]
        for i, r in enumerate(alone):
            np.testing.assert_array_equal(batched.flow[i], r.flow[0])  # ONNX Runtime's CPU kernels: bit-identical


def test_evaluate_with_batches_reports_the_batch_1_metrics():
    """`deqflow evaluate --batch N`: every pair stops by its own rule, so the metrics equal batch 1's (bit for
    bit with the batch-invariant kernels)."""
    from training.checkpoint import load_model
    from training.data import SyntheticFlowDataset
    from training.evaluate import evaluate_dataset

    model, _ = load_model(SHIPPED_CKPT)
    model.configure_deq(f_tol=0.005, f_stop_mode="rel", eval_f_max_iter=40, stall_window=0)
    model.batch_invariant = True
    data = SyntheticFlowDataset(size=(128, 160), length=4, seed=11)
    alone = evaluate_dataset(model, data, progress=False)
    batched = evaluate_dataset(model, data, progress=False, batch=4)
    assert batched == alone and alone["mean_iterations"] not in (1.0, 40.0)
