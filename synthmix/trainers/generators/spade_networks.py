"""The stage-2 networks of ``spade_two_stage``: SPADE (Park et al. 2019) as 004 ran it, with
spectral norm, a two-scale discriminator and the hinge loss.

- generator, written here after Park et al.: MONAI's ``SPADE`` block instance-normalises its
  gamma and beta maps, and ``SPADENet``'s last residual block narrows to the output channels
  before a LeakyReLU (not tanh) output; SPADE's own block has plain 3x3 gamma/beta convolutions
  and its generator ends in LeakyReLU, 3x3 conv, tanh.
- discriminator: two MONAI ``PatchDiscriminator``s set up as SPADE's (four 4x4 convolutions,
  padding 2, instance norm, spectral norm on the inner ones), the second on the 2x
  average-pooled pair. MONAI's ``MultiScalePatchDiscriminator`` deepens each further
  discriminator instead of downsampling its input, and its depth doubling does not fit 64 px.
- hinge loss, written here (3 lines): MONAI's ``PatchAdversarialLoss("hinge")`` applies a tanh
  to the scores first, which is not SPADE's hinge.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm


class SpadeNorm(nn.Module):
    """Park et al.'s SPADE: parameter-free batch norm, then a per-pixel scale and shift from the
    label map (3x3 conv + ReLU shared, one 3x3 conv each for gamma and beta)."""

    def __init__(self, channels: int, label_nc: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        a = self.shared(F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        return self.norm(x) * (1 + self.gamma(a)) + self.beta(a)


class SpadeResBlock(nn.Module):
    """SPADE's residual block: two (SPADE, LeakyReLU 0.2, spectral-norm 3x3 conv) with a learned
    (SPADE, 1x1 conv) shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, label_nc: int, hidden: int):
        super().__init__()
        mid = min(cin, cout)
        self.norm_0, self.conv_0 = SpadeNorm(cin, label_nc, hidden), spectral_norm(nn.Conv2d(cin, mid, 3, padding=1))
        self.norm_1, self.conv_1 = SpadeNorm(mid, label_nc, hidden), spectral_norm(nn.Conv2d(mid, cout, 3, padding=1))
        self.shortcut = None
        if cin != cout:
            self.norm_s = SpadeNorm(cin, label_nc, hidden)
            self.shortcut = spectral_norm(nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, seg))
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        return skip + self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))


class SpadeGenerator(nn.Module):
    """Label channels (N, L, S, S) -> image (N, C, S, S) in [-1, 1]: a 3x3 conv of the label map
    resized to the start resolution (S/32, at least 4), one residual block per resolution with
    nearest-neighbour upsampling between them, LeakyReLU, 3x3 conv, tanh. Filters
    ``base_filters * min(16, S / resolution)``, as SPADE's 256-px generator."""

    def __init__(self, *, label_nc: int, out_channels: int, size: int, base_filters: int, hidden: int):
        super().__init__()
        start = max(4, size // 32)
        self.start = start
        widths = {r: base_filters * min(16, size // r) for r in (start * 2 ** i for i in range(int(math.log2(size // start)) + 1))}
        resolutions = sorted(widths)
        self.head = nn.Conv2d(label_nc, widths[start], 3, padding=1)
        self.blocks = nn.ModuleList(SpadeResBlock(widths[resolutions[max(0, i - 1)]], widths[r], label_nc, hidden)
                                    for i, r in enumerate(resolutions))
        self.out = nn.Conv2d(widths[size], out_channels, 3, padding=1)

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        x = self.head(F.interpolate(seg, size=(self.start, self.start), mode="nearest"))
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, seg)
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


class TwoScaleDiscriminator(nn.Module):
    """SPADE's multi-scale discriminator with two scales: the (label, image) pair, and the pair
    average-pooled 2x; each scale a MONAI PatchDiscriminator. Returns per scale the list of its
    layers' outputs, the last being the patch scores (what feature matching and hinge use)."""

    def __init__(self, *, in_channels: int, base_filters: int):
        super().__init__()
        self.scales = nn.ModuleList(_spade_patch_discriminator(in_channels, base_filters) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


def _spade_patch_discriminator(in_channels: int, base_filters: int) -> PatchDiscriminator:
    """SPADE's NLayerDiscriminator (n_layers_D 4): 4x4 convs, padding 2, instance norm, spectral
    norm on the inner convolutions."""
    d = PatchDiscriminator(spatial_dims=2, channels=base_filters, in_channels=in_channels, out_channels=1,
                           num_layers_d=3, kernel_size=4, norm="INSTANCE", bias=True, padding=2,
                           last_conv_kernel_size=4)
    for name, layer in d.named_children():
        if name not in ("initial_conv", "final_conv"):
            spectral_norm(layer.conv)
    return d


def hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
