"""Weight normalisation with the official DEQ parametrisation: weight = v * g / ||v|| (norm over all dims
but the output dim 0), parameters `weight_g` (out, 1, ...) and `weight_v`.

A DEQ applies the same layers tens of times per forward, so the weight is computed once per model
forward by `reset_weight_norm` (keeping autograd to g and v) and reused by every solver step; that is
what the official code does. Unlike a plain cached attribute, the cached weight here never appears in
state_dict, is dropped by deepcopy/pickle, and is recomputed on first use when g or v were changed,
moved (.to) or replaced, or when a graph is needed but the cache was made under no_grad.
Mechanism: a weight-normed layer's class is switched to a subclass (WNConv2d, ...) whose `weight` is a
property; `fold_weight_norm` switches it back with a plain `weight` Parameter (what export needs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import Parameter


def _norm(v: Tensor) -> Tensor:
    """L2 norm of each output slice v[i], shaped (out, 1, ..., 1) like the official `weight_g`."""
    return v.reshape(v.shape[0], -1).norm(dim=1).reshape(v.shape[0], *[1] * (v.dim() - 1))


class _WeightNormed:
    """Mixin giving a layer a cached `weight` derived from `weight_g` and `weight_v`."""

    _wn_base: type[nn.Module]

    @property
    def weight(self) -> Tensor:
        cache = self.__dict__.get("_wn_cache")
        if cache is None or not self._wn_fresh(cache):
            return self._wn_compute()
        return cache[-1]

    def _wn_fresh(self, cache: tuple) -> bool:
        g, v = self._parameters["weight_g"], self._parameters["weight_v"]
        cg, cv, gver, vver, w = cache
        if cg is not g or cv is not v or g._version != gver or v._version != vver:
            return False
        if w.device != v.device or w.dtype != v.dtype:
            return False
        return w.requires_grad or not (torch.is_grad_enabled() and (g.requires_grad or v.requires_grad))

    def _wn_compute(self) -> Tensor:
        g, v = self._parameters["weight_g"], self._parameters["weight_v"]
        w = v * (g / _norm(v))
        self.__dict__["_wn_cache"] = (g, v, g._version, v._version, w)
        return w

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # nn.Module returns a copy of __dict__
        state.pop("_wn_cache", None)  # a non-leaf tensor: deepcopy/pickle refuse it, and it is derived
        return state


class WNLinear(_WeightNormed, nn.Linear):
    _wn_base = nn.Linear


class WNConv1d(_WeightNormed, nn.Conv1d):
    _wn_base = nn.Conv1d


class WNConv2d(_WeightNormed, nn.Conv2d):
    _wn_base = nn.Conv2d


class WNConv3d(_WeightNormed, nn.Conv3d):
    _wn_base = nn.Conv3d


_WN_CLASS = {cls._wn_base: cls for cls in (WNLinear, WNConv1d, WNConv2d, WNConv3d)}


def apply_weight_norm(module: nn.Module, filter_out: str | Sequence[str] | None = None) -> nn.Module:
    """Weight-normalise every nn.Linear / Conv1d / Conv2d / Conv3d inside `module` (itself included),
    except those whose qualified name starts with a prefix in `filter_out`. g starts at ||v||, so the
    outputs are unchanged. Layers already normalised are left alone. Returns `module`."""
    prefixes = (filter_out,) if isinstance(filter_out, str) else tuple(filter_out or ())
    for name, layer in list(module.named_modules()):
        cls = _WN_CLASS.get(type(layer))
        if cls is None or (prefixes and name.startswith(prefixes)):
            continue
        weight = layer._parameters.pop("weight")
        layer.register_parameter("weight_g", Parameter(_norm(weight.data).clone(), weight.requires_grad))
        layer.register_parameter("weight_v", Parameter(weight.data, weight.requires_grad))
        layer.__class__ = cls
    return module


def _normed_layers(module: nn.Module) -> list[_WeightNormed]:
    return [m for m in module.modules() if isinstance(m, _WeightNormed)]


def has_weight_norm(module: nn.Module) -> bool:
    return bool(_normed_layers(module))


def reset_weight_norm(module: nn.Module) -> None:
    """Recompute every normalised weight from g and v; call once per model forward (with grad enabled in
    training, so the solver steps and the gradient steps share one weight with a graph to g and v)."""
    for layer in _normed_layers(module):
        layer._wn_compute()


@torch.no_grad()
def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace g and v by a plain `weight` Parameter (first in the parameter order, as in a fresh layer);
    outputs are unchanged and the layers become ordinary nn.Conv2d / nn.Linear again. Returns `module`."""
    for layer in _normed_layers(module):
        v = layer._parameters["weight_v"]
        weight = Parameter(layer._wn_compute().detach().clone(), v.requires_grad)
        rest = {k: p for k, p in layer._parameters.items() if k not in ("weight_g", "weight_v")}
        layer._parameters.clear()
        layer._parameters.update({"weight": weight, **rest})
        layer.__dict__.pop("_wn_cache", None)
        layer.__class__ = layer._wn_base
    return module
