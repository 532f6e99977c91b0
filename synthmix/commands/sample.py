"""``synthmix sample``: draw image+label pairs from a trained generator artifact."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained generator (PNG grid or .npz pool)")
    p.add_argument("generator_dir", type=Path, help="a generator artifact folder (holds generator.json and weights.pt)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, required=True,
                   help="grid.png for a picture, or pool.npz for a SyntheticPool of arrays")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ncols", type=int, default=8, help="samples per row of the grid (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--masks", type=Path, default=None,
                   help="conditional families (pix2pix, ...): an .npz with a 'labels' array (N, H, W) to condition "
                        "on (default: the generator's training subset's masks, recorded in its masks.npz)")
    p.set_defaults(handler=_sample)


def _sample(args: argparse.Namespace) -> int:
    from synthmix.errors import SynthmixError
    from synthmix.trainers.generators.artifact import write_samples

    if args.n < 1:
        raise SynthmixError(f"--n must be at least 1, got {args.n}")
    path = write_samples(args.generator_dir, args.out, n=args.n, seed=args.seed, ncols=args.ncols,
                         device=args.device, masks=args.masks)
    print(f"wrote {args.n} samples to {path}")
    return 0
