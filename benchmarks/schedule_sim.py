"""Scheduling simulator: a plan replayed through the real cell queue on G GPUs (issue 16).

The decisions come from ``synthmix.orchestrator.capacity.CellQueue``, the Tune searcher that
``synthmix run`` uses, with a fixed ``ClusterLimit`` of G GPUs' worth of trainings: at each
event (a training ends, a generator is finished) the simulator asks the queue for cells until it
returns none, exactly as Tune does. A cell handed out for a generator key nobody has trained
trains it and then runs its own segmentation in the same slot (as a trial does); a cell handed
out while another cell is still training its key would wait in its slot, which the simulator
counts ("slot time spent waiting"; the queue never does that).

Printed for each G: the makespan; the lower bound max(critical path, total work / G), where the
critical path is the longest generator + segmentation chain and the work counts each generator
once; GPU utilisation; and the same for the naive order: every generator first, then every cell
in plan order once all generators are finished. The ratios are on lines of their own:

    makespan / lower bound: 1.034
    naive makespan / lower bound: 1.312

Default input: 000's five Table-1 grids at the paper's durations (GAN 36 h, UNet 4 h, UResNet
and DeepMedic 24 h, on one GTX 1080 Ti each). The Bowles presets (``bowles2018-*``) run each grid
as a study of its own, so they do not share the cells the grids have in common; the plan of what
the paper ran is written here from the paper (``paper_table1``): the union of the five grids
(cells shared between grids run once), CT cells x 8 repeats, MR cells x 14, one GAN per dataset
and real fraction, as the paper trained them: 502 cells, 13 GAN trainings. ``--study`` replays a
study's own plan instead, its durations either a table per network and generator (``--table``,
hours) or the plan's own estimates (``--durations estimate``, from ``expand.cell_costs``).

``--ray`` is the real-Ray check: a small phantom study run by ``run_study`` on a local Ray with
logical GPUs (``ray.init(num_gpus=G)``), every training replaced by the test-only sleeping trainer
(``synthmix.orchestrator.sleep_trainer``) for the table's durations scaled to seconds. It prints
the measured makespan beside the simulator's for the same plan and durations.

    .venv/bin/python benchmarks/schedule_sim.py                       # Table 1, 64 GPUs
    .venv/bin/python benchmarks/schedule_sim.py --gpus 16 64 256
    .venv/bin/python benchmarks/schedule_sim.py --gpus-per-training 0.25 --gpus 16
    .venv/bin/python benchmarks/schedule_sim.py --study bowles2018-table2 --durations estimate --gpus 8
    .venv/bin/python benchmarks/schedule_sim.py --study bowles2018-table2 --table dcgan_wgangp=36,unet=4,uresnet=24
    .venv/bin/python benchmarks/schedule_sim.py --ray --gpus 4 --scale 2   # 2 s per paper hour
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ray.tune.search import Searcher

from synthmix.orchestrator.capacity import CellQueue, ClusterLimit, QueuedCell, training_slots
from synthmix.search_spaces.schema import ResourcesSection

HOUR = 3600.0
# 000, section 2: "GAN training took 36 hours, each UNet took 4 hours, each Res-UNet took 24
# hours and each DeepMedic network took 24 hours"; names as in synthmix's registries.
PAPER_HOURS = {"generator": 36.0, "unet": 4.0, "uresnet": 24.0, "deepmedic2d": 24.0}
_EPS = 1e-6


# --- the default plan: 000's Table 1 -----------------------------------------------------------


def _ct_grids() -> set[tuple]:
    """(real %, synthetic %, network, augmentation) of the four CT grids of Table 1."""
    f3, f10 = (100, 50, 10), (100, 90, 80, 70, 60, 50, 40, 30, 20, 10)
    grids = [
        itertools.product(f3, (0, 50, 100), ("unet", "uresnet"), ("rotation",)),   # 1
        itertools.product(f3, (0, 100), ("unet",), ("none", "rotation")),          # 2: +GAN = syn 100
        itertools.product(f3, (0, 12.5, 25, 37.5, 50, 100), ("unet",), ("rotation",)),  # 3
        itertools.product(f10, (0, 50), ("unet",), ("rotation",)),                 # 4
    ]
    return set(itertools.chain(*grids))


def paper_table1(hours: dict[str, float] = PAPER_HOURS) -> list[QueuedCell]:
    """000's five Table-1 grids as queue cells, durations in seconds (see the module docstring)."""
    combos = [("ct", *c) for c in sorted(_ct_grids())]
    combos += [("mr", f, s, "deepmedic2d", "none") for f in (100, 50, 10) for s in (0, 50, 100)]
    cells = []
    for dataset, fraction, synthetic, network, augmentation in combos:
        for repeat in range(8 if dataset == "ct" else 14):
            key = f"{dataset}-rf{fraction}" if synthetic else None
            cells.append(QueuedCell(
                cell_id=f"{dataset}-rf{fraction}-syn{synthetic:g}-{network}-{augmentation}-r{repeat}",
                generator_key=key, generator_seconds=hours["generator"] * HOUR if key else 0.0,
                segmentation_seconds=hours[network] * HOUR))
    cells = [QueuedCell(c.cell_id, c.generator_key, c.generator_seconds, c.segmentation_seconds, c.cell_id)
             for c in cells]
    keys = {c.generator_key for c in cells if c.generator_key}
    assert (len(cells), len(keys)) == (502, 13), (len(cells), len(keys))  # the paper's counts
    return cells


