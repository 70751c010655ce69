"""On-demand ("local") correlation: the all-pairs pyramid's lookups without building the (H*W)^2 volume.

Why it is exact: a pyramid level is the volume average-pooled over the second image's axes, and a lookup samples
it bilinearly with zeros outside; both are linear in the second feature map. So level k sampled at (x, y) is
<f1(p), avgpool_k(f2) sampled bilinearly at (x, y)> / sqrt(C), zeros outside.

How: all (2r+1)^2 window samples of one pixel and level share one fractional offset, so a window is a (2r+2)^2
integer patch followed by one lerp along x and one along y (the same patch addressing and lerps as the exported
`gather` lookup, defined here once: `patch_index`, `window_lerp`). The second feature map's pooled levels are
zero-padded by 2r+2, packed per sample as channels-last rows (N, positions, C); a step gathers the C-vectors of
each patch position (one Gather on axis 0) and dots them with the pixel's first-image feature.

Memory: the patch positions are processed in chunks (`chunk` positions at a time, a static count in traced
graphs), and eager PyTorch also splits the pixels into blocks of at most `block_bytes` of gathered features; the
working set is a few chunks of pixels x chunk x C, never pixels x levels x (2r+2)^2 x C, and memory grows with the
pixel count, not its square. While autograd records, each chunk is recomputed in the backward pass (activation
checkpointing) instead of keeping its gathered features.
Everything is computed in float32 (float64 stays float64), also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from training.model.corr import accumulation_dtype

DEFAULT_CHUNK = 10  # eager PyTorch: patch positions per gather ((2r+2) for the default radius 4)
TRACED_CHUNK = 5  # exported graphs (no pixel blocks there): smaller chunks run faster on ONNX Runtime, larger ones
# give fewer nodes (an unrolled graph repeats them every iteration)
DEFAULT_BLOCK_BYTES = 2 << 20  # eager PyTorch: gathered features per chunk and pixel block (cache-sized)


def stack_sizes(values: list) -> Tensor:
    """1-D float tensor from Python ints (eager) or traced 0-d size tensors (export): never a constant."""
    return torch.stack([v if isinstance(v, Tensor) else torch.tensor(v) for v in values]).to(torch.float32)


def patch_index(coords: Tensor, levels: int, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Addresses of every pixel's (2r+2)^2 integer patch per level in one sample's packed, zero-padded pyramid
    (levels of the 1/8 grid, each padded by 2r+2 on every side, flattened and concatenated).

    coords (N,2,H,W) -> idx (N*H*W, L, (2r+2)^2) int64 ordered [dx, dy], fx, fy (N*H*W*L, 1, 1) fractions."""
    n, _, h, w = coords.shape
    b = n * h * w
    r, L = radius, levels
    s, pad = 2 * radius + 2, 2 * radius + 2
    hl, wl = [h], [w]
    for _ in range(L - 1):  # avg_pool2d(2) floors, level by level
        hl.append(hl[-1] // 2)
        wl.append(wl[-1] // 2)
    wp = [x + 2 * pad for x in wl]
    sizes = [(y + 2 * pad) * x for y, x in zip(hl, wp)]
    starts = [0]
    for sz in sizes[:-1]:
        starts.append(starts[-1] + sz)
    # float index arithmetic is exact: every per-sample offset is far below 2**24
    wp_t = stack_sizes(wp)
    corner = stack_sizes([st + (pad - r) * (x + 1) for st, x in zip(starts, wp)])  # (pad-r) rows and cols in
    xmax = stack_sizes([x + r for x in wl])
    ymax = stack_sizes([y + r for y in hl])
    scale = torch.tensor([0.5**i for i in range(L)], dtype=torch.float32)
    c = coords.permute(0, 2, 3, 1).reshape(b, 2, 1).float()
    cx, cy = c[:, 0] * scale, c[:, 1] * scale  # (B, L)
    x0, y0 = torch.floor(cx), torch.floor(cy)
    fx, fy = (cx - x0).reshape(b * L, 1, 1), (cy - y0).reshape(b * L, 1, 1)
    lo = torch.tensor(float(-r - 2))  # a corner at or beyond -r-2 / size+r sees only zero padding
    x0 = torch.minimum(torch.maximum(x0, lo), xmax)
    y0 = torch.minimum(torch.maximum(y0, lo), ymax)
    base = (y0 * wp_t + x0 + corner).to(torch.int64)  # (B, L)
    a = torch.arange(s, dtype=torch.float32)
    offsets = (a.reshape(1, s, 1) + a.reshape(1, 1, s) * wp_t.reshape(L, 1, 1)).to(torch.int64)  # [l, dx, dy]
    return base.unsqueeze(2) + offsets.reshape(1, L, s * s), fx, fy


def window_lerp(patch: Tensor, fx: Tensor, fy: Tensor, coords_shape, levels: int, radius: int) -> Tensor:
    """(N*H*W*L, 2r+2, 2r+2) integer-point samples [dx, dy] -> the (N, L*(2r+1)^2, H, W) bilinear windows."""
    n, _, h, w = coords_shape
    k = 2 * radius + 1
    lo_x = patch[:, :-1, :]
    px = lo_x + fx * (patch[:, 1:, :] - lo_x)  # (B*L, k, s)
    lo_y = px[:, :, :-1]
    out = lo_y + fy * (px[:, :, 1:] - lo_y)  # (B*L, k, k)
    return out.reshape(n, h * w, levels * k * k).permute(0, 2, 1).reshape(n, levels * k * k, h, w)


def local_context(fmap1: Tensor, fmap2: Tensor, levels: int, radius: int) -> tuple[Tensor, Tensor]:
    """What every lookup needs, computed once per pair: fmap1 / sqrt(C) as (N, H*W, C) and the packed pyramid of
    fmap2 (avg-pooled level by level, each level zero-padded by 2r+2) as (N, positions, C); float32 or float64."""
    n, c, h, w = fmap1.shape
    dtype = accumulation_dtype(fmap1)
    f1 = (fmap1.to(dtype) / (c**0.5)).permute(0, 2, 3, 1).reshape(n, h * w, c)
    pad = 2 * radius + 2
    level, packed = fmap2.to(dtype), []
    for i in range(levels):
        if i:
            level = F.avg_pool2d(level, 2, stride=2)
        packed.append(F.pad(level, (pad, pad, pad, pad)).reshape(n, c, -1))
    return f1, torch.cat(packed, dim=2).permute(0, 2, 1).contiguous()


def _dot_chunk(rows: Tensor, f1: Tensor, idx: Tensor) -> Tensor:
    """<f1(p), rows[idx(p, j)]> for a chunk of patch positions j: f1 (B, 1, C), idx (B, k) -> (B, k)."""
    b, k = idx.shape
    gathered = torch.index_select(rows, 0, idx.reshape(-1)).reshape(b, k, -1)
    return (gathered * f1).sum(-1)  # a multiply and a sum: faster on CPUs than a batch of (k,C)x(C,1) products


def _patch_samples(rows: Tensor, f1: Tensor, idx: Tensor, chunk: int, recompute: bool) -> Tensor:
    """Correlation at every patch position of idx (B, P), `chunk` positions at a time -> (B, P)."""
    parts = []
    for j in range(0, idx.shape[1], chunk):
        part = idx[:, j:j + chunk]
        parts.append(checkpoint(_dot_chunk, rows, f1, part, use_reentrant=False) if recompute
                     else _dot_chunk(rows, f1, part))
    return torch.cat(parts, dim=1)


def local_lookup(f1: Tensor, f2: Tensor, coords: Tensor, levels: int, radius: int,
                 chunk: int | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Tensor:
    """The all-pairs lookup's (N, L*(2r+1)^2, H, W) windows from `local_context` tensors.

    Patch positions go `chunk` at a time (default DEFAULT_CHUNK, TRACED_CHUNK while tracing: a static count;
    shapes are read from tensors, so --dynamic exports stay correct); eager PyTorch also splits the pixels into
    blocks whose gathered chunk stays under `block_bytes` (a cache-sized working set is faster than one pass)."""
    n, _, h, w = coords.shape
    s = 2 * radius + 2
    idx, fx, fy = patch_index(coords, levels, radius)
    batch_start = (torch.arange(n) * f2.shape[1]).reshape(n, 1, 1)  # int64: no float rounding at any size
    idx = (idx.reshape(n, h * w, levels * s * s) + batch_start).reshape(n * h * w, levels * s * s)
    rows = f2.reshape(-1, f2.shape[2])
    f1 = f1.reshape(n * h * w, 1, f1.shape[2])
    tracing = _tracing()
    chunk = chunk or (TRACED_CHUNK if tracing else DEFAULT_CHUNK)
    recompute = torch.is_grad_enabled() and (f1.requires_grad or rows.requires_grad) and not tracing
    with torch.autocast(coords.device.type, enabled=False):
        if tracing:
            patch = _patch_samples(rows, f1, idx, chunk, recompute)
        else:
            block = max(1, block_bytes // (chunk * rows.shape[1] * rows.element_size()))
            patch = torch.cat([_patch_samples(rows, f1[p:p + block], idx[p:p + block], chunk, recompute)
                               for p in range(0, idx.shape[0], block)])
    patch = patch.reshape(n * h * w * levels, s, s)
    return window_lerp(patch, fx.to(patch.dtype), fy.to(patch.dtype), coords.shape, levels, radius)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class LocalCorr:
    """Duck-types CorrPyramid (call with coords1 (N,2,H,W) -> (N, L*(2r+1)^2, H, W); `select(rows)`), computing
    each lookup on demand from the feature maps: memory linear in the pixel count."""

    def __init__(self, fmap1: Tensor, fmap2: Tensor, levels: int = 4, radius: int = 4,
                 chunk: int | None = None) -> None:
        self.levels, self.radius, self.lookup, self.chunk = levels, radius, "local", chunk
        self.batch = fmap1.shape[0]
        self.f1, self.f2 = local_context(fmap1, fmap2, levels, radius)

    @classmethod
    def from_context(cls, f1: Tensor, f2: Tensor, levels: int, radius: int, chunk: int | None = None) -> LocalCorr:
        """From `local_context` tensors (the split export's encoder outputs)."""
        out = cls.__new__(cls)
        out.levels, out.radius, out.lookup, out.chunk, out.batch = levels, radius, "local", chunk, f1.shape[0]
        out.f1, out.f2 = f1, f2
        return out

    def select(self, rows: Tensor) -> LocalCorr:
        """The correlation of the pairs `rows` only (a solver stepping just the pairs still solving)."""
        return LocalCorr.from_context(self.f1[rows], self.f2[rows], self.levels, self.radius, self.chunk)

    def __call__(self, coords: Tensor) -> Tensor:
        return local_lookup(self.f1, self.f2, coords, self.levels, self.radius, self.chunk)
