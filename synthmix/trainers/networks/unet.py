"""UNet (Ronneberger et al.) as used in 003 (3 levels x 64 filters, no batch norm) and 004
(64, 128, ..., 1024 filters, batch norm after every convolution).

Written by hand because MONAI's ``UNet`` halves the resolution with one strided convolution per
level instead of two 3x3 convolutions + max pooling, and its ``BasicUNet`` has a fixed depth;
neither matches the papers' layout. ``levels`` counts resolutions including the bottleneck
(004's encoder of four levels plus the 1024-filter bridge is ``levels=5``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from synthmix.trainers.networks.common import PaddedNet, he_init


def conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 'same' convolutions, each followed by [batch norm and] ReLU."""
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; input H, W must divide 2**(levels-1)
    (``build_unet`` wraps it in PaddedNet so any size works)."""

    def __init__(self, *, in_channels: int, num_classes: int, filters: list[int],
                 batch_norm: bool, dropout: float):
        super().__init__()
        self.down = nn.ModuleList()
        c = in_channels
        for f in filters[:-1]:
            self.down.append(conv_block(c, f, batch_norm))
            c = f
        self.pool = nn.MaxPool2d(2)
        self.bottom = conv_block(c, filters[-1], batch_norm)
        # Dropout at the end of the contracting path, as in the original UNet.
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for f_low, f in zip(filters[:0:-1], filters[-2::-1]):
            self.up.append(nn.ConvTranspose2d(f_low, f, 2, stride=2))
            self.dec.append(conv_block(2 * f, f, batch_norm))
        self.head = nn.Conv2d(filters[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop(self.bottom(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_unet(*, in_channels: int, num_classes: int, levels: int = 3, base_filters: int = 32,
               doubling: bool = False, batch_norm: bool = False, dropout: float = 0.0) -> nn.Module:
    """UNet with ``levels`` resolutions; ``base_filters`` at every level (003) or doubled per
    level (004, ``doubling=True``)."""
    if levels < 2:
        raise ValueError(f"unet: levels must be >= 2, got {levels}")
    if base_filters < 1:
        raise ValueError(f"unet: base_filters must be >= 1, got {base_filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"unet: dropout must be in [0, 1), got {dropout}")
    filters = [base_filters * (2 ** i if doubling else 1) for i in range(levels)]
    net = UNet(in_channels=in_channels, num_classes=num_classes, filters=filters,
               batch_norm=batch_norm, dropout=dropout)
    he_init(net)
    return PaddedNet(net, 2 ** (levels - 1))