# --- a study's own plan ------------------------------------------------------------------------


def study_cells(study_ref: str, durations: str, table: dict[str, float] | None, data_root: Path):
    """A study's plan as queue cells; durations from ``table`` (seconds per network and
    generator) or, with ``durations="estimate"``, the plan's own (``expand.cell_costs``)."""
    from synthmix.search_spaces.expand import cell_costs, expand_study, resolve_dataset
    from synthmix.search_spaces.schema import load_study

    study = load_study(study_ref)
    plan = expand_study(study, resolve_dataset(study, data_root))
    return plan, plan_cells(plan, durations, table)


def plan_cells(plan, durations: str, table: dict[str, float] | None) -> list[QueuedCell]:
    from synthmix.search_spaces.expand import cell_costs

    if durations == "estimate":
        costs = cell_costs(plan)
    else:
        costs = {}
        for c in plan.cells:
            job = plan.generator_jobs.get(c.generator_key) if c.generator_key else None
            gen = _lookup(table, job.name, "generator") if job else 0.0
            costs[c.cell_id] = (gen, _lookup(table, c.factors.get("architecture", "unet")))
    return [QueuedCell(c.cell_id, c.generator_key, *costs[c.cell_id], payload=c.cell_id) for c in plan.cells]


def _lookup(table: dict[str, float], name: str, fallback: str | None = None) -> float:
    if name in table:
        return table[name]
    if fallback in table:
        return table[fallback]
    raise SystemExit(f"--table has no duration for {name!r}; it has {', '.join(table)}")


# --- simulation --------------------------------------------------------------------------------


@dataclass
class Schedule:
    makespan: float
    busy: float      # slot-seconds spent training (generators once, every segmentation)
    waiting: float   # slot-seconds a handed-out cell spent waiting for another cell's generator
    slots: int
    max_running: int


