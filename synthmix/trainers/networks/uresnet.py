"""Residual UNet (UResNet, 000) from MONAI's ``UNet`` with residual units.

MONAI's implementation is used as is (strided-convolution downsampling, residual units of
``num_res_units`` convolutions); only the width schedule (doubling from ``base_filters``) and
the padding to a size its strides divide are ours.
"""

from __future__ import annotations

import torch.nn as nn
from monai.networks.nets import UNet as MonaiUNet

from synthmix.trainers.networks.common import PaddedNet


def build_uresnet(*, in_channels: int, num_classes: int, levels: int = 4, base_filters: int = 16,
                  num_res_units: int = 2, norm: str = "batch", dropout: float = 0.0) -> nn.Module:
    """Residual UNet with ``levels`` resolutions, filters doubling from ``base_filters``."""
    if num_res_units < 1:
        raise ValueError(f"uresnet: num_res_units must be >= 1 (0 is a plain UNet), got {num_res_units}")
    if levels < 2:
        raise ValueError(f"uresnet: levels must be >= 2, got {levels}")
    channels = [base_filters * 2 ** i for i in range(levels)]
    net = MonaiUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                    channels=channels, strides=[2] * (levels - 1), num_res_units=num_res_units,
                    norm=norm, dropout=dropout)
    return PaddedNet(net, 2 ** (levels - 1))
