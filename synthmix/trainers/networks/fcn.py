"""FCN-8s (Long et al.), the segmenter of 002, on a VGG-16 layout of configurable width.

Written by hand (MONAI has none). 002 started from ImageNet VGG-16 weights; synthmix trains from
scratch (no downloads, and any input channel count), so the default width is smaller than VGG's
(``base_filters=64, fc_filters=4096`` is the original) and batch norm is on by default to make
a 13-layer plain network trainable from scratch. fc6 is a 3x3 rather than 7x7 convolution,
because after five poolings a 64x64 slice is only 2x2; upsampling is bilinear.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthmix.trainers.networks.common import PaddedNet, he_init

VGG16_BLOCKS = (2, 2, 3, 3, 3)  # convolutions per stage
VGG16_WIDTHS = (1, 2, 4, 8, 8)  # multiples of base_filters per stage


def _conv(c_in: int, c_out: int, kernel: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    return layers + [nn.ReLU(inplace=True)]


class FCN8s(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, base_filters: int,
                 fc_filters: int, batch_norm: bool, dropout: float):
        super().__init__()
        self.stages = nn.ModuleList()
        c = in_channels
        for n, mult in zip(VGG16_BLOCKS, VGG16_WIDTHS):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += _conv(c, base_filters * mult, 3, batch_norm)
                c = base_filters * mult
            self.stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
        self.fc = nn.Sequential(*_conv(c, fc_filters, 3, batch_norm), nn.Dropout2d(dropout),
                                *_conv(fc_filters, fc_filters, 1, batch_norm), nn.Dropout2d(dropout))
        self.score_fr = nn.Conv2d(fc_filters, num_classes, 1)
        self.score_pool4 = nn.Conv2d(base_filters * VGG16_WIDTHS[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(base_filters * VGG16_WIDTHS[2], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pools = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        score = self.score_fr(self.fc(x))
        score = _up(score, pools[3]) + self.score_pool4(pools[3])   # 1/16
        score = _up(score, pools[2]) + self.score_pool3(pools[2])   # 1/8
        return F.interpolate(score, size=size, mode="bilinear", align_corners=False)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def build_fcn8s(*, in_channels: int, num_classes: int, base_filters: int = 16,
                fc_filters: int = 256, batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """FCN-8s on VGG-16 stages of widths base_filters x (1, 2, 4, 8, 8)."""
    net = FCN8s(in_channels=in_channels, num_classes=num_classes, base_filters=base_filters,
                fc_filters=fc_filters, batch_norm=batch_norm, dropout=dropout)
    he_init(net)
    return PaddedNet(net, 32)  # five 2x poolings
