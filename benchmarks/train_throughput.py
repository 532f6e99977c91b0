"""Segmentation training throughput inside the Ray Train loop vs. a bare PyTorch loop (issue 3).

What it measures, in one process and one run, on the same model, batch and data:

  (a) bare   a hand-written PyTorch loop: ``build_network`` (the default ``unet``), Adam, the
             same loss (``build_loss``, default ``dice_ce``), the same batch size, batches drawn
             uniformly with replacement from the same training arrays;
  (b) local  synthmix's loop, ``train_segmentation`` with a ``LocalContext`` (no Ray);
  (c) ray    ``train_segmentation`` inside ``run_on_ray_train`` on 1 Ray Train worker;
  (d) ray-bare  (diagnostic) the bare loop (a) inside that same Ray Train worker, before or after
             (c), alternating by repeat: ray-bare/bare is the cost of the worker process itself,
             ray/ray-bare the cost of synthmix's loop inside it.

The data is the default phantom through the data layer (``write_phantom_dataset``, 64x64,
4 classes; axial slices from the cache; z-score statistics from the training subjects only), so
every variant trains on exactly the same normalised arrays: (a) and (b) load them here, the Ray
worker loads them itself from the same cache, as the orchestrator's workers do.

Steps per second is ``steps / training time``, where training time is the optimiser steps only:
for (a) the timed loop, for (b) and (c) the loop's own ``result.timings["train_s"]``. Validation
is excluded: ``val_every = max_steps``, so the single validation at the end (needed to select the
weights) and the test evaluation are timed separately (``val_s``, ``eval_s``) and not counted.
Each process first runs 3 untimed steps of the bare loop (kernel warm-up); after that the first
step of every variant is counted alike. The Ray variant's end-to-end wall time (worker group
start, data load in the worker, training, validation, evaluation, final result checkpoint) and
the one-off ``ray.init`` time are printed on their own lines: they are not part of the
throughput ratio.

Threads: a Ray worker runs with ``OMP_NUM_THREADS`` = its CPUs, so the worker asks for
``--threads`` CPUs and this process calls ``torch.set_num_threads(--threads)`` for (a) and (b);
the thread count each variant actually had is printed.

The machine is shared: each repeat runs (a), (b), (c) in a rotated order; the RESULT ratios are
of the medians over repeats, and the medians of the per-repeat (paired) ratios are printed too.

Run:

    .venv/bin/python benchmarks/train_throughput.py            # 20 subjects, 60 steps, 3 repeats
    .venv/bin/python benchmarks/train_throughput.py --quick    # smoke run, about a minute
    .venv/bin/python benchmarks/train_throughput.py --cuda     # on a GPU: fp32 vs AMP + channels_last

Read: the ``RESULT`` line gives ray/bare and local/bare steps-per-second ratios and the (d)
diagnostics; the issue's target is ray/bare >= 0.9. A local/bare ratio well below 1 means
synthmix's loop itself costs time per step (sampling, per-step seeding, loss synchronisation);
ray-bare/bare well below 1 means the Ray worker process does (threads, placement, contention
with Ray's own processes). Per-repeat values are printed too: on a loaded machine single
repeats differ by tens of percent, so trust a ratio only when the repeats agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ray import cloudpickle  # the pickler Ray uses for the worker's function

from synthmix.datasets.loader import prepare_split_data
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import build_preprocess_config
from synthmix.datasets.splits import Split
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train
from synthmix.trainers.context import LocalContext
from synthmix.trainers.losses import build_loss
from synthmix.trainers.networks import build_network
from synthmix.trainers.segmentation import SegmentationConfig, SegmentationData, build_segmentation_config, \
    train_segmentation

# The Ray worker runs ``ray_flow`` below; it need not import this script.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PREPROCESS = {"axis": 2}  # axial slices, z-score normalisation (the defaults)


# --- data ------------------------------------------------------------------------------------------


def load_data(args: dict) -> SegmentationData:
    """Train/val/test SliceSets of the benchmark split, from the (already built) cache."""
    ids = args["subjects"]
    split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids["train"]), val=tuple(ids["val"]),
                  test=tuple(ids["test"]), pool=tuple(ids["train"]))
    train, val, test, _ = prepare_split_data(args["manifest"], split, build_preprocess_config(PREPROCESS),
                                             args["cache_root"])
    return SegmentationData(train=train, val=val, test=test)


def make_dataset(root: Path, subjects: int) -> dict:
    """Write the default phantom (64x64, 4 classes) and split it ~70/15/15 by subject."""
    manifest = write_phantom_dataset(root / "phantom", subjects=subjects)
    ids = [f"sub-{i:03d}" for i in range(subjects)]
    n_hold = max(1, round(0.15 * subjects))
    return {"manifest": str(manifest), "cache_root": str(root / "cache"),
            "subjects": {"train": ids[:-2 * n_hold], "val": ids[-2 * n_hold:-n_hold], "test": ids[-n_hold:]}}


# --- the three variants ----------------------------------------------------------------------------


def bare_loop(config: SegmentationConfig, data: SegmentationData, seed: int, *, device: str = "cpu",
              amp: bool = False, channels_last: bool = False) -> dict:
    """(a): the loop a user would write by hand, timed over all ``max_steps`` steps; on CUDA
    optionally with float16 autocast + loss scaling and channels-last memory layout."""
    train = data.train
    torch.manual_seed(config.seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_network(config.architecture, in_channels=train.images.shape[1],
                          num_classes=train.num_classes, options=config.network).to(device, memory_format=layout)
    loss_fn = build_loss(config.loss, num_classes=train.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rng = np.random.default_rng(seed)
    model.train()
    tick = time.perf_counter()
    for _ in range(config.max_steps):
        idx = rng.integers(0, len(train), size=config.batch_size)
        x = torch.from_numpy(train.images[idx]).to(device).contiguous(memory_format=layout)
        y = torch.from_numpy(train.labels[idx]).to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # what any loop does to log the loss (and a CUDA sync before the clock stops)
    train_s = time.perf_counter() - tick
    return {"steps": config.max_steps, "train_s": train_s, "threads": torch.get_num_threads()}


def local_loop(config: SegmentationConfig, data: SegmentationData, checkpoint_root: Path,
               device: str = "cpu") -> dict:
    """(b): synthmix's loop in this process."""
    tick = time.perf_counter()
    result = train_segmentation(config, data, LocalContext(device, checkpoint_root=checkpoint_root))
    return {"steps": result.steps_done, **result.timings, "flow_s": time.perf_counter() - tick,
            "threads": torch.get_num_threads()}


