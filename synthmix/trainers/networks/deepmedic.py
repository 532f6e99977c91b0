"""DeepMedic (Kamnitsas et al.) reduced to 2D, as 000 used it on 2D patches.

Written by hand (MONAI has no DeepMedic). Two pathways of 3x3 convolutions, one at full
resolution and one on the input average-pooled by ``subsample_factor``, upsampled back and
concatenated, then 1x1 "fully connected" layers and a 1x1 classifier. Layers are BN + PReLU with
DeepMedic's residual connections every second layer from the fourth. Unlike the original's valid
convolutions on patches with matched receptive fields, convolutions here are 'same' padded so
the network segments whole slices like the other entries.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthmix.trainers.networks.common import he_init, pad_to_multiple, crop


def _layer(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.PReLU(c_out))


class Pathway(nn.Module):
    """A stack of 3x3 layers with residual additions into layers 4, 6, 8, ... (1-based)."""

    def __init__(self, in_channels: int, filters: list[int]):
        super().__init__()
        chans = [in_channels, *filters]
        self.layers = nn.ModuleList(_layer(a, b, 3) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i >= 3 and i % 2 == 1:  # layers 4, 6, 8: add the output of two layers back
                res = outputs[i - 2]
                x = x + F.pad(res, (0, 0, 0, 0, 0, x.shape[1] - res.shape[1]))
            outputs.append(x)
        return x


class DeepMedic2D(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, filters: list[int],
                 fc_filters: int, subsample_factor: int, dropout: float):
        super().__init__()
        self.factor = subsample_factor
        self.normal = Pathway(in_channels, filters)
        self.low = Pathway(in_channels, filters)
        self.fc = nn.Sequential(_layer(2 * filters[-1], fc_filters, 1), nn.Dropout2d(dropout),
                                _layer(fc_filters, fc_filters, 1), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(fc_filters, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(x, self.factor)
        low = self.low(F.avg_pool2d(padded, self.factor))
        low = crop(F.interpolate(low, scale_factor=self.factor, mode="nearest"), size)
        joined = torch.cat([self.normal(x), low], dim=1)
        return self.classifier(self.fc(joined))


def build_deepmedic2d(*, in_channels: int, num_classes: int,
                      filters: list[int] | tuple[int, ...] = (30, 30, 40, 40, 40, 40, 50, 50),
                      fc_filters: int = 150, subsample_factor: int = 3,
                      dropout: float = 0.0) -> nn.Module:
    """2D DeepMedic with DeepMedic's default widths (8 layers 30..50, two FC layers of 150)."""
    if len(filters) < 1 or subsample_factor < 1:
        raise ValueError("deepmedic2d: needs at least one layer and subsample_factor >= 1")
    net = DeepMedic2D(in_channels=in_channels, num_classes=num_classes, filters=list(filters),
                      fc_filters=fc_filters, subsample_factor=subsample_factor, dropout=dropout)
    he_init(net)
    return net
