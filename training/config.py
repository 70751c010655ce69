"""Typed configuration of the DEQ-Flow model: the official variants and their layer widths."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from deqflow.errors import InputError
from training.deq.config import DEQConfig


@dataclass(frozen=True)
class VariantDims:
    """Layer widths of one official DEQ-Flow variant (the official code's per-variant settings)."""

    hidden_dim: int  # GRU hidden state = context dim
    feature_dim: int  # feature-encoder output channels
    corr_dim1: int  # MotionEncoder convc1
    corr_dim2: int  # MotionEncoder convc2
    flow_dim1: int  # MotionEncoder convf1
    flow_dim2: int  # MotionEncoder convf2
    motion_dim: int  # MotionEncoder output channels (incl. the 2 flow channels)


VARIANTS: dict[str, VariantDims] = {
    "T": VariantDims(32, 64, 64, 48, 32, 16, 32),
    "B": VariantDims(128, 256, 256, 192, 128, 64, 128),
    "L": VariantDims(192, 256, 384, 288, 192, 96, 192),
    "H": VariantDims(256, 256, 512, 384, 256, 128, 256),
    "G": VariantDims(384, 256, 640, 480, 320, 160, 320),
}

# Official command-line flag of each variant (B is the default, no flag).
VARIANT_FLAGS = {"T": "tiny", "L": "large", "H": "huge", "G": "gigantic"}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a DEQ-Flow model; stored inside deqflow checkpoints."""

    variant: str = "B"
    gma: bool = False
    wnorm: bool = True
    old_version: bool = False  # caps the flow-head width at min(256, 2*motion_dim) as in DEQ-Flow v1
    dropout: float = 0.0
    all_grad: bool = False  # let gradients flow through coords1 inside the update (official --all_grad)
    mixed_precision: bool = False  # autocast the encoders and update block on CUDA; correlation stays fp32
    corr_levels: int = 4
    corr_radius: int = 4
    # Residual-stage widths of both encoders; every official variant uses (64, 96, 128). Narrower
    # encoders (e.g. (32, 48, 64)) make small CPU training runs practical.
    encoder_dims: tuple[int, int, int] = (64, 96, 128)
    deq: DEQConfig = field(default_factory=DEQConfig)

    def __post_init__(self) -> None:
        self.variant = str(self.variant).upper()
        if self.variant not in VARIANTS:
            raise InputError(f"unknown DEQ-Flow variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.corr_levels < 1 or self.corr_radius < 1:
            raise InputError("corr_levels and corr_radius must be >= 1")
        self.encoder_dims = tuple(int(d) for d in self.encoder_dims)
        if len(self.encoder_dims) != 3 or min(self.encoder_dims) < 8:
            raise InputError(f"encoder_dims must be three widths >= 8, got {self.encoder_dims}")
        if isinstance(self.deq, dict):
            self.deq = DEQConfig.from_dict(self.deq)

    @property
    def dims(self) -> VariantDims:
        return VARIANTS[self.variant]

    @property
    def hidden_dim(self) -> int:
        return self.dims.hidden_dim

    @property
    def context_dim(self) -> int:
        return self.dims.hidden_dim

    @property
    def flow_head_dim(self) -> int:
        width = 2 * self.dims.motion_dim
        return min(256, width) if self.old_version else width

    @property
    def corr_channels(self) -> int:
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["encoder_dims"] = list(self.encoder_dims)
        out["deq"] = self.deq.to_dict()
        for key in ("flow_tol", "warm_flow_tol"):  # written only when on, so older toolkits still read the file
            if not out["deq"][key]:
                del out["deq"][key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown model config keys {sorted(unknown)}")
        data = dict(data)
        deq = DEQConfig.from_dict(data.pop("deq", {}) or {})
        return cls(**data, deq=deq)