def ray_flow(args: dict, context) -> dict:
    """(c), on the Ray Train worker: load the same arrays, run synthmix's loop; also (d), the
    bare loop in the same worker (before or after, alternating by repeat). Wall-clock timestamps
    (same machine as the driver) split the end-to-end time into its phases."""
    entered = time.time()
    data = load_data(args)
    loaded = time.time()
    config = build_segmentation_config(args["config"])
    bare_loop(dataclasses.replace(config, max_steps=3), data, seed=config.seed)  # warm-up, as in the driver
    worker_bare = bare_loop(config, data, seed=config.seed) if args["bare_first"] else None
    tick = time.perf_counter()
    result = train_segmentation(config, data, context)
    flow_s = time.perf_counter() - tick
    if worker_bare is None:
        worker_bare = bare_loop(config, data, seed=config.seed)
    return {"steps": result.steps_done, **result.timings, "flow_s": flow_s, "worker_bare": worker_bare,
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "t_entered": entered, "t_loaded": loaded, "t_done": time.time()}


def ray_loop(args: dict, threads: int, storage: Path, name: str) -> dict:
    start = time.time()
    out = run_on_ray_train(ray_flow, args, name=name, storage_path=str(storage),
                           scaling=Scaling(workers=1, cpus_per_worker=threads), max_failures=0)
    end = time.time()
    return {**out, "wall_s": end - start, "start_s": out["t_entered"] - start,
            "load_s": out["t_loaded"] - out["t_entered"], "finish_s": end - out["t_done"]}


