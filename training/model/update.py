"""The update operator f of the DEQ: motion encoder, separable ConvGRU and flow head.

Module and parameter names follow the official checkpoints (`encoder.convc1`, `gru.convz1`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig


class MotionEncoder(nn.Module):
    """Encodes the correlation features and the current flow; the flow itself is appended to the output."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dims
        self.convc1 = nn.Conv2d(cfg.corr_channels, d.corr_dim1, 1)
        self.convc2 = nn.Conv2d(d.corr_dim1, d.corr_dim2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, d.flow_dim1, 7, padding=3)
        self.convf2 = nn.Conv2d(d.flow_dim1, d.flow_dim2, 3, padding=1)
        self.conv = nn.Conv2d(d.corr_dim2 + d.flow_dim2, d.motion_dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([c, f], dim=1)))
        return torch.cat([out, flow], dim=1)


class SepConvGRU(nn.Module):
    """ConvGRU run twice: a horizontal (1x5) then a vertical (5x1) pass."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        cin = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _gru(h: torch.Tensor, x: torch.Tensor, convz: nn.Module, convr: nn.Module, convq: nn.Module):
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self._gru(h, x, self.convz1, self.convr1, self.convq1)
        return self._gru(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """(hidden, context, correlation, flow[, attention]) -> (new hidden, flow increment)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hdim, mdim = cfg.hidden_dim, cfg.dims.motion_dim
        self.encoder = MotionEncoder(cfg)
        if cfg.gma:
            from training.model.gma import Aggregate

            self.gma = Aggregate(dim=mdim, dim_head=mdim, heads=1)
            gru_in = 2 * mdim + cfg.context_dim
        else:
            self.gma = None
            gru_in = mdim + cfg.context_dim
        self.gru = SepConvGRU(hdim, gru_in)
        self.flow_head = FlowHead(hdim, cfg.flow_head_dim)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                attn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        motion = self.encoder(flow, corr)
        if self.gma is not None:
            x = torch.cat([inp, motion, self.gma(attn, motion)], dim=1)
        else:
            x = torch.cat([inp, motion], dim=1)
        net = self.gru(net, x)
        return net, self.flow_head(net)
