"""Generator families: GAN (or other) models that learn joint image+label pairs from a cell's
labelled training subset, one registry entry per family, named as in the study YAML.

``GENERATORS`` maps a name to a ``GeneratorFamily`` with three functions:

- ``config(d: dict) -> config``: validate the YAML options (unknown keys rejected by name) into
  the family's frozen config dataclass;
- ``train(config, data: SliceSet, context: TrainContext, out_dir: Path) -> GeneratorArtifact``:
  train on ``data`` only (rule 3), resuming from ``context.latest_checkpoint()``, reporting and
  checkpointing through ``context.report``; rank 0 writes the complete artifact folder
  (artifact.py lists its files; ``generator.pt`` is a dict holding at least ``family``,
  ``config``, ``image_shape``, ``num_classes``, ``normalisation``);
- ``load(state: dict, device, *, trained: bool) -> nn.Module``: rebuild the network from that
  dict (``trained=False``: the seeded initial weights, the quality reference); the module has
  ``sample(n, *, seed, device) -> (images (n, C, H, W) float32, labels (n, H, W) int64)``.

Adding a family (PGGAN, pix2pix, SPADE, diffusion) is one module providing these three and one
``GENERATORS.add(...)`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from synthmix.registry import Registry


@dataclass(frozen=True)
class GeneratorFamily:
    config: Callable[[dict], Any]
    train: Callable[..., Any]
    load: Callable[..., Any]


GENERATORS: Registry[GeneratorFamily] = Registry("generator")


def _register() -> None:
    from synthmix.trainers.generators import dcgan, training

    GENERATORS.add(training.FAMILY, GeneratorFamily(config=training.build_generator_config,
                                                    train=training.train_generator,
                                                    load=dcgan.load_sampler))


_register()
