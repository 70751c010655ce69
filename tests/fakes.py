"""Small builders the tests share: a deqflow-format checkpoint from a model, TensorRT-style shape profiles
from plain shape lists."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from deqflow.checkpoint import make_payload, write_checkpoint
from deqflow.shapes import ImageShape, ShapeHints, ShapeProfiles


def save_model(path: str | os.PathLike, model, meta: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Write a deqflow-format checkpoint of a DEQFlow `model` (weights, config, metadata; `extra` e.g. optimizer
    state)."""
    payload = make_payload(model.state_dict(), model.cfg.to_dict(),
                           {"variant": model.cfg.variant, **(meta or {})}, **extra)
    write_checkpoint(path, payload)


def image_profiles(min_shape: list[int], opt_shape: list[int], max_shape: list[int],
                   flow_init: bool = True) -> ShapeProfiles:
    """Per-input min/opt/max profiles of the image (and flow_init) inputs from [B, 3, H, W] shapes."""
    return ShapeHints(*(ImageShape.parse(s) for s in (min_shape, opt_shape, max_shape))).per_input(flow_init)
