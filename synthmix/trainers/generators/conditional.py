"""Pieces shared by the label-to-image families (``pix2pix``, ``spade_two_stage``'s stage 2).

- ``build_options``: a family's frozen options dataclass from its YAML dict, unknown keys
  rejected by name, lists turned into the tuples the dataclass declares;
- ``check_options``: the usual checks of such a dataclass (positive integers, positive and
  non-negative numbers, Adam betas), every problem reported at once;
- ``square_power_of_two``: the ``fit_shape`` of encoder-decoder networks that halve the slice
  down to a few pixels;
- ``translate``: label maps -> images through a label-to-image network, in batches, with the
  network's noise (dropout) drawn from a seeded stream, so a seed gives the same images;
- ``MaskSampler``: the family contract's sampler for a mask-conditional generator;
- ``update``: one optimiser step on a loss.

Written here rather than taken from a library: these are the few lines both families would
otherwise each hold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from synthmix.errors import StudyError
from synthmix.trainers.generators.encoding import JointEncoding, encode_labels
from synthmix.trainers.synthetic import Samples


def build_options(cls: type, d: dict, *, family: str, source: str = "generator config") -> Any:
    """``cls(**d)`` with unknown keys named, and lists given for tuple fields made tuples."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown {family} option (known: {', '.join(sorted(known))})" for k in unknown],
                         source=source)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(options: Any, *, positive_ints: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                  non_negative: tuple[str, ...] = (), betas: tuple[str, ...] = (), source: str = "generator config",
                  problems: list[str] | None = None) -> None:
    """Raise one StudyError listing every field of ``options`` that breaks its rule (and any
    ``problems`` the caller found itself)."""
    problems = list(problems or [])
    for name in positive_ints:
        value = getattr(options, name)
        if not _is_int(value) or value < 1:
            problems.append(f"{name}: must be a positive integer, got {value!r}")
    for name, rule, ok in [(n, "positive", lambda v: v > 0) for n in positive] + \
                          [(n, "non-negative", lambda v: v >= 0) for n in non_negative]:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            problems.append(f"{name}: must be a {rule} number, got {value!r}")
    for name in betas:
        value = getattr(options, name)
        if not isinstance(value, tuple) or len(value) != 2 or not all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in value):
            problems.append(f"{name}: must be two numbers in [0, 1), got {value!r}")
    if problems:
        raise StudyError(problems, source=source)


def square_power_of_two(h: int, w: int, *, minimum: int, maximum: int = 1024, family: str) -> tuple[int, int]:
    """The smallest square power of two holding an h x w slice, at least ``minimum``."""
    size = minimum
    while size < max(h, w):
        size *= 2
    if size > maximum:
        raise ValueError(f"slices of {h}x{w} exceed the largest {family} size {maximum}; "
                         f"set dataset.preprocess.resize (or crop) to at most {maximum}x{maximum}")
    return size, size


def dropout_on(network: nn.Module) -> nn.Module:
    """Eval mode (running statistics, no spectral-norm updates) with dropout left on: pix2pix's
    noise at sampling time."""
    network.eval()
    for module in network.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    return network


@torch.no_grad()
def translate(network: nn.Module, labels: np.ndarray, encoding: JointEncoding, *, seed: int,
              device: str | torch.device = "cpu", batch_size: int = 64) -> np.ndarray:
    """(n, H, W) label maps -> (n, C, H, W) float32 images in the data's intensity space. The
    network maps label channels in [-1, 1] (``encode_labels``) to image channels in [-1, 1];
    any randomness it uses (dropout) comes from torch's generator seeded with ``seed``."""
    device = torch.device(device)
    network.to(device)
    parts = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        for start in range(0, len(labels), batch_size):
            chunk = torch.as_tensor(np.asarray(labels[start:start + batch_size]), dtype=torch.long, device=device)
            out = network(encode_labels(chunk, encoding.num_classes))
            parts.append(encoding.intensity.from_tanh(out.float()).cpu().numpy().astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, encoding.image_channels, *labels.shape[1:]), np.float32)


class MaskSampler(nn.Module):
    """``sample(n, *, seed, device, masks)``: the images a label-to-image network makes for
    ``masks`` (n, H, W); a sample's label is its mask."""

    def __init__(self, network: nn.Module, encoding: JointEncoding, family: str):
        super().__init__()
        self.network, self.encoding, self.family = network, encoding, family

    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if masks is None:
            raise ValueError(f"{self.family} is mask-conditional: give sample(..., masks=) (n, H, W) label maps")
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != n:
            raise ValueError(f"masks must be ({n}, H, W) label maps, got shape {masks.shape}")
        if masks.size and (masks.min() < 0 or masks.max() >= self.encoding.num_classes):
            raise ValueError(f"masks hold labels outside [0, {self.encoding.num_classes})")
        dropout_on(self.network)
        images = translate(self.network, masks, self.encoding, seed=seed, device=device)
        return Samples(images, masks.astype(np.int64), {})


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Zero the gradients, back-propagate ``loss``, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
