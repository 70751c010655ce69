"""Build a DEQ-Flow model from a checkpoint: official DEQ-Flow state dicts or deqflow's own format.

Loading is strict: every missing, unexpected or mis-shaped key is an error that names the keys (the
official loader's strict=False silently ignores them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from deqflow.checkpoint import (
    make_payload,
    read_checkpoint_and_sha256,
    read_checkpoint_file,
    split_checkpoint,
    write_checkpoint,
)
from deqflow.errors import CheckpointError, InputError
from deqflow.solver_spec import StopRule
from training.config import VARIANTS, ModelConfig
from training.deq.config import DEQConfig
from training.model.deq_flow import DEQFlow

_VARIANT_BY_CONTEXT_DIM = {d.hidden_dim: name for name, d in VARIANTS.items()}


def infer_model_config(state_dict: Mapping[str, Any], path: str = "checkpoint") -> dict[str, Any]:
    """Recognise variant, weight norm, GMA and the v1 flow-head width from tensor shapes."""
    try:
        cdim = int(state_dict["cnet.conv2.weight"].shape[0])
        fdim = int(state_dict["fnet.conv2.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{path} is not a DEQ-Flow checkpoint: key {exc} is missing") from None
    variant = _VARIANT_BY_CONTEXT_DIM.get(cdim)
    if variant is None or VARIANTS[variant].feature_dim != fdim:
        raise CheckpointError(f"{path}: context width {cdim} and feature width {fdim} match no DEQ-Flow "
                              f"variant ({', '.join(VARIANTS)})")
    wnorm = "update_block.flow_head.conv1.weight_g" in state_dict
    head_key = "update_block.flow_head.conv1." + ("weight_v" if wnorm else "weight")
    if head_key not in state_dict:
        raise CheckpointError(f"{path} is not a DEQ-Flow checkpoint: key {head_key!r} is missing")
    head_width = int(state_dict[head_key].shape[0])
    old_version = head_width != 2 * VARIANTS[variant].motion_dim
    gma = any(k.startswith("attn.") for k in state_dict)
    encoder_dims = tuple(int(state_dict[f"fnet.{k}.weight"].shape[0])
                         for k in ("conv1", "layer2.0.conv1", "layer3.0.conv1") if f"fnet.{k}.weight" in state_dict)
    out = {"variant": variant, "wnorm": wnorm, "old_version": old_version, "gma": gma}
    if len(encoder_dims) == 3:
        out["encoder_dims"] = encoder_dims
    return out


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], path: str = "checkpoint") -> None:
    """load_state_dict(strict=True) with an error that lists every mismatch by name and shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {path} does not match the model:"]
        if missing:
            more = " ..." if len(missing) > 20 else ""
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{more}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                         + (" ..." if len(unexpected) > 20 else ""))
        for k in mismatched[:20]:
            lines.append(f"  shape mismatch {k}: checkpoint {tuple(state_dict[k].shape)} "
                         f"vs model {tuple(own[k].shape)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


STOP_RULE_KEY = "stop_rule"
"""Checkpoint metadata entry holding the model's own inference stop rule (StopRule.as_dict())."""


def stop_rule_of(meta: Mapping[str, Any], path: str = "checkpoint") -> StopRule | None:
    """The stop rule a checkpoint's metadata carries, None when it has none; CheckpointError if malformed."""
    if meta.get(STOP_RULE_KEY) is None:
        return None
    try:
        return StopRule.from_dict(meta[STOP_RULE_KEY], f"{path}: metadata {STOP_RULE_KEY}")
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def stamp_stop_rule(source: str | os.PathLike, output: str | os.PathLike, rule: StopRule) -> None:
    """Write a copy of a deqflow-format checkpoint whose metadata carries `rule` (weights unchanged)."""
    state_dict, cfg_dict, meta = split_checkpoint(read_checkpoint_file(str(source)), str(source))
    if cfg_dict is None:
        raise CheckpointError(f"{source} is an official state dict: load and save it with deqflow first")
    write_checkpoint(output, make_payload(state_dict, cfg_dict, {**meta, STOP_RULE_KEY: rule.as_dict()}))


def load_model(path: str | os.PathLike, *, variant: str | None = None, deq: DEQConfig | None = None,
               device: str | torch.device = "cpu", lookup: str = "grid_sample", stop_rule: StopRule | None = None,
               **model_overrides: Any) -> tuple[DEQFlow, dict[str, Any]]:
    """Load an official or deqflow checkpoint into a DEQFlow model in eval mode.

    variant: the variant the caller expects (checked against the weights); inferred when None.
    deq: solver settings; default = the checkpoint's own (deqflow format) or the official evaluation
    protocol (fixed-point iteration, DEQConfig's f_max_iter x eval_factor steps) for official checkpoints;
    then the inference stop rule: `stop_rule`, else (when `deq` is None) the one in the checkpoint's metadata
    (`stop_rule` entry).
    Returns (model, metadata); metadata includes the checkpoint's sha256.
    """
    path = str(path)
    payload, sha256 = read_checkpoint_and_sha256(path)
    state_dict, cfg_dict, meta = split_checkpoint(payload, path)
    inferred = infer_model_config(state_dict, path)
    if variant is not None and str(variant).upper() != inferred["variant"]:
        raise CheckpointError(f"{path} holds a DEQ-Flow-{inferred['variant']} model, not the requested "
                              f"variant {str(variant).upper()}")
    if cfg_dict is not None:
        cfg = ModelConfig.from_dict(cfg_dict)
        if cfg.variant != inferred["variant"]:
            raise CheckpointError(f"{path}: config says variant {cfg.variant} but the weights are "
                                  f"{inferred['variant']}")
    else:
        cfg = ModelConfig(**inferred, deq=DEQConfig(f_solver="fixed_point"))
    for key, value in model_overrides.items():
        setattr(cfg, key, value)
    if deq is not None:
        cfg.deq = deq
    rule = stop_rule or (stop_rule_of(meta, path) if deq is None else None)
    if rule is not None:
        cfg.deq = cfg.deq.with_stop_rule(rule)
    model = DEQFlow(cfg, lookup=lookup)
    load_state_dict_strict(model, state_dict, path)
    meta = {**meta, "sha256": sha256, "path": path}
    return model.to(device).eval(), meta
