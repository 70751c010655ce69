"""DEQ-Flow: optical flow as the fixed point z* = f(z*, x) of a ConvGRU update, z = (hidden, coords1).

The network is split into `encode` (features, context, correlation pyramid: once per image pair),
`step` (one application of f) and `decode` (convex upsampling), so the same pieces serve the PyTorch
solver, the exported ONNX graphs and the runtime's host-side solver.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from deqflow.errors import InputError
from deqflow.padding import check_model_input_size
from deqflow.solve_stats import SolveStats
from deqflow.solver_spec import SolveOverrides, SolveSpec
from training.config import ModelConfig
from training.deq.core import DEQ
from training.deq.state import StatePacker
from training.deq.weight_norm import apply_weight_norm, fold_weight_norm, reset_weight_norm
from training.model.corr import LOOKUPS, CorrPyramid, accumulation_dtype
from training.model.extractor import Encoder
from training.model.local_corr import LocalCorr
from training.model.update import UpdateBlock
from training.model.upsample import convex_upsample


@dataclass
class PairContext:
    """What the solver needs from one image pair; computed once, reused by every step."""

    corr: CorrPyramid | LocalCorr  # all-pairs pyramid, or the on-demand correlation (lookup 'local')
    inp: torch.Tensor  # context features after ReLU (input injection), (N, cdim, H/8, W/8)
    coords0: torch.Tensor  # pixel grid (N, 2, H/8, W/8), x then y
    attn: torch.Tensor | None = None  # GMA attention over the context, when enabled

    def select(self, rows: torch.Tensor) -> PairContext:
        """The context of the pairs `rows` only."""
        return PairContext(corr=self.corr.select(rows), inp=self.inp[rows], coords0=self.coords0[rows],
                           attn=None if self.attn is None else self.attn[rows])


class StepMap:
    """f of one batch of pairs on packed (hidden, coords1) states; `restrict(rows)` is the same f on those pairs
    only, so the solvers step just the pairs still solving (training.deq.solvers)."""

    def __init__(self, model: DEQFlow, ctx: PairContext, packer: StatePacker) -> None:
        self.model, self.ctx, self.packer = model, ctx, packer

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.packer.pack(*self.model.step(self.ctx, *self.packer.unpack(z)))

    def restrict(self, rows: torch.Tensor) -> StepMap:
        return StepMap(self.model, self.ctx.select(rows), self.packer)


@dataclass
class FlowOutput:
    """Same structure in training and evaluation.

    flow_predictions: full-resolution flow of every supervised state (training: one per sampled state,
    for the fixed-point-correction loss; evaluation: just the final one). flow_low / flow_up: the final
    state at 1/8 and full resolution. state: (hidden, flow_low) of the final state, detached, to warm
    start the next video frame. stats: solver statistics (steps, residual traces).
    """

    flow_predictions: list[torch.Tensor]
    flow_low: torch.Tensor
    flow_up: torch.Tensor
    state: tuple[torch.Tensor, torch.Tensor]
    stats: SolveStats


def coords_grid(n: int, h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], dim=0).unsqueeze(0).expand(n, 2, h, w).contiguous()


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class DEQFlow(nn.Module):
    """Deep Equilibrium Optical Flow. Inputs: float images (N,3,H,W) in 0..255, H and W multiples of 8."""

    def __init__(self, cfg: ModelConfig | None = None, lookup: str = "grid_sample",
                 memory_saving: bool = False) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.lookup = lookup
        self.fnet = Encoder(cfg.dims.feature_dim, norm="instance", dropout=cfg.dropout, dims=cfg.encoder_dims)
        self.cnet = Encoder(cfg.context_dim, norm="batch", dropout=cfg.dropout, dims=cfg.encoder_dims)
        self.update_block = UpdateBlock(cfg)
        self.mask = nn.Sequential(
            nn.Conv2d(cfg.hidden_dim, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 64 * 9, 1),
        )
        if cfg.gma:
            from training.model.gma import Attention

            self.attn = Attention(dim=cfg.context_dim, heads=1, max_pos_size=160, dim_head=cfg.context_dim)
        else:
            self.attn = None
        if cfg.wnorm:
            apply_weight_norm(self.update_block)
        self.deq = DEQ(cfg.deq)
        self.memory_saving = memory_saving
        self.batch_invariant = False

    # ------------------------------------------------------------------ configuration
    @property
    def memory_saving(self) -> bool:
        """Activation checkpointing of both encoders while autograd records (training.model.extractor): the
        encoders hold most of a training step's peak memory. Outputs and gradients are unchanged, so it
        is a run-time switch, not part of the config a checkpoint stores."""
        return self.fnet.memory_saving

    @memory_saving.setter
    def memory_saving(self, on: bool) -> None:
        self.fnet.memory_saving = self.cnet.memory_saving = bool(on)

    @property
    def batch_invariant(self) -> bool:
        """Bit-identical answers for a pair whatever it is batched with (a run-time switch): the encoders run
        pair by pair, and on the CPU the convolutions take PyTorch's native kernels, since oneDNN's results
        depend on the batch size in the last bits (which Anderson and Broyden amplify). Slower per batch step
        (docs/batching.md measures it); off by default."""
        return self._batch_invariant

    @batch_invariant.setter
    def batch_invariant(self, on: bool) -> None:
        self._batch_invariant = bool(on)

    def configure_deq(self, **changes) -> None:
        """Change the model's default solver settings (DEQConfig fields, e.g. f_solver, f_tol,
        eval_f_max_iter). To change one call only, pass `solve=SolveOverrides(...)` to forward instead."""
        self.cfg.deq = replace(self.cfg.deq, **changes)
        self.deq = DEQ(self.cfg.deq)

    @contextmanager
    def solver_override(self, **changes):
        """Change the default solver settings inside a `with` block (for code that calls the model through
        helpers, e.g. validation with the official evaluation solver); restored on exit."""
        saved = self.cfg.deq
        self.configure_deq(**changes)
        try:
            yield self
        finally:
            self.cfg.deq = saved
            self.deq = DEQ(saved)

    def fold_weight_norm(self) -> None:
        """Replace the g/v weight-norm parameters by plain weights (same outputs; needed by export)."""
        if self.cfg.wnorm:
            fold_weight_norm(self.update_block)
            self.cfg.wnorm = False

    def freeze_bn(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()

    # ------------------------------------------------------------------ pieces
    def _autocast(self, device: torch.device):
        enabled = self.cfg.mixed_precision and device.type == "cuda"
        return torch.autocast(device_type=device.type, enabled=enabled)

    def encode(self, image1: torch.Tensor, image2: torch.Tensor) -> PairContext:
        image1 = 2 * (image1 / 255.0) - 1.0
        image2 = 2 * (image2 / 255.0) - 1.0
        n = image1.shape[0]
        with self._autocast(image1.device):
            if self.batch_invariant and n > 1:
                pairs = [self.fnet(torch.cat([image1[i:i + 1], image2[i:i + 1]], dim=0)) for i in range(n)]
                fmaps = torch.cat([f[:1] for f in pairs] + [f[1:] for f in pairs], dim=0)
                inp = torch.relu(torch.cat([self.cnet(image1[i:i + 1]) for i in range(n)], dim=0))
            else:
                fmaps = self.fnet(torch.cat([image1, image2], dim=0))
                inp = torch.relu(self.cnet(image1))
            attn = self.attn(inp) if self.attn is not None else None
        dtype = accumulation_dtype(image1)  # the DEQ state and the correlation stay in (at least) float32
        if self.lookup not in LOOKUPS:
            raise InputError(f"unknown correlation lookup {self.lookup!r}; choose one of {', '.join(LOOKUPS)}")
        levels, radius = self.cfg.corr_levels, self.cfg.corr_radius
        corr = LocalCorr(fmaps[:n], fmaps[n:], levels, radius) if self.lookup == "local" else \
            CorrPyramid(fmaps[:n], fmaps[n:], levels, radius, lookup=self.lookup)
        _, _, h, w = inp.shape
        return PairContext(corr=corr, inp=inp, coords0=coords_grid(n, h, w, image1.device, dtype), attn=attn)

    def step(self, ctx: PairContext, net: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One application of f: (hidden, coords1) -> (hidden', coords1 + delta)."""
        if not self.cfg.all_grad:
            coords1 = coords1.detach()
        corr = ctx.corr(coords1)
        with self._autocast(net.device):
            net, delta = self.update_block(net, ctx.inp, corr, coords1 - ctx.coords0, ctx.attn)
        return net.to(coords1.dtype), coords1 + delta.to(coords1.dtype)

    def decode(self, net: torch.Tensor, flow_low: torch.Tensor) -> torch.Tensor:
        """Convex-upsample the 1/8 flow with the mask predicted from the hidden state."""
        with self._autocast(net.device):
            mask = 0.25 * self.mask(net)
        return convex_upsample(flow_low, mask.to(flow_low.dtype))

    def initial_state(self, ctx: PairContext, flow_init: torch.Tensor | None = None,
                      cached_state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Zero hidden state at zero flow, or a warm start from `cached_state` and/or `flow_init`."""
        n, _, h, w = ctx.coords0.shape
        net = torch.zeros(n, self.cfg.hidden_dim, h, w, device=ctx.inp.device, dtype=ctx.coords0.dtype)
        coords1 = ctx.coords0.clone()
        if cached_state is not None:
            hidden, flow = cached_state
            _expect_shape("cached_state hidden", hidden, (n, self.cfg.hidden_dim, h, w))
            _expect_shape("cached_state flow", flow, (n, 2, h, w))
            net = hidden.to(net)
            coords1 = ctx.coords0 + flow.to(coords1)
        if flow_init is not None:
            _expect_shape("flow_init", flow_init, (n, 2, h, w))
            coords1 = coords1 + flow_init.to(coords1)
        return net, coords1

    # ------------------------------------------------------------------ forward
    def forward(self, image1: torch.Tensor, image2: torch.Tensor, *, flow_init: torch.Tensor | None = None,
                cached_state: tuple[torch.Tensor, torch.Tensor] | None = None,
                solve: SolveSpec | SolveOverrides | None = None) -> FlowOutput:
        """Estimate the flow from image1 to image2.

        `solve` changes this call's forward solve (SolveOverrides: e.g. `SolveOverrides(max_iter=12)`, the
        evaluation cap, default f_max_iter * eval_factor) or replaces it (a whole SolveSpec); None keeps the
        model's DEQ config, which is never modified here. Training uses f_max_iter and the sampled-state
        schedule of the DEQ config; the stagnation and flow-step exits apply in evaluation only.
        """
        with _native_cpu_kernels(self.batch_invariant and image1.device.type == "cpu"):
            ctx, packer, f, z0 = self.fixed_point_problem(image1, image2, flow_init, cached_state)
            states, stats = self.deq(f, z0, training=self.training, solve=solve, flow_size=packer.sizes[-1])
            decoded = [packer.unpack(z) for z in states]
            flows = [self.decode(h, c - ctx.coords0) for h, c in decoded]
        net_final, coords_final = decoded[-1]
        flow_low = coords_final - ctx.coords0
        return FlowOutput(flow_predictions=flows, flow_low=flow_low, flow_up=flows[-1],
                          state=(net_final.detach(), flow_low.detach()), stats=stats)

    def fixed_point_problem(self, image1: torch.Tensor, image2: torch.Tensor, flow_init: torch.Tensor | None = None,
                            cached_state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The equation forward() solves: (ctx, packer, f, z0) with f acting on packed (hidden, coords1) states.
        Shared with analysis code that runs a solver of its own (training.inference.flow_trajectory)."""
        image1, image2 = self.check_inputs(image1, image2)
        if self.cfg.wnorm:
            reset_weight_norm(self.update_block)  # once per forward, not per solver step
        ctx = self.encode(image1, image2)
        net, coords1 = self.initial_state(ctx, flow_init, cached_state)
        packer = StatePacker([net, coords1])
        return ctx, packer, StepMap(self, ctx, packer), packer.pack(net, coords1)

    def check_inputs(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clear errors for inputs the network cannot handle (instead of NaN or a shape traceback)."""
        for name, img in (("image1", image1), ("image2", image2)):
            if not isinstance(img, torch.Tensor):
                raise InputError(f"{name} must be a torch.Tensor of shape (N,3,H,W), got {type(img).__name__}")
            if img.dim() != 4 or img.shape[1] != 3:
                raise InputError(f"{name} must have shape (N,3,H,W) (RGB, channels first), got {tuple(img.shape)}")
        if image1.shape != image2.shape:
            raise InputError(f"image1 and image2 differ in shape: {tuple(image1.shape)} vs {tuple(image2.shape)}")
        h, w = image1.shape[-2:]
        if h % 8 or w % 8:
            raise InputError(f"image size {h}x{w} is not a multiple of 8; pad it first with "
                             "deqflow.padding.InputPadder (and unpad the flow afterwards)")
        check_model_input_size(h, w, levels=self.cfg.corr_levels)
        if not image1.is_floating_point():
            image1, image2 = image1.float(), image2.float()
        if not _is_exporting():
            if not (torch.isfinite(image1).all() and torch.isfinite(image2).all()):
                raise InputError("input images contain NaN or Inf values")
            lo = torch.minimum(image1.min(), image2.min())
            hi = torch.maximum(image1.max(), image2.max())
            if lo < -1e-3:
                raise InputError(f"images must be in 0..255 (official DEQ-Flow/RAFT convention); got minimum "
                                 f"{float(lo):.3f}. For [-1,1] inputs use (x + 1) * 127.5")
            if 0 < hi <= 1.0:
                warnings.warn("images look like they are in 0..1, but DEQ-Flow expects 0..255; multiply by 255",
                              stacklevel=2)
        return image1, image2


@contextmanager
def _native_cpu_kernels(on: bool):
    """PyTorch's own CPU convolutions instead of oneDNN's inside the block (DEQFlow.batch_invariant)."""
    if not on or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


def _expect_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise InputError(f"{name} must have shape {shape} (1/8 resolution), got {tuple(t.shape)}")
