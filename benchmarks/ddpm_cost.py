"""Times ``ddpm`` UNet training steps and sampling passes on the CPU and fits the cost model's
per-unit constants (``ddpm.TRAIN_SECONDS``, ``ddpm.SAMPLE_SECONDS``).

For each network (channels, attention) and slice size below, it times a training step of the
family's loop (MONAI's DiffusionInferer forward, MSE, backward, gradient clipping, Adam) at
batch 16 and one DDIM sampling pass (a no-grad UNet forward) at batch 32, in process CPU time
on one torch thread, then fits per-sample seconds = the sum over ``ddpm._work``'s terms (layer,
conv, activation, attention) of constant x work, by non-negative least squares. It prints each
point's measured and modelled seconds and their ratio, and the constants to paste into ``ddpm.py``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ddpm_cost.py [--repeats 3]

Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler
from scipy.optimize import nnls

from synthmix.trainers.generators import ddpm

CHANNELS = 5  # the default phantom's joint picture: 1 image + 4 one-hot label channels
POINTS = [  # (slice size, config overrides)
    (16, {}),
    (32, {}),
    (32, {"channels": [32, 64, 64]}),
    (64, {}),
    (64, {"channels": [16, 32, 64], "attention": [False, False, True]}),
    (64, {"channels": [16, 32, 64], "attention": [False, False, False]}),
    (64, {"channels": [16, 32, 64, 64], "attention": [False, False, False, False]}),
]
KEYS = ("layer", "conv", "activation", "attention")


def _cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator and kernels
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def time_point(size: int, overrides: dict, repeats: int) -> tuple[float, float]:
    """(train step, sampling pass) CPU seconds per sample."""
    config = ddpm.build_config(overrides)
    unet = ddpm.build_unet(config, CHANNELS, (size, size), seed=0)
    opt = torch.optim.Adam(unet.parameters(), lr=config.lr)
    scheduler = DDPMScheduler(**ddpm._scheduler_args(config))
    inferer = DiffusionInferer(scheduler)
    x0 = torch.rand(16, CHANNELS, size, size) * 2 - 1

    def train_step():
        noise, t = torch.randn_like(x0), torch.randint(0, config.train_timesteps, (len(x0),))
        loss = torch.nn.functional.mse_loss(inferer(inputs=x0, diffusion_model=unet, noise=noise, timesteps=t),
                                            scheduler.get_velocity(x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()

    x_t, t = torch.randn(32, CHANNELS, size, size), torch.full((32,), 500)

    @torch.no_grad()
    def sample_pass():
        unet(x_t, timesteps=t)

    return _cpu_seconds(train_step, repeats) / len(x0), _cpu_seconds(sample_pass, repeats) / len(x_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, work = [], []
    for size, overrides in POINTS:
        train, sample = time_point(size, overrides, args.repeats)
        w = ddpm._work(ddpm.build_config(overrides), (size, size))
        rows.append((size, overrides, train, sample))
        work.append([w[k] for k in KEYS])
        print(f"{size}x{size} {overrides or 'default'}: train {train * 1e3:.2f} ms/sample, "
              f"sample pass {sample * 1e3:.2f} ms/sample")
    work = np.array(work)
    for name, column in (("TRAIN_SECONDS", 2), ("SAMPLE_SECONDS", 3)):
        measured = np.array([r[column] for r in rows])
        scale = work.max(axis=0)  # nnls on comparable columns
        fit, _ = nnls(work / scale, measured)
        constants = dict(zip(KEYS, fit / scale))
        print(f"{name} = {{" + ", ".join(f'"{k}": {v:.3g}' for k, v in constants.items()) + "}")
        for (size, overrides, *_), m, w in zip(rows, measured, work):
            model = float(np.dot(w, fit / scale))
            print(f"  {size}x{size} {overrides or 'default'}: measured {m * 1e3:.2f} ms, model {model * 1e3:.2f} ms, "
                  f"ratio {m / model:.2f}")


if __name__ == "__main__":
    main()
