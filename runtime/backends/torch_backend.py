"""The PyTorch reference backend: the DEQFlow model itself, with its own solver (training.deq.solvers).

Imports torch and `training` only when instantiated, so `runtime` stays importable without PyTorch.
Defaults: the checkpoint's evaluation solve; each call passes the resolved SolveSpec to DEQFlow.forward
(the model's config is left as it is). TF32 off on CUDA (a float32 reference must be float32). Warm start
passes the previous frame's fixed point as DEQFlow's `cached_state`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import missing, require
from deqflow.host_solver import WarmState
from deqflow.solver_spec import REL_EPS, SolveOverrides, SolveSpec
from runtime.backends.base import Backend, InferenceResult, TensorSpec


def import_torch():
    return require("torch", "the torch backend")


class TorchBackend(Backend):
    """`torch` backend. model: checkpoint path (official or deqflow format) or a DEQFlow instance.
    Options: device ('cpu', 'cuda', 'cuda:1'), threads (CPU), lookup ('grid_sample' | 'gather' | 'local'), tf32,
    batch_invariant (DEQFlow.batch_invariant: a pair's answer bit-identical whatever it is batched with)."""

    name = "torch"
    supports_warm_start = True

    def __init__(self, model: Any, *, settings: SolveOverrides | None = None, device: str = "cpu",
                 threads: int | None = None, lookup: str = "grid_sample", tf32: bool = False,
                 batch_invariant: bool = False) -> None:
        super().__init__(model if isinstance(model, str | os.PathLike) else "<in-memory DEQFlow>", settings=settings)
        torch = import_torch()
        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise missing("gpu", f"the torch backend on {device}",
                                         "torch.cuda.is_available() is False")
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.allow_tf32 = bool(tf32)
        if isinstance(model, str | os.PathLike):
            from training.checkpoint import load_model

            self.model, self.checkpoint_meta = load_model(model, device=self.device, lookup=lookup)
        else:
            self.model, self.checkpoint_meta = model.to(self.device).eval(), {}
        self.levels = self.model.cfg.corr_levels
        self.model.batch_invariant = batch_invariant
        self.configure(self.settings)

    def _resolve(self, settings: SolveOverrides) -> SolveSpec:
        """The checkpoint's evaluation solve, returning the last iterate as the runtime does unless asked
        otherwise, changed by `settings` (another method takes its options from the checkpoint's config)."""
        deq = self.model.cfg.deq
        own = SolveSpec(method=deq.f_solver, options=deq.solver_options(deq.f_solver), stop=deq.stop_rule(),
                        return_final=True)
        return settings.apply(own, options_for=deq.solver_options)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image1", ["N", 3, "H", "W"]), TensorSpec("image2", ["N", 3, "H", "W"]),
                TensorSpec("flow_init", ["N", 2, "H/8", "W/8"])]

    @property
    def label(self) -> str:
        return self.label_for({"device": str(self.device)}, None)

    @classmethod
    def label_for(cls, options: dict, layout: str | None) -> str:
        """'torch:cpu', 'torch:cuda:1': the device."""
        return f"torch:{options.get('device') or 'cpu'}"

    def describe(self) -> dict:
        out = super().describe()
        out.update(device=str(self.device), variant=self.model.cfg.variant, resolved_settings=self.solve_dict(),
                   checkpoint_sha256=self.checkpoint_meta.get("sha256"), torch=self.torch.__version__)
        return out

    def _tensor(self, x: Any):
        if hasattr(x, "detach"):
            return x.detach().to(self.device, self.torch.float32)
        return self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)

    @property
    def identity(self) -> str:
        meta = self.checkpoint_meta
        return (meta.get("weights_sha256") or meta.get("sha256") or "")[:12]

    def _infer(self, image1, image2, flow_init, state: WarmState | None) -> InferenceResult:
        torch, spec = self.torch, self.resolved.for_start(warm=state is not None)
        t1, t2 = self._tensor(image1), self._tensor(image2)
        cached = None if state is None else (self._tensor(state.hidden), self._tensor(state.flow_low))
        init = None if flow_init is None else self._tensor(flow_init)
        try:
            with torch.no_grad():
                out = self.model(t1, t2, flow_init=init, cached_state=cached, solve=spec)
        except ValueError as exc:
            raise InputError(f"torch backend: {exc}") from None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s = out.stats
        abs_trace, rel_trace = s.abs_trace.double().cpu().numpy(), s.rel_trace.double().cpu().numpy()
        return InferenceResult(flow=out.flow_up.float().cpu().numpy(), flow_low=out.flow_low.float().cpu().numpy(),
                               iterations=int(s.iterations), residual=s.final_abs.double().cpu().numpy(),
                               residual_rel=s.final_rel.double().cpu().numpy(), abs_trace=abs_trace,
                               rel_trace=rel_trace, state=WarmState(out.state[0], out.state[1]), stop_reason=s.reason,
                               stalled=None if s.stalled is None else s.stalled.cpu().numpy(),
                               sample_iterations=s.sample_iterations, stop_reasons=s.reasons)

    def step_parts(self) -> TorchStepParts:
        """The model's encode / step / decode as deqflow.host_solver.StepParts (deqflow compare --trace)."""
        return TorchStepParts(self.model, self.device)

    def close(self) -> None:
        self.model = None
        super().close()


class TorchStepParts:
    """deqflow.host_solver.StepParts over a DEQFlow model: the host loop drives the model's own step, so a
    trajectory of the torch reference is recorded exactly as an export's (runtime.trace). The residuals are
    the step graph's: ||f(z) - z|| and that over ||f(z)|| + REL_EPS on the packed state."""

    def __init__(self, model, device) -> None:
        self.torch, self.model, self.device = import_torch(), model, device
        self.hidden_dim = int(model.cfg.hidden_dim)

    def encode(self, image1, image2):
        with self.torch.no_grad():
            ctx = self.model.encode(self.from_host(image1), self.from_host(image2))
        return ctx, self.to_host(ctx.coords0)

    def step(self, ctx, net, coords1):
        with self.torch.no_grad():
            net_next, coords_next = self.model.step(ctx, net, coords1)
        n = net.shape[0]
        step = self.torch.cat([(net_next - net).reshape(n, -1), (coords_next - coords1).reshape(n, -1)], 1)
        norm = self.torch.cat([net_next.reshape(n, -1), coords_next.reshape(n, -1)], 1).norm(dim=1)
        residual = step.norm(dim=1)
        return net_next, coords_next, self.to_host(residual), self.to_host(residual / (norm + REL_EPS))

    def decode(self, ctx, net, coords1):
        with self.torch.no_grad():
            flow_low = coords1 - ctx.coords0
            return self.to_host(self.model.decode(net, flow_low)), self.to_host(flow_low)

    def to_host(self, x):
        return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    def from_host(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