# --- reporting -------------------------------------------------------------------------------------


def steps_per_s(r: dict) -> float:
    return r["steps"] / r["train_s"]


def median(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def outside_timings(r: dict) -> float:
    """Time train_segmentation spent outside its train/val/eval timings (set-up, reports)."""
    return r["flow_s"] - r["train_s"] - r["val_s"] - r["eval_s"]


def report(runs: dict[str, list[dict]], ray_init_s: float) -> None:
    runs = {**runs, "ray-bare": [r["worker_bare"] for r in runs["ray"]]}
    print()
    print(f"{'variant':8s} {'threads':>7s} {'steps/s (median)':>17s}   per repeat")
    for name, rs in runs.items():
        per = " ".join(f"{steps_per_s(r):.3f}" for r in rs)
        print(f"{name:8s} {rs[0]['threads']:7d} {median(rs, steps_per_s):17.3f}   {per}")
    ray_runs = runs["ray"]
    print("(ray-bare: the bare loop (a) run inside the same Ray Train worker, a diagnostic: "
          "ray-bare/bare isolates the worker process, ray/ray-bare synthmix's loop inside it)")
    print(f"ray worker OMP_NUM_THREADS={ray_runs[0]['omp_num_threads']}, torch threads {ray_runs[0]['threads']}")
    for name in ("local", "ray"):
        rs = runs[name]
        print(f"{name}: median train_s {median(rs, lambda r: r['train_s']):.2f} s; not in steps/s: val_s "
              f"{median(rs, lambda r: r['val_s']):.2f} s, eval_s {median(rs, lambda r: r['eval_s']):.2f} s, "
              f"set-up and reports {median(rs, outside_timings):.2f} s")
    phases = ", ".join(f"{label} {median(ray_runs, lambda r: r[key]):.2f} s" for label, key in (
        ("worker group start", "start_s"), ("data load", "load_s"), ("train_segmentation", "flow_s"),
        ("result checkpoint + shutdown", "finish_s")))
    print(f"ray end-to-end wall per run_on_ray_train (median, not in the ratio; includes the ray-bare loop): "
          f"{median(ray_runs, lambda r: r['wall_s']):.2f} s; phases: {phases}; ray.init once: {ray_init_s:.2f} s")
    bare = median(runs["bare"], steps_per_s)
    local = median(runs["local"], steps_per_s)
    ray_sps = median(ray_runs, steps_per_s)
    ray_bare = median(runs["ray-bare"], steps_per_s)
    def paired(num: str, den: str) -> str:  # per-repeat ratios cancel load that drifts between repeats
        values = [steps_per_s(n) / steps_per_s(d) for n, d in zip(runs[num], runs[den])]
        return f"{num}/{den} {statistics.median(values):.3f} ({' '.join(f'{v:.2f}' for v in values)})"

    print("paired per-repeat ratios, median (per repeat): " + "; ".join(
        paired(n, d) for n, d in (("ray", "bare"), ("local", "bare"), ("ray", "ray-bare"))))
    print(f"RESULT steps/s ratio ray/bare (c)/(a) = {ray_sps / bare:.3f} (target >= 0.9); "
          f"local/bare (b)/(a) = {local / bare:.3f}; ray/local (c)/(b) = {ray_sps / local:.3f}; "
          f"diagnostic: ray-bare/bare = {ray_bare / bare:.3f}, ray/ray-bare = {ray_sps / ray_bare:.3f} "
          f"(ratios of medians)")


# --- CUDA: fp32 vs mixed precision ------------------------------------------------------------------


def cuda_compare(config: SegmentationConfig, data: SegmentationData, root: Path, repeats: int) -> None:
    """``--cuda``: steps/s on the GPU, fp32 vs float16 AMP + channels-last for the bare loop, and
    synthmix's loop with ``amp`` off vs on (its config has no channels-last switch)."""
    bare_loop(dataclasses.replace(config, max_steps=3), data, seed=0, device="cuda")  # warm-up
    variants = {
        "bare-fp32": lambda r: bare_loop(config, data, seed=config.seed, device="cuda"),
        "bare-amp-cl": lambda r: bare_loop(config, data, seed=config.seed, device="cuda", amp=True,
                                           channels_last=True),
        "local-fp32": lambda r: local_loop(config, data, root / f"ckpt-fp32-{r}", device="cuda"),
        "local-amp": lambda r: local_loop(dataclasses.replace(config, amp=True), data, root / f"ckpt-amp-{r}",
                                          device="cuda"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(repeats):
        for name in order[r % 4:] + order[:r % 4]:
            runs[name].append(variants[name](r))
            print(f"repeat {r} {name:11s}: {steps_per_s(runs[name][-1]):.2f} steps/s", flush=True)
    sps = {name: median(rs, steps_per_s) for name, rs in runs.items()}
    print(f"GPU {torch.cuda.get_device_name(0)}; median steps/s: "
          + ", ".join(f"{name} {v:.2f}" for name, v in sps.items()))
    print(f"RESULT cuda steps/s ratio AMP + channels_last / fp32 (bare loop) = "
          f"{sps['bare-amp-cl'] / sps['bare-fp32']:.3f}; synthmix loop amp / fp32 = "
          f"{sps['local-amp'] / sps['local-fp32']:.3f}")


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 subjects, 8 steps, 1 repeat")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per measurement (60)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of (a), (b), (c) (3)")
    parser.add_argument("--subjects", type=int, default=None, help="phantom subjects (20, the default phantom)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads here = CPUs of the Ray worker")
    parser.add_argument("--cuda", action="store_true", help="on the GPU: fp32 vs AMP + channels_last, no Ray")
    parser.add_argument("--batch-size", type=int, default=None, help="segmentation batch size (8)")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 60)
    repeats = args.repeats or (1 if args.quick else 3)
    subjects = args.subjects or (6 if args.quick else 20)
    torch.set_num_threads(args.threads)

    import ray

    with tempfile.TemporaryDirectory(prefix="synthmix-throughput-") as tmp:
        root = Path(tmp)
        dataset = make_dataset(root, subjects)
        data = load_data(dataset)  # also builds the cache the Ray worker reads
        config_dict = {"max_steps": steps, "val_every": steps, "checkpoint_every": steps, "seed": 0}
        if args.batch_size:
            config_dict["batch_size"] = args.batch_size
        config = build_segmentation_config(config_dict)
        print(f"data: default phantom, {subjects} subjects, {len(data.train)} train / {len(data.val)} val / "
              f"{len(data.test)} test slices of {data.train.images.shape[1:]}, {data.train.num_classes} classes")
        print(f"model: {config.architecture} {config.network}, loss {config.loss}, batch {config.batch_size}, "
              f"{steps} steps per measurement, {repeats} repeat(s); validation only at the last step")
        print(f"load: {os.getloadavg()[0]:.2f} (1-min load average) on {os.cpu_count()} CPUs")
        if args.cuda:
            if not torch.cuda.is_available():
                raise SystemExit("--cuda: torch sees no CUDA device")
            return cuda_compare(config, data, root, repeats)

        tick = time.perf_counter()
        ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
        ray_init_s = time.perf_counter() - tick
        runs: dict[str, list[dict]] = {"bare": [], "local": [], "ray": []}
        bare_loop(dataclasses.replace(config, max_steps=3), data, seed=0)  # warm-up, not timed
        try:
            variants = {
                "bare": lambda r: bare_loop(config, data, seed=config.seed),
                "local": lambda r: local_loop(config, data, root / f"ckpt-{r}"),
                "ray": lambda r: ray_loop({**dataset, "config": config_dict, "bare_first": r % 2 == 0}, args.threads,
                                          root / "ray", f"throughput-{r}"),
            }
            order = list(variants)
            for r in range(repeats):
                for name in order[r % 3:] + order[:r % 3]:  # rotate so drift hits each variant alike
                    runs[name].append(variants[name](r))
                    print(f"repeat {r} {name:5s}: {steps_per_s(runs[name][-1]):.3f} steps/s", flush=True)
        finally:
            ray.shutdown()
    report(runs, ray_init_s)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
