"""Sampling shared by the noise-to-joint-picture families (DCGAN, progressive GANs).

``NoiseSampler`` turns a network that maps latent vectors to joint pictures into the family
contract's ``sample(n, *, seed, device, masks=None) -> Samples``: latents from a CPU
torch.Generator seeded with ``seed`` (the same seed gives the same pairs on any device), drawn
in batches, decoded by the shared ``JointEncoding``. Extras: the raw label channels (for
re-decoding clean-ups) and each latent's norm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from synthmix.trainers.generators.encoding import JointEncoding
from synthmix.trainers.synthetic import Samples


class NoiseSampler(nn.Module):
    def __init__(self, network: nn.Module, *, latent_dim: int, encoding: JointEncoding, batch_size: int = 64):
        super().__init__()
        self.network, self.latent_dim, self.encoding, self.batch_size = network, latent_dim, encoding, batch_size

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        if masks is not None:
            raise ValueError("this generator family is unconditional: it takes no masks")
        self.network.eval().to(device)  # batch norm on running statistics: no batch-mate effects
        noise = torch.Generator().manual_seed(int(seed))
        parts = []
        for start in range(0, n, self.batch_size):
            z = torch.randn(min(self.batch_size, n - start), self.latent_dim, generator=noise)
            images, channels = self.encoding.split(self.network(z.to(device)))
            parts.append(Samples(images.cpu().numpy().astype(np.float32),
                                 self.encoding.decode_labels(channels).cpu().numpy().astype(np.int64),
                                 {"label_channels": channels.float().cpu().numpy(),
                                  "latent_norm": z.norm(dim=1).numpy()}))
        return Samples.concat(parts)
