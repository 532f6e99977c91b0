"""The tiny study the end-to-end tests run through a real Ray (local storage and S3): 8 phantom
subjects at 32x32, tens of steps per training. Not a test module: imported by the tests."""

from __future__ import annotations

_TEMPLATE = """\
name: tiny
seed: 0
dataset:
  phantom: {subjects: 8, size: 32, classes: 3, seed: 0}
  preprocess: {axis: 2}
split: {test: 0.25, val: 0.25, repeats: 1}
factors:
  real_fraction: REAL_FRACTIONS
  synthetic: [0, 1.0]
  architecture: [unet]
  augmentation: [none]
segmenter:
  network: {levels: 2, base_filters: 4, doubling: true, batch_norm: true}
  batch_size: 4
  lr: LR
  max_steps: 10
  val_every: 5
  checkpoint_every: 5
generator:
  name: dcgan_wgangp
  config: {base_filters: 8, latent_dim: 16, batch_size: 8, steps: 4, checkpoint_every: 2}
  pool: {size: 64}
  quality: {samples: 16, reference_steps: 5}
mixing: {policy: additive, source: pool}
resources: {workers: 1, cpus_per_worker: 1, max_failures: 1}
"""


def tiny_study_yaml(*, real_fractions: str = "[0.5, 1.0]", lr: float = 1e-3) -> str:
    """The study's YAML text: 2 synthetic levels x the given real fractions, 1 repeat."""
    return _TEMPLATE.replace("REAL_FRACTIONS", real_fractions).replace("LR", repr(lr))


def sigkill_when(driver, condition, *, timeout: float, what: str) -> None:
    """SIGKILL the ``driver`` process as soon as ``condition()`` holds; fail (with the driver's
    output if it ended) when it does not within ``timeout`` seconds."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
    assert condition(), driver.communicate()[0] if driver.poll() is not None else f"no {what} in {timeout:.0f} s"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the embedded Ray notices its driver is gone