def simulate(cells: list[QueuedCell], slots: int) -> Schedule:
    """Replay ``cells`` through the real ``CellQueue`` with ``slots`` trainings at a time."""
    by_id = {c.cell_id: c for c in cells}
    clock = [0.0]
    generator_end: dict[str, float] = {}  # key -> when its training ends (set when it starts)
    queue = CellQueue(cells, ClusterLimit(ResourcesSection(), fixed=slots),
                      is_complete=lambda key: generator_end.get(key, math.inf) <= clock[0] + _EPS)
    running: dict[str, float] = {}  # trial id -> end time
    trial_ids = (f"t{i}" for i in itertools.count())
    busy = waiting = 0.0
    max_running = 0
    while True:
        now = clock[0]
        while True:  # Tune asks until the searcher has nothing to start
            trial_id = next(trial_ids)
            suggestion = queue.suggest(trial_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                break
            cell = by_id[suggestion["cell_config"]]
            seg_start = now
            if cell.generator_key:
                if cell.generator_key not in generator_end:  # nobody trained it: this cell does
                    generator_end[cell.generator_key] = now + cell.generator_seconds
                    busy += cell.generator_seconds
                elif generator_end[cell.generator_key] > now + _EPS:
                    waiting += generator_end[cell.generator_key] - now
                seg_start = max(now, generator_end[cell.generator_key])
            running[trial_id] = seg_start + cell.segmentation_seconds
            busy += cell.segmentation_seconds
        max_running = max(max_running, len(running))
        if not running:
            if suggestion != Searcher.FINISHED:
                raise RuntimeError(f"deadlock at t={now}: cells left but none started")
            return Schedule(makespan=now, busy=busy, waiting=waiting, slots=slots, max_running=max_running)
        pending_generators = [t for t in generator_end.values() if t > now + _EPS]
        clock[0] = min([*running.values(), *pending_generators])
        for trial_id, end in list(running.items()):
            if end <= clock[0] + _EPS:
                del running[trial_id]
                queue.on_trial_complete(trial_id)


def _list_schedule(durations: list[float], slots: int, start: float) -> float:
    """Makespan of jobs started in the given order, each on the first free slot."""
    free = [start] * slots
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def naive(cells: list[QueuedCell], slots: int) -> Schedule:
    """Every generator first, then, once all are finished, every cell; longest first in both."""
    gens = {c.generator_key: c.generator_seconds for c in cells if c.generator_key}
    generators_done = _list_schedule(sorted(gens.values(), reverse=True), slots, 0.0)
    segs = sorted((c.segmentation_seconds for c in cells), reverse=True)
    makespan = _list_schedule(segs, slots, generators_done)
    return Schedule(makespan=makespan, busy=sum(gens.values()) + sum(segs), waiting=0.0, slots=slots,
                    max_running=min(slots, len(cells)))


def lower_bound(cells: list[QueuedCell], slots: int) -> tuple[float, float, float]:
    """(bound, critical path, work per slot): the issue's bound, max(critical path, work / G)."""
    gens = {c.generator_key: c.generator_seconds for c in cells if c.generator_key}
    work = sum(gens.values()) + sum(c.segmentation_seconds for c in cells)
    path = max(c.generator_seconds + c.segmentation_seconds if c.generator_key else c.segmentation_seconds
               for c in cells)
    return max(path, work / slots), path, work / slots


def wave_bound(cells: list[QueuedCell], slots: int) -> float:
    """A tighter bound that also holds for every schedule: if n trainings of at least d seconds
    each cannot start before r (a segmentation before its generator's training has run), then
    with G slots some slot runs ceil(n / G) of them one after another, so the end is at least
    r + d * ceil(n / G). The largest such value over r and d (and the work bound)."""
    jobs = [(0.0, g) for g in {c.generator_key: c.generator_seconds for c in cells if c.generator_key}.values()]
    jobs += [(c.generator_seconds if c.generator_key else 0.0, c.segmentation_seconds) for c in cells]
    best = lower_bound(cells, slots)[0]
    for r in {r for r, _ in jobs}:
        later = [d for rj, d in jobs if rj >= r - _EPS]
        for d in set(later):
            n = sum(dj >= d - _EPS for dj in later)
            best = max(best, r + d * math.ceil(n / slots))
    return best


# --- output ------------------------------------------------------------------------------------


def _t(seconds: float) -> str:
    if seconds >= 2 * HOUR:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def report(name: str, cells: list[QueuedCell], gpus: float, per_training: float) -> float:
    resources = ResourcesSection(workers=1, cpus_per_worker=1, gpus_per_worker=per_training)
    slots = training_slots(resources, {"CPU": 1e9, "GPU": gpus})
    bound, path, per_slot = lower_bound(cells, slots)
    tight = wave_bound(cells, slots)
    queue, plain = simulate(cells, slots), naive(cells, slots)
    util = lambda s: s.busy / (s.slots * s.makespan)  # noqa: E731 (GPU share = slot share)
    keys = len({c.generator_key for c in cells if c.generator_key})
    print(f"{name}: {len(cells)} cells, {keys} generator trainings; {gpus:g} GPUs, {per_training:g} GPU per "
          f"training = {slots} trainings at once")
    print(f"  queue: makespan {_t(queue.makespan)}, GPU utilisation {util(queue):.1%}, at most "
          f"{queue.max_running} running, slot time spent waiting for a generator {_t(queue.waiting)}")
    print(f"  naive (all generators, then all cells; longest first): makespan {_t(plain.makespan)}, "
          f"GPU utilisation {util(plain):.1%}")
    print(f"  lower bound {_t(bound)} = max(critical path {_t(path)}, work {_t(per_slot * slots)} / {slots}); "
          f"with the waves of long cells that wait for generators (wave_bound) {_t(tight)}")
    print(f"makespan / lower bound: {queue.makespan / bound:.3f}")
    print(f"naive makespan / lower bound: {plain.makespan / bound:.3f}")
    print(f"makespan / wave bound: {queue.makespan / tight:.3f}")
    return queue.makespan


# --- the real-Ray check ------------------------------------------------------------------------

RAY_STUDY = """\
name: schedule-check
seed: 0
dataset:
  phantom: {{subjects: 8, size: 32, classes: 3, seed: 0}}
  preprocess: {{axis: 2}}
split: {{test: 0.25, val: 0.25, repeats: {repeats}}}
factors:
  real_fraction: [0.5, 1.0]
  synthetic: [0, 1.0]
  architecture: [unet, uresnet]
  augmentation: [none]
segmenter: {{batch_size: 4, max_steps: 10}}
generator: {{name: dcgan_wgangp, config: {{steps: 4, batch_size: 8}}}}
mixing: {{policy: additive, source: pool}}
resources: {{workers: 1, cpus_per_worker: 1, gpus_per_worker: {gpw}, max_failures: 0}}
"""


def ray_check(gpus: int, per_training: float, scale: float, repeats: int) -> None:
    """Run RAY_STUDY with the sleeping trainer on ``gpus`` logical GPUs; compare with the
    simulator. ``scale``: seconds of sleep per paper hour.

    Each training on a real Ray also pays process start-ups (trial, Train controller, Train
    worker) and the row's writing, which the paper-scale simulation rightly ignores (seconds
    against hours) but which are not small against a few seconds of sleep. So the check first
    measures them in the same run: a one-cell study (one UNet sleep) gives the launch cost, its
    wall time less the sleep. The simulator's makespan is printed for the bare sleeps and
    with that launch cost added to every training."""
    import ray

    from synthmix.orchestrator.sleep_trainer import SLEEP_ENV
    from synthmix.orchestrator.study_run import prepare_study, run_study

    table = {"dcgan_wgangp": PAPER_HOURS["generator"] * scale,
             **{n: h * scale for n, h in PAPER_HOURS.items() if n != "generator"}}
    with tempfile.TemporaryDirectory(prefix="synthmix-schedule-") as tmp:
        root = Path(tmp)
        study_path, calibration = root / "schedule-check.yaml", root / "launch-cost.yaml"
        study_path.write_text(RAY_STUDY.format(gpw=per_training, repeats=repeats))
        calibration.write_text(RAY_STUDY.format(gpw=per_training, repeats=1).replace(
            "name: schedule-check", "name: launch-cost").replace("real_fraction: [0.5, 1.0]", "real_fraction: [1.0]")
            .replace("synthetic: [0, 1.0]", "synthetic: [0]").replace("[unet, uresnet]", "[unet]"))
        trace = root / "trace"
        _, store, plan = prepare_study(study_path, storage=root / "runs")  # phantom + cache: not timed
        prepare_study(calibration, storage=root / "runs")
        cells = plan_cells(plan, "table", table)
        slots = training_slots(ResourcesSection(gpus_per_worker=per_training), {"CPU": 1e9, "GPU": gpus})
        os.environ[SLEEP_ENV] = json.dumps({**table, "trace": str(trace)})  # the workers inherit it
        ray.init(num_cpus=slots, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
        try:
            start = time.time()
            run_study(calibration, storage=root / "runs", quiet=True)
            launch = time.time() - start - table["unet"]
            for record in trace.glob("*.json"):  # the calibration's own training
                record.unlink()
            start = time.time()
            run_study(study_path, storage=root / "runs", quiet=True)
            measured = time.time() - start
        finally:
            ray.shutdown()
            del os.environ[SLEEP_ENV]
        records = [json.loads(p.read_text()) for p in sorted(trace.glob("*.json"))]
        print(f"load {os.getloadavg()[0]:.1f} (1-min average) on {os.cpu_count()} CPUs")
        bare = report(f"real-Ray check ({scale:g} s per paper hour), bare sleeps", cells, gpus, per_training)
        launched = [QueuedCell(c.cell_id, c.generator_key, c.generator_seconds + launch if c.generator_key else 0.0,
                               c.segmentation_seconds + launch, c.payload) for c in cells]
        simulated = report(f"the same with {launch:.1f} s of launch cost per training", launched, gpus,
                           per_training)
        _trace_summary(records, plan, start)
        print(f"launch cost per training (one-cell study less its {table['unet']:g} s sleep, same Ray): {launch:.1f} s")
        print(f"measured makespan {measured:.1f} s (run_study, Ray already up); simulated {bare:.1f} s with "
              f"bare sleeps, {simulated:.1f} s with the launch cost")
        print(f"measured / simulated makespan (bare sleeps): {measured / bare:.3f}")
        print(f"measured / simulated makespan: {measured / simulated:.3f}")


def _trace_summary(records: list[dict], plan, start: float) -> None:
    """Concurrency and dependency order as the sleeping trainings saw them."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    gen_end = {r["name"].removeprefix("generator-"): r["end"] for r in records if r["name"].startswith("generator-")}
    key_of = {f"cell-{c.cell_id}": c.generator_key for c in plan.cells}
    early = [r["name"] for r in records if key_of.get(r["name"]) and r["start"] < gen_end[key_of[r["name"]]]]
    first = min(r["start"] for r in records) - start
    sleeps = sum(r["end"] - r["start"] for r in records)
    print(f"  trainings {len(records)}, at most {peak} at once; segmentations started before their generator "
          f"ended: {len(early)}; first training began {first:.1f} s after run_study started; "
          f"sum of sleeps {sleeps:.0f} s")


# --- main --------------------------------------------------------------------------------------


def _table(text: str) -> dict[str, float]:
    """``name=hours,...`` -> seconds."""
    pairs = (item.split("=") for item in text.split(",") if item)
    return {k.strip(): float(v) * HOUR for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=float, nargs="+", default=None, help="GPUs (64; --ray: 4)")
    parser.add_argument("--gpus-per-training", type=float, default=1.0)
    parser.add_argument("--study", help="a preset name or study YAML instead of 000's Table 1")
    parser.add_argument("--durations", choices=("table", "estimate"), default="table")
    parser.add_argument("--table", help="hours per network and generator, e.g. dcgan_wgangp=36,unet=4 "
                        "(default: the paper's)")
    parser.add_argument("--ray", action="store_true", help="the real-Ray check with the sleeping trainer")
    parser.add_argument("--scale", type=float, default=2.0, help="--ray: seconds of sleep per paper hour")
    parser.add_argument("--repeats", type=int, default=1, help="--ray: repeats of the check's study")
    args = parser.parse_args()
    if args.ray:
        gpus = args.gpus or [4]
        return ray_check(int(gpus[0]), args.gpus_per_training, args.scale, args.repeats)
    table = _table(args.table) if args.table else {n: h * HOUR for n, h in PAPER_HOURS.items()}
    if args.study:
        with tempfile.TemporaryDirectory(prefix="synthmix-sim-") as tmp:
            plan, cells = study_cells(args.study, args.durations, table, Path(tmp))
        name = f"{plan.study.name} ({args.durations})"
    else:
        cells, name = paper_table1({n: s / HOUR for n, s in table.items()}), "000 Table 1, five grids"
    for gpus in args.gpus or [64]:
        report(name, cells, gpus, args.gpus_per_training)


if __name__ == "__main__":
    sys.exit(main())
