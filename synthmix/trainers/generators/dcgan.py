"""The joint image+label DCGAN of Neff et al. (003): networks, label encoding, sampling.

The generator draws image and label map together as one multi-channel picture in [-1, 1]
(tanh): the image channels first, then the label channels. The critic judges such pairs. The
label map is one channel per class (one-hot scaled to [-1, 1]) for more than two classes, or a
single channel in [-1, 1] for a binary label, which sampling thresholds at 0 as 003 does.

Written by hand rather than taken from MONAI: MONAI has no DCGAN generator/critic pair whose
depth follows the resolution, and the network is a few lines. Following 003: DCGAN layout,
He initialisation, ReLU + batch norm in the generator, tanh output. One departure by default:
the generator upsamples by nearest-neighbour resize + 3x3 conv instead of strided transposed
convs (``upsampling="transpose"`` keeps DCGAN's), which removed the checkerboard pattern that
dominated short CPU runs. The critic follows the
WGAN-GP reference code 003 builds on: no batch norm (the gradient penalty is per sample) and
LeakyReLU(0.2).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZES = (32, 64, 128, 256)


def check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"image size {size} is not supported; the DCGAN generator needs one of {SIZES}")


UPSAMPLING = ("resize", "transpose")


def _channels(base_filters: int, size: int, resolution: int) -> int:
    """Filters at a given resolution: base at size/2, doubling per halving, capped at 8x."""
    return base_filters * min(8, size // (2 * resolution))


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation, 003, with the fan-in a layer really has."""
    if isinstance(module, nn.ConvTranspose2d):
        # torch reads a transposed weight (in, out, k, k) as if out were the fan-in; each output
        # pixel of a stride-s transposed conv sums in * k * k / s^2 terms.
        k, s = module.kernel_size[0], module.stride[0]
        fan_in = module.in_channels * k * k / (s * s)
        nn.init.normal_(module.weight, std=(2.0 / fan_in) ** 0.5)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


def _up_block(cin: int, cout: int, upsampling: str) -> list[nn.Module]:
    """Double the resolution: nearest-neighbour resize + 3x3 conv ("resize", free of the
    checkerboard pattern of strided transposed convolutions, Odena et al. 2016) or DCGAN's 4x4
    stride-2 transposed conv ("transpose")."""
    if upsampling == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)]
    if upsampling == "transpose":
        return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
    raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")


