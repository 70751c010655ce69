"""The PyTorch reference backend: the DEQFlow model itself, with its own solver (training.deq.solvers).

Imports torch and `training` only when instantiated, so `runtime` stays importable without PyTorch.
Defaults: iterations, tolerance, stop mode and solver from the checkpoint's solver settings; each call
passes the resolved settings to DEQFlow.forward as per-call overrides (the model's config is left as it
is). TF32 off on CUDA (a float32 reference must be float32). Warm start passes the previous frame's fixed
point as DEQFlow's `cached_state`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import missing, require
from deqflow.solver_spec import AndersonOptions, canonical_solver
from runtime.backends.base import Backend, InferenceResult, TensorSpec
from runtime.solver import SolverSettings, WarmState


def import_torch():
    return require("torch", "the torch backend")


class TorchBackend(Backend):
    """`torch` backend. model: checkpoint path (official or deqflow format) or a DEQFlow instance.
    Options: device ('cpu', 'cuda', 'cuda:1'), threads (CPU), lookup ('grid_sample' | 'gather'), tf32."""

    name = "torch"
    supports_warm_start = True

    def __init__(self, model: Any, *, settings: SolverSettings | None = None, device: str = "cpu",
                 threads: int | None = None, lookup: str = "grid_sample", tf32: bool = False) -> None:
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
        self.configure(self.settings)

    def _resolve(self, settings: SolverSettings) -> SolverSettings:
        deq = self.model.cfg.deq
        return settings.with_rule(deq.stop_rule(), canonical_solver(deq.f_solver))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image1", ["N", 3, "H", "W"]), TensorSpec("image2", ["N", 3, "H", "W"]),
                TensorSpec("flow_init", ["N", 2, "H/8", "W/8"])]

    @property
    def label(self) -> str:
        return f"torch:{self.device}"

    def describe(self) -> dict:
        out = super().describe()
        out.update(device=str(self.device), variant=self.model.cfg.variant, resolved_settings=self.resolved.as_dict(),
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
        torch, s = self.torch, self.resolved.for_start(warm=state is not None)
        t1, t2 = self._tensor(image1), self._tensor(image2)
        cached = None if state is None else (self._tensor(state.hidden), self._tensor(state.flow_low))
        init = None if flow_init is None else self._tensor(flow_init)
        options = None  # the model's own options for the other solvers
        if s.method == "anderson":
            options = AndersonOptions(m=s.anderson_m, lam=s.anderson_lam, beta=s.anderson_beta,
                                      safeguard=s.anderson_safeguard)
        try:
            with torch.no_grad():
                out = self.model(t1, t2, flow_init=init, cached_state=cached, iters=s.max_iter, solver=s.method,
                                 tol=s.tol, stop_mode=s.stop_mode, return_final=s.return_final,
                                 solver_options=options, stall_window=s.stall_window, stall_margin=s.stall_margin,
                                 flow_tol=s.flow_tol)
        except ValueError as exc:
            raise InputError(f"torch backend: {exc}") from None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        abs_trace = out.stats.abs_trace.double().cpu().numpy()
        rel_trace = out.stats.rel_trace.double().cpu().numpy()
        return InferenceResult(flow=out.flow_up.float().cpu().numpy(), flow_low=out.flow_low.float().cpu().numpy(),
                               iterations=int(out.stats.nstep), residual=abs_trace[:, -1],
                               residual_rel=rel_trace[:, -1], abs_trace=abs_trace, rel_trace=rel_trace,
                               state=WarmState(out.state[0], out.state[1]), stop_reason=out.stats.reason,
                               stalled=None if out.stats.stalled is None else out.stats.stalled.cpu().numpy())

    def close(self) -> None:
        self.model = None
        super().close()
