"""The three traced pieces every layout is built from: encoder, one update step, decoder.

They call DEQFlow.encode / step / initial_state / decode directly, never the DEQ solver: its Python loop
with early stops and host syncs cannot be traced. Composition into unrolled / Loop / split graphs happens
on the ONNX side (export.compose), so all layouts share one traced step and agree bit for bit.

Mixed precision (`mixed16`): TensorRT 11 is strongly typed, so precision must be written into the graph.
`apply_mixed16` puts the encoders, the update block (motion encoder, ConvGRU, flow head) and the mask head
in float16 behind explicit casts, mirroring CUDA autocast: their outputs are cast back to float32, so the
coordinates, flow accumulation, correlation volume and lookups, the upsampling softmax and the residual
stay float32. Instance-norm statistics also stay float32 (a 20k-pixel mean/variance in fp16 is fragile).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from deqflow.solver_spec import REL_EPS
from export.lookup import PackedCorr, context_names, pack
from training.model.deq_flow import DEQFlow, PairContext


def _cast(x, dtype):
    if isinstance(x, Tensor) and x.is_floating_point():
        return x.to(dtype)
    if isinstance(x, tuple):
        return tuple(_cast(v, dtype) for v in x)
    return x


class Cast16(nn.Module):
    """Runs a module in float16: floating inputs cast to fp16, floating outputs back to fp32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module.half()

    def forward(self, *args):
        return _cast(self.inner(*_cast(args, torch.float16)), torch.float32)


class Keep32(nn.Module):
    """Inside a float16 island: runs a module (instance norm) in float32 and returns float16."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.float()).half()


def apply_mixed16(model: DEQFlow) -> DEQFlow:
    """A copy of `model` whose convolution/GRU modules run in fp16 behind Cast nodes."""
    model = copy.deepcopy(model)
    keep: dict[int, Keep32] = {}  # one wrapper per norm (ResidualBlock registers norm3 twice)
    for enc in (model.fnet, model.cnet):
        for parent in list(enc.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.InstanceNorm2d):
                    setattr(parent, name, keep.setdefault(id(child), Keep32(child)))
    model.fnet, model.cnet = Cast16(model.fnet), Cast16(model.cnet)
    model.update_block = Cast16(model.update_block)
    model.mask = Cast16(model.mask)
    if model.attn is not None:
        model.attn = Cast16(model.attn)
    return model.eval()


def prepare(model: DEQFlow, precision: str = "fp32") -> DEQFlow:
    """Export copy of a model: weight norm folded, eval mode, no autocast, no gradients."""
    model = copy.deepcopy(model).cpu().float()
    model.fold_weight_norm()
    model.cfg.mixed_precision = False  # autocast would rewrite dtypes behind our explicit casts
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if precision == "mixed16":
        model = apply_mixed16(model)
    return model


def ctx_names(model: DEQFlow, lookup: str) -> list[str]:
    """Encoder outputs consumed by every step, in the order the step part takes them."""
    names = [*context_names(lookup, model.cfg.corr_levels), "inp", "coords0"]
    return names + (["attn"] if model.attn is not None else [])


class EncoderPart(nn.Module):
    """(image1, image2[, flow_init]) -> context tensors, net0, coords1_init, residual0."""

    def __init__(self, model: DEQFlow, lookup: str, flow_init: bool) -> None:
        super().__init__()
        self.model, self.lookup, self.flow_init = model, lookup, flow_init
        self.output_names = [*ctx_names(model, lookup), "net0", "coords1_init", "residual0"]

    def input_names(self) -> list[str]:
        return ["image1", "image2", *(["flow_init"] if self.flow_init else [])]

    def forward(self, image1: Tensor, image2: Tensor, flow_init: Tensor | None = None):
        saved, self.model.lookup = self.model.lookup, self.lookup  # local: LocalCorr; else the (same) pyramid
        try:
            ctx = self.model.encode(image1, image2)
        finally:
            self.model.lookup = saved
        net, coords1 = self.model.initial_state(ctx, flow_init if self.flow_init else None)
        extra = [ctx.attn] if ctx.attn is not None else []
        zeros = torch.zeros(image1.shape[0], dtype=torch.float32)  # initial residual, (N,)
        return (*pack(ctx.corr, self.lookup), ctx.inp, ctx.coords0, *extra, net, coords1, zeros)


class StepPart(nn.Module):
    """(context..., net, coords1) -> (net_next, coords1_next, residual, residual_rel): one application of f.

    residual = ||f(z) - z|| per sample over the packed state z = (hidden, coords1), residual_rel = residual /
    (||f(z)|| + REL_EPS): the numbers the PyTorch solvers record and stop on.
    """

    output_names = ["net_next", "coords1_next", "residual", "residual_rel"]

    def __init__(self, model: DEQFlow, lookup: str) -> None:
        super().__init__()
        self.model, self.lookup = model, lookup
        self.context = ctx_names(model, lookup)
        self.n_corr = len(context_names(lookup, model.cfg.corr_levels))

    def input_names(self) -> list[str]:
        return [*self.context, "net", "coords1"]

    def forward(self, *args: Tensor):
        corr, rest = list(args[: self.n_corr]), args[self.n_corr:]
        inp, coords0 = rest[0], rest[1]
        attn = rest[2] if self.model.attn is not None else None
        net, coords1 = rest[-2], rest[-1]
        cfg = self.model.cfg
        ctx = PairContext(corr=PackedCorr(corr, self.lookup, cfg.corr_levels, cfg.corr_radius), inp=inp,
                          coords0=coords0, attn=attn)
        net_next, coords_next = self.model.step(ctx, net, coords1)
        n = net.shape[0]
        dn, dc = (net_next - net).reshape(n, -1), (coords_next - coords1).reshape(n, -1)
        residual = torch.sqrt((dn * dn).sum(1) + (dc * dc).sum(1))
        fn, fc = net_next.reshape(n, -1), coords_next.reshape(n, -1)
        norm = torch.sqrt((fn * fn).sum(1) + (fc * fc).sum(1))
        return net_next, coords_next, residual, residual / (norm + REL_EPS)


class DecodePart(nn.Module):
    """(net, coords1, coords0) -> (flow, flow_low): convex 8x upsampling of the final state."""

    output_names = ["flow", "flow_low"]

    def __init__(self, model: DEQFlow) -> None:
        super().__init__()
        self.model = model

    def input_names(self) -> list[str]:
        return ["net", "coords1", "coords0"]

    def forward(self, net: Tensor, coords1: Tensor, coords0: Tensor):
        flow_low = coords1 - coords0
        return self.model.decode(net, flow_low), flow_low


def reference_solve(model: DEQFlow, image1: Tensor, image2: Tensor, iters: int, lookup: str,
                    flow_init: Tensor | None = None, tolerance: float = 0.0, stop_mode: str = "abs") -> dict:
    """What the exported graphs compute, in PyTorch with the export's pieces (used by --verify and tests)."""
    enc, step, dec = EncoderPart(model, lookup, flow_init is not None), StepPart(model, lookup), DecodePart(model)
    with torch.no_grad():
        outs = enc(image1, image2, flow_init)
        ctx, (net, coords1, _) = list(outs[: len(step.context)]), outs[len(step.context):]
        count = 0
        for _ in range(iters):
            net, coords1, res, rel = step(*ctx, net, coords1)
            count += 1
            if tolerance > 0 and float((res if stop_mode == "abs" else rel).max()) < tolerance:
                break
        flow, flow_low = dec(net, coords1, ctx[step.n_corr + 1])
    return {"flow": flow, "flow_low": flow_low, "residual": res, "residual_rel": rel, "iterations": count}