class Generator(nn.Module):
    """Latent vector (N, latent_dim) -> joint picture (N, out_channels, size, size) in [-1, 1].

    DCGAN layout: a linear projection to 4x4, one up block (upsampling, batch norm, ReLU) per
    doubling up to size/2, and a last up block straight to the output channels with tanh.
    """

    def __init__(self, *, latent_dim: int, out_channels: int, size: int, base_filters: int,
                 upsampling: str = "resize"):
        super().__init__()
        check_size(size)
        self.latent_dim = latent_dim
        c4 = _channels(base_filters, size, 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, c4 * 16), nn.Unflatten(1, (c4, 4, 4)),
                                     nn.BatchNorm2d(c4), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        resolution = 4
        while resolution < size // 2:
            cin, cout = _channels(base_filters, size, resolution), _channels(base_filters, size, 2 * resolution)
            layers += [*_up_block(cin, cout, upsampling), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            resolution *= 2
        layers += [*_up_block(_channels(base_filters, size, resolution), out_channels, upsampling), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.apply(_he_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(z))


class Critic(nn.Module):
    """Joint picture (N, in_channels, size, size) -> unbounded score (N,)."""

    def __init__(self, *, in_channels: int, size: int, base_filters: int):
        super().__init__()
        check_size(size)
        layers: list[nn.Module] = []
        cin, resolution = in_channels, size
        while resolution > 4:
            cout = _channels(base_filters, size, resolution // 2)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin, resolution = cout, resolution // 2
        layers += [nn.Flatten(), nn.Linear(cin * 16, 1)]
        self.net = nn.Sequential(*layers)
        self.apply(_he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# ---- label and intensity encoding -------------------------------------------------------------

def label_channels(num_classes: int) -> int:
    """One channel per class for K > 2, a single channel for a binary label."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def encode_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) int -> (N, L, H, W) float in [-1, 1]."""
    if num_classes == 2:
        return labels.unsqueeze(1).float() * 2 - 1
    onehot = nn.functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    return onehot * 2 - 1


def decode_labels(channels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, L, H, W) float -> (N, H, W) int64: threshold at 0 (binary) or argmax over classes."""
    if num_classes == 2:
        return (channels[:, 0] > 0).long()
    return channels.argmax(dim=1)


class IntensityMap:
    """Per-channel affine map between the data's normalised space and the tanh range [-1, 1].

    The tanh output cannot reach z-scored values beyond +-1, so the generator works on the
    training images rescaled channel-wise from [low, high] to [-1, 1] and clipped there;
    samples are mapped back, so callers see the same intensity space as the SliceSet they gave.
    ``fit`` takes low/high as robust percentiles (0.5, 99.5 by default) rather than min/max: a
    few very bright voxels (z-scores near 8 on the phantom) would otherwise squeeze all tissue
    into a small part of the tanh range.
    """

    PERCENTILES = (0.5, 99.5)

    def __init__(self, low: list[float], high: list[float]):
        self.low = [float(v) for v in low]
        self.high = [float(h) if h > l else float(l) + 1.0 for l, h in zip(self.low, high)]

    @classmethod
    def fit(cls, images: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> "IntensityMap":
        low, high = np.percentile(images, percentiles, axis=(0, 2, 3))
        return cls(low.tolist(), high.tolist())

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.tensor(self.low, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        high = torch.tensor(self.high, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return low, high

    def to_tanh(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self._affine(images)
        return ((images - low) / (high - low) * 2 - 1).clamp(-1, 1)

    def from_tanh(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self._affine(x)
        return (x + 1) / 2 * (high - low) + low

    def to_dict(self) -> dict:
        return {"kind": "per-channel percentiles of the training images mapped to [-1, 1], clipped",
                "low": self.low, "high": self.high}


def encode_pairs(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 intensity: IntensityMap) -> torch.Tensor:
    """Image (N, C, H, W) + label (N, H, W) -> joint picture (N, C + L, H, W) in [-1, 1]."""
    return torch.cat([intensity.to_tanh(images.float()), encode_labels(labels, num_classes)], dim=1)


# ---- sampling ----------------------------------------------------------------------------------

class JointSampler(nn.Module):
    """A generator plus what it takes to turn its output into (image, integer label) pairs.

    ``sample`` is the contract every generator family's loaded module offers to
    GeneratorArtifact: ``sample(n, *, seed, device) -> (images (n, C, H, W) float32 numpy in the
    data's intensity space, labels (n, H, W) int64 numpy)``.
    """

    def __init__(self, generator: Generator, *, image_channels: int, num_classes: int,
                 intensity: IntensityMap, batch_size: int = 64):
        super().__init__()
        self.generator = generator
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.intensity = intensity
        self.batch_size = batch_size

    def decode(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.intensity.from_tanh(joint[:, : self.image_channels].float())
        return images, decode_labels(joint[:, self.image_channels:], self.num_classes)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """n pairs, drawn in batches from latent vectors of a CPU torch.Generator seeded with
        ``seed`` (the same seed gives the same pairs on any device). Batch norm runs on its
        running statistics (eval mode), so a sample does not depend on its batch-mates."""
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        was_training = self.generator.training
        self.generator.eval().to(device)
        noise = torch.Generator().manual_seed(int(seed))
        images, labels = [], []
        for start in range(0, n, self.batch_size):
            z = torch.randn(min(self.batch_size, n - start), self.generator.latent_dim, generator=noise)
            img, lab = self.decode(self.generator(z.to(device)))
            images.append(img.cpu().numpy().astype(np.float32))
            labels.append(lab.cpu().numpy().astype(np.int64))
        self.generator.train(was_training)
        return np.concatenate(images), np.concatenate(labels)


def build_generator(*, latent_dim: int, image_channels: int, num_classes: int, size: int,
                    base_filters: int, seed: int, upsampling: str = "resize") -> Generator:
    """The generator with the initial weights that ``seed`` gives (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(latent_dim=latent_dim, out_channels=image_channels + label_channels(num_classes),
                         size=size, base_filters=base_filters, upsampling=upsampling)


def build_critic(*, image_channels: int, num_classes: int, size: int, base_filters: int, seed: int) -> Critic:
    """The critic with the initial weights that ``seed`` gives (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # a different stream from the generator's
        return Critic(in_channels=image_channels + label_channels(num_classes), size=size,
                      base_filters=base_filters)


def load_sampler(state: dict, device: str | torch.device = "cpu", *, trained: bool = True) -> JointSampler:
    """Rebuild the sampler from an artifact's ``generator.pt`` dict; ``trained=False`` gives the
    same architecture with the initial weights its seed gives (the untrained reference)."""
    config, (channels, size, _) = state["config"], state["image_shape"]
    generator = build_generator(latent_dim=config["latent_dim"], image_channels=channels,
                                num_classes=state["num_classes"], size=size,
                                base_filters=config["base_filters"], seed=config["seed"],
                                upsampling=config["upsampling"])
    if trained:
        generator.load_state_dict(state["weights"])
    intensity = IntensityMap(state["normalisation"]["low"], state["normalisation"]["high"])
    sampler = JointSampler(generator, image_channels=channels, num_classes=state["num_classes"],
                           intensity=intensity)
    return sampler.to(device).eval()
