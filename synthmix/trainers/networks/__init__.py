"""Segmentation networks, keyed by the name used in a study's YAML (``architecture:``).

An entry is ``build(*, in_channels: int, num_classes: int, **options) -> nn.Module``; the module
maps images (B, in_channels, H, W) to logits (B, num_classes, H, W) for any H, W (networks that
downsample pad internally and crop back). Options are the entry's keyword arguments;
``build_network`` checks them against the entry's signature so a misspelt YAML key fails with
its name before any training time is spent.

Entries: ``unet`` (003's constant-width and 004's doubling UNet), ``uresnet`` (000's residual
UNet, MONAI), ``deepmedic2d`` (000's dual-pathway CNN in 2D), ``fcn8s`` (002's FCN-8s).
Adding one is a module here and one ``NETWORKS.add`` line.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from synthmix.errors import StudyError
from synthmix.registry import Registry
from synthmix.trainers.networks.deepmedic import build_deepmedic2d
from synthmix.trainers.networks.fcn import build_fcn8s
from synthmix.trainers.networks.unet import build_unet
from synthmix.trainers.networks.uresnet import build_uresnet

NETWORKS: Registry[Callable[..., nn.Module]] = Registry("network")
NETWORKS.add("unet", build_unet)
NETWORKS.add("uresnet", build_uresnet)
NETWORKS.add("deepmedic2d", build_deepmedic2d)
NETWORKS.add("fcn8s", build_fcn8s)


def network_option_names(name: str) -> list[str]:
    """The options (YAML keys under ``network:``) that entry ``name`` accepts."""
    params = inspect.signature(NETWORKS.get(name)).parameters
    return [p for p in params if p not in ("in_channels", "num_classes")]


def check_network_options(name: str, options: dict[str, Any]) -> list[str]:
    """Problems with ``options`` for network ``name`` (empty when valid), each naming its key."""
    known = network_option_names(name)
    return [f"network {name!r}: unknown option {key!r}; known: {', '.join(known)}"
            for key in options if key not in known]


def build_network(name: str, *, in_channels: int, num_classes: int,
                  options: dict[str, Any] | None = None) -> nn.Module:
    """Build registry entry ``name`` with ``options``; unknown options raise StudyError naming them."""
    options = dict(options or {})
    problems = check_network_options(name, options)
    if problems:
        raise StudyError(problems, source="network")
    return NETWORKS.get(name)(in_channels=in_channels, num_classes=num_classes, **options)


__all__ = ["NETWORKS", "build_network", "check_network_options", "network_option_names"]
